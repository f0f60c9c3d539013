"""Conversation threads on real servers: the atomic add_turn step (turn limit, concurrency, TTL
refresh), Zen MCP Server's models, parent chains, the paginated index, and input validation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from zen_async import CapacityError, NotFoundError, ValidationError, Zen, open_zen
from zen_async.conversations import (
    MAX_CONTENT_CHARS,
    ConversationStore,
    ConversationTurn,
    ThreadContext,
)
from zen_async.store.keyspace import Keyspace
from zen_async.testing.deployments import Target

HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def keys_of(store: ConversationStore, thread_id: str) -> tuple[str, str]:
    """The thread's metadata hash and turns list (the layout the module documents)."""
    return store._meta_key(thread_id), store._turns_key(thread_id)


def epoch_ms(stamp: str) -> int:
    return (datetime.fromisoformat(stamp) - EPOCH) // timedelta(milliseconds=1)


async def server_now(ks: Keyspace) -> datetime:
    seconds, micros = await ks.execute("TIME")
    return datetime.fromtimestamp(int(seconds) + int(micros) / 1e6, tz=UTC)


async def test_a_thread_holds_max_turns_and_refuses_the_next(zen: Zen) -> None:
    store = ConversationStore(zen.redis)
    ks = zen.redis.keyspace("conversations")
    thread_id = await store.create_thread("chat", {"prompt": "hello", "n": [1, 2]})
    for i in range(50):
        role = "user" if i % 2 == 0 else "assistant"
        count = await store.add_turn(
            thread_id,
            role,
            f"turn {i}",
            files=[f"/src/f{i}.py"] if i == 1 else None,
            model_name="o3" if role == "assistant" else None,
            model_metadata={"tokens": i} if i == 1 else None,
        )
        assert count == i + 1
    before = await store.get_thread(thread_id)
    assert before is not None
    with pytest.raises(CapacityError, match=r"already has 50 turns, the limit \(max_turns\) is 50"):
        await store.add_turn(thread_id, "user", "one too many")

    after = await store.get_thread(thread_id)
    assert after == before, "a refused turn must write nothing, not even last_updated_at"
    _, turns = keys_of(store, thread_id)
    assert await ks.execute("LLEN", turns) == 50
    assert after.tool_name == "chat"
    assert after.initial_context == {"prompt": "hello", "n": [1, 2]}
    assert after.parent_thread_id is None
    assert [t.content for t in after.turns] == [f"turn {i}" for i in range(50)]
    assert after.turns[1] == ConversationTurn(
        role="assistant",
        content="turn 1",
        timestamp=after.turns[1].timestamp,
        files=["/src/f1.py"],
        model_name="o3",
        model_metadata={"tokens": 1},
    )
    assert after.last_updated_at == after.turns[-1].timestamp


async def test_concurrent_add_turn_loses_no_turn(zen: Zen) -> None:
    store = ConversationStore(zen.redis)
    thread_id = await store.create_thread("chat", {})
    contents = [f"message {i}" for i in range(20)]
    counts = await asyncio.gather(*(store.add_turn(thread_id, "user", c) for c in contents))

    assert sorted(counts) == list(range(1, 21)), "each turn gets its own place"
    thread = await store.get_thread(thread_id)
    assert thread is not None
    assert len(thread.turns) == 20
    # Stored in arrival order: the count each call got is its position.
    for content, count in zip(contents, counts, strict=True):
        assert thread.turns[count - 1].content == content
    stamps = [t.timestamp for t in thread.turns]
    assert stamps == sorted(stamps)


async def test_add_turn_refreshes_the_ttl_of_every_key_of_the_thread(zen: Zen) -> None:
    store = ConversationStore(zen.redis, ttl_seconds=3600)
    ks = zen.redis.keyspace("conversations")
    thread_id = await store.create_thread("chat", {})
    meta, turns = keys_of(store, thread_id)
    assert 0 < await ks.execute("PTTL", meta) <= HOUR_MS
    await store.add_turn(thread_id, "user", "first")
    for key in (meta, turns):
        await ks.execute("PEXPIRE", key, 5000)

    await store.add_turn(thread_id, "assistant", "second")
    for key in (meta, turns):
        assert 5000 < await ks.execute("PTTL", key) <= HOUR_MS, f"{key} TTL not refreshed"


async def test_thread_and_turn_times_come_from_the_server_clock(zen: Zen) -> None:
    store = ConversationStore(zen.redis)
    ks = zen.redis.keyspace("conversations")
    start = await server_now(ks)
    thread_id = await store.create_thread("chat", {})
    await store.add_turn(thread_id, "user", "hi")
    end = await server_now(ks)
    thread = await store.get_thread(thread_id)
    assert thread is not None
    for stamp in (thread.created_at, thread.last_updated_at, thread.turns[0].timestamp):
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() is not None
        assert not parsed.utcoffset()  # UTC
        assert start <= parsed <= end
    assert thread.created_at <= thread.turns[0].timestamp == thread.last_updated_at


async def test_missing_threads(zen: Zen) -> None:
    store = ConversationStore(zen.redis)
    absent = "123e4567-e89b-42d3-a456-426614174000"
    assert await store.get_thread(absent) is None
    with pytest.raises(NotFoundError, match=f"thread {absent} does not exist or has expired"):
        await store.add_turn(absent, "user", "hello?")
    with pytest.raises(NotFoundError, match=f"parent conversation thread {absent}"):
        await store.create_thread("chat", {}, parent_thread_id=absent)
    assert await store.list_threads() == ([], None)
    ks = zen.redis.keyspace("conversations")
    _, turns = keys_of(store, absent)
    assert await ks.execute("EXISTS", turns) == 0, "a refused turn must not create the list"


async def test_thread_chain_follows_parents_oldest_first(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        store = ConversationStore(zen.redis)
        first = await store.create_thread("analyze", {"step": 1})
        second = await store.create_thread("codereview", {"step": 2}, parent_thread_id=first)
        third = await store.create_thread("debug", {"step": 3}, parent_thread_id=second)

        chain = await store.get_thread_chain(third)
        assert [t.thread_id for t in chain] == [first, second, third]
        assert [t.parent_thread_id for t in chain] == [None, first, second]
        assert [t.thread_id for t in await store.get_thread_chain(third, max_depth=2)] == [
            second,
            third,
        ]
        assert await store.get_thread_chain("123e4567-e89b-42d3-a456-426614174000") == []

        # A parent that expired ends the chain.
        await store.delete_thread(first)
        assert [t.thread_id for t in await store.get_thread_chain(third)] == [second, third]

        # A cycle (written behind the store's back) is walked once.
        ks = zen.redis.keyspace("conversations")
        await ks.execute("HSET", store._meta_key(second), "parent_thread_id", third)
        assert [t.thread_id for t in await store.get_thread_chain(third)] == [second, third]


async def test_list_threads_pages_by_last_update_and_prunes_expired(zen: Zen) -> None:
    store = ConversationStore(zen.redis)
    ks = zen.redis.keyspace("conversations")
    ids = [await store.create_thread(f"tool{i}", {}) for i in range(7)]
    for thread_id in reversed(ids):  # ids[0] is updated last: newest first
        await store.add_turn(thread_id, "user", "bump")
    await store.add_turn(ids[0], "assistant", "again")

    expired = ids[3]
    await ks.delete(*keys_of(store, expired))  # as if its TTL ran out

    seen = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await store.list_threads(limit=2, cursor=cursor)
        pages += 1
        seen.extend(page)
        if cursor is None:
            break
    assert sorted(s.thread_id for s in seen) == sorted(i for i in ids if i != expired)
    assert pages == 3
    # Newest update first; updates in the same millisecond by id, descending.
    order = [(epoch_ms(s.last_updated_at), s.thread_id) for s in seen]
    assert order == sorted(order, reverse=True)
    by_id = {s.thread_id: s for s in seen}
    assert by_id[ids[0]].turn_count == 2
    assert by_id[ids[0]].tool_name == "tool0"
    assert by_id[ids[1]].turn_count == 1
    assert await ks.execute("ZSCORE", ks.key("threads"), expired) is None, "expired id pruned"


async def test_list_threads_pages_through_same_millisecond_updates(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        store = ConversationStore(zen.redis)
        ks = zen.redis.keyspace("conversations")
        ids = [await store.create_thread("chat", {}) for _ in range(9)]
        for thread_id in ids:  # every update in the same millisecond
            await ks.execute("ZADD", ks.key("threads"), "XX", 1_700_000_000_000, thread_id)

        seen: list[str] = []
        page, cursor = await store.list_threads(limit=4)
        seen += [s.thread_id for s in page]
        while cursor is not None:
            page, cursor = await store.list_threads(limit=4, cursor=cursor)
            seen += [s.thread_id for s in page]
        assert seen == sorted(ids, reverse=True)

        with pytest.raises(ValidationError, match="pass the next_cursor returned by list_threads"):
            await store.list_threads(cursor="12:not-a-thread")
        with pytest.raises(
            ValidationError, match=r"limit=0 is invalid: expected an integer 1..1000"
        ):
            await store.list_threads(limit=0)


async def test_creating_threads_prunes_the_oldest_dead_index_entries(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        store = ConversationStore(zen.redis, ttl_seconds=60)
        ks = zen.redis.keyspace("conversations")
        dead = "00000000-0000-4000-8000-000000000000"
        await ks.execute("ZADD", ks.key("threads"), 1, dead)  # expired long ago, never listed
        live = await store.create_thread("chat", {})
        assert await ks.execute("ZRANGE", ks.key("threads"), 0, -1) == [live.encode()]


async def test_delete_thread(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        store = ConversationStore(zen.redis)
        thread_id = await store.create_thread("chat", {})
        await store.add_turn(thread_id, "user", "x")
        assert await store.delete_thread(thread_id) is True
        assert await store.get_thread(thread_id) is None
        assert await store.delete_thread(thread_id) is False
        assert await store.list_threads() == ([], None)


async def test_threads_are_per_tenant(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        mine = ConversationStore(zen.redis)
        theirs = ConversationStore(zen.redis, tenant="acme")
        thread_id = await mine.create_thread("chat", {})
        assert await theirs.get_thread(thread_id) is None
        assert await theirs.list_threads() == ([], None)
        with pytest.raises(NotFoundError):
            await theirs.add_turn(thread_id, "user", "not yours")


async def test_bad_input_is_refused_and_writes_nothing(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        store = ConversationStore(zen.redis, max_turns=3)
        ks = zen.redis.keyspace("conversations")
        thread_id = await store.create_thread("chat", {"a": 1})
        before = await ks.execute("DBSIZE")
        snapshot = await store.get_thread(thread_id)

        bad_turns: list[tuple[dict[str, object], str]] = [
            ({"role": "system"}, r"role='system' is invalid: expected 'user' or 'assistant'"),
            ({"content": b"bytes"}, "content must be a str, got bytes"),
            ({"content": "x" * (MAX_CONTENT_CHARS + 1)}, f"at most {MAX_CONTENT_CHARS}"),
            ({"files": "/one/path"}, "files must be a list"),
            ({"images": [""]}, "every entry must be a non-empty str"),
            ({"model_name": ""}, "model_name='' is invalid"),
            ({"model_metadata": ["x"]}, "model_metadata must be a dict"),
            ({"model_metadata": {"x": object()}}, "cannot encode"),
        ]
        for override, message in bad_turns:
            args: dict[str, object] = {"role": "user", "content": "ok", **override}
            with pytest.raises(ValidationError, match=message):
                await store.add_turn(thread_id, **args)  # type: ignore[arg-type]

        for bad_id in ("not-a-uuid", "123e4567e89b42d3a456426614174000", "", None):
            with pytest.raises(ValidationError, match="is not a thread id: expected a UUID"):
                await store.get_thread(bad_id)  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="is not a thread id"):
                await store.add_turn(bad_id, "user", "x")  # type: ignore[arg-type]

        with pytest.raises(ValidationError, match="tool_name='' is invalid"):
            await store.create_thread("", {})
        with pytest.raises(ValidationError, match="initial_context must be a dict"):
            await store.create_thread("chat", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="parent_thread_id='x' is not a thread id"):
            await store.create_thread("chat", {}, parent_thread_id="x")
        with pytest.raises(ValidationError, match="max_depth=0 is invalid"):
            await store.get_thread_chain(thread_id, max_depth=0)
        with pytest.raises(ValidationError, match="max_turns=0 is invalid"):
            ConversationStore(zen.redis, max_turns=0)

        assert await ks.execute("DBSIZE") == before
        assert await store.get_thread(thread_id) == snapshot


async def test_upper_case_thread_ids_name_the_same_thread(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        store = ConversationStore(zen.redis)
        thread_id = await store.create_thread("chat", {})
        assert await store.add_turn(thread_id.upper(), "user", "x") == 1
        thread = await store.get_thread(thread_id.upper())
        assert isinstance(thread, ThreadContext)
        assert thread.thread_id == thread_id
