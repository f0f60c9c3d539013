"""Bad input, as Hypothesis generates it, through the public API (``open_zen`` and the
``Zen`` facade) on Redis 7.0 standalone and Cluster.

Two properties hold for every call:

- a failure is a :class:`~zen_async.errors.ZenError` (a ``ValidationError`` for bad input)
  whose message names the field and what is accepted; never a raw Python, pydantic or
  redis-py exception;
- nothing is partly written: after a rejected call every key of every database on every
  master is unchanged (its type, content and absolute expiry, read with SCAN on the test's
  own servers).

Inputs: agent ids, state names and unicode (lone surrogates included); payloads up to and
past the limits; vectors with NaN, infinity, float32 overflow or the wrong dimension;
negative, zero, NaN and huge TTLs; key-injection attempts (``*``, ``:``, ``{``, ``}``,
newlines, spaces, very long). Each input the properties found wrongly accepted, escaping as a
raw exception or leaving a trace is pinned below as a regression test of its own.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import math
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zen_async import (
    CapacityError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    Zen,
    ZenError,
    open_zen,
)
from zen_async.agents.models import TRANSITIONS, LifecycleState
from zen_async.agents.ports import PortLease
from zen_async.agents.tasks import MAX_PAYLOAD_BYTES
from zen_async.cache import MAX_KEY_BYTES
from zen_async.conversations import MAX_CONTENT_CHARS
from zen_async.memory.models import VECTOR_DIM
from zen_async.testing.deployments import Deployments, Kind, Target, masters

PROPERTY: Final = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one seeded Zen serves every example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
FEW: Final = settings(PROPERTY, max_examples=12)  # examples that write a megabyte each

ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
AGENT_TYPE: Final = re.compile(r"[a-z0-9_.-]{1,64}")
ID_WORDS: Final = ("agent", "A-Z a-z 0-9")
PORTS: Final = (40000, 40064)  # a range of free, bindable ports for allocations that succeed
THIRTY_DAYS: Final = 30 * 86400.0

# --- strategies ---------------------------------------------------------------------------
INJECTIONS: Final = [
    "",
    " ",
    "*",
    ":",
    "{",
    "}",
    "{}",
    "{a}",
    "a}{b",
    "a:*",
    "*:*",
    "zen:t:other:*",
    "\n",
    "a\nb",
    "a\r\nFLUSHALL\r\n",
    "a b",
    "\t",
    "\x00",
    "é",
    "Ω",
    "🙂",
    "\ud800",  # a lone surrogate: not encodable as UTF-8
    "a\udfffb",
    "a" * 129,
    "a" * 10_000,
]


def any_unicode(max_size: int = 40) -> st.SearchStrategy[str]:
    """Any code points, lone surrogates included (Hypothesis leaves them out by default)."""
    return st.text(st.characters(exclude_categories=()), max_size=max_size)


def hostile_text() -> st.SearchStrategy[str]:
    """Names and ids from injection attempts, unicode, near-valid and overlong strings."""
    return st.one_of(
        st.sampled_from(INJECTIONS),
        any_unicode(),
        st.text("ab09_.:-*{}\n \t", min_size=1, max_size=140),
        st.integers(125, 300).map(lambda n: "x" * n),
    )


def bad_ttls() -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e306, 1e20]),
        st.floats(max_value=0.0),
        st.floats(min_value=1e12),  # past any expiry Redis keeps (and past 1e306: overflow)
    )


def unserialisable() -> st.SearchStrategy[Any]:
    """Values orjson refuses (dict-shaped so they pass a type check first)."""
    deep: Any = {"leaf": 1}
    for _ in range(300):
        deep = {"d": deep}
    return st.sampled_from(
        [
            {"s": {1, 2}},
            {"o": object()},
            {"f": frozenset()},
            {"big": 2**70},
            {"x": "\ud800"},
            {"nested": [{"ok": 1}, {"bad": {3}}]},
            deep,
        ]
    )


def bad_vectors() -> st.SearchStrategy[Any]:
    return st.one_of(
        # the right length with one NaN, infinity or value float32 cannot hold, anywhere
        st.tuples(
            st.one_of(
                st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e300]),
                st.floats(min_value=3.5e38),
                st.floats(max_value=-3.5e38),
            ),
            st.integers(0, VECTOR_DIM - 1),
        ).map(lambda t: [0.5] * t[1] + [t[0]] + [0.5] * (VECTOR_DIM - 1 - t[1])),
        # the wrong dimension
        st.integers(0, 2 * VECTOR_DIM).filter(lambda n: n != VECTOR_DIM).map(lambda n: [0.5] * n),
        st.sampled_from(
            [
                [0.0] * VECTOR_DIM,  # no direction
                [[0.5] * VECTOR_DIM],  # 2-D
                ["a"] * VECTOR_DIM,
                "not a vector",
            ]
        ),
    )


# --- the world: a seeded Zen, and a digest of everything stored ------------------------------
Address = tuple[str, int, str | None]


class World:
    """The seeded Zen, the masters' addresses, and ids of what was seeded."""

    def __init__(self, zen: Zen, masters: list[Address], memory_id: str, thread_id: str) -> None:
        self.zen = zen
        self.masters = masters
        self.memory_id = memory_id
        self.thread_id = thread_id
        self._clients: dict[tuple[int, int], aredis.Redis] = {}

    def __repr__(self) -> str:  # Hypothesis prints it with each failing example
        return f"World({len(self.masters)} master(s))"

    def client(self, address: Address, db: int) -> aredis.Redis:
        """A client on database ``db`` of the master at ``address``, opened once."""
        host, port, password = address
        found = self._clients.get((port, db))
        if found is None:
            found = aredis.Redis(host=host, port=port, password=password, db=db)
            self._clients[(port, db)] = found
        return found

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


Digest = dict[tuple[int, int, bytes], tuple[bytes, int, Any]]


async def digest(world: World) -> Digest:
    """Every key of every database on every master: its type, absolute expiry
    (PEXPIRETIME) and content, read canonically (DUMP is no good: a read can step a
    hashtable's incremental rehash and reorder its serialisation)."""
    found: Digest = {}
    for address in world.masters:
        port = address[1]
        for name in await world.client(address, 0).info("keyspace"):
            index = int(str(name).removeprefix("db"))
            conn = world.client(address, index)
            keys = sorted([k async for k in conn.scan_iter(count=1000)])
            pipe = conn.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
                pipe.execute_command("PEXPIRETIME", key)
            meta = await pipe.execute() if keys else []
            kinds = meta[0::2]
            pipe = conn.pipeline(transaction=False)
            for key, kind in zip(keys, kinds, strict=True):
                _read(pipe, key, kind)
            contents = await pipe.execute() if keys else []
            at = 0
            for i, key in enumerate(keys):
                width = 2 if kinds[i] == b"stream" else 1
                content = contents[at : at + width]
                at += width
                found[(port, index, key)] = (kinds[i], meta[2 * i + 1], _canonical(content))
    return found


def _read(pipe: Any, key: bytes, kind: bytes) -> None:
    if kind == b"string":
        pipe.get(key)
    elif kind == b"hash":
        pipe.hgetall(key)
    elif kind == b"list":
        pipe.lrange(key, 0, -1)
    elif kind == b"set":
        pipe.smembers(key)
    elif kind == b"zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == b"stream":
        pipe.xrange(key)
        pipe.xinfo_groups(key)
    else:
        pipe.dump(key)


def _canonical(value: Any) -> Any:
    """A comparable form: dicts and sets as sorted tuples, lists as tuples."""
    if isinstance(value, dict):
        return tuple(sorted((_canonical(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, set | frozenset):
        return tuple(sorted(value))
    if isinstance(value, list | tuple):
        return tuple(_canonical(v) for v in value)
    return value


def changed(before: Digest, after: Digest) -> list[tuple[int, int, bytes]]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


@contextlib.asynccontextmanager
async def unchanged(world: World) -> AsyncIterator[None]:
    """Fail unless every key is the same (value and expiry) after the block as before."""
    before = await digest(world)
    yield
    after = await digest(world)
    assert not changed(before, after), f"rejected calls wrote {changed(before, after)[:5]}"


Test = Callable[..., Coroutine[Any, Any, None]]


def keyspace_unchanged(test: Test) -> Test:
    """Run a test's body (one Hypothesis example) inside :func:`unchanged`."""

    @functools.wraps(test)
    async def checked(world: World, **arguments: Any) -> None:
        async with unchanged(world):
            await test(world, **arguments)

    return checked


async def rejected(
    call: Callable[[], Awaitable[object]],
    *words: str,
    error: type[ZenError] = ValidationError,
) -> ZenError:
    """Run a call that must fail with ``error`` and a message holding each of ``words``
    (run it inside :func:`unchanged`)."""
    try:
        outcome = await call()
    except ZenError as exc:
        failure = exc
    except Exception as exc:  # the property: nothing else may escape
        pytest.fail(f"a raw {type(exc).__module__}.{type(exc).__name__} escaped: {exc!r}")
    else:
        pytest.fail(f"bad input was accepted: returned {outcome!r}"[:500])
    assert isinstance(failure, error), f"expected {error.__name__}, got {failure!r}"
    message = str(failure)
    for word in words:
        assert word in message, f"the message should say {word!r}: {message!r}"
    return failure


@pytest.fixture(params=["standalone", "cluster"])
async def world(request: pytest.FixtureRequest, deployments: Deployments) -> AsyncIterator[World]:
    """A Zen on Redis 7.0 (standalone or Cluster) with one of everything stored: an agent
    ``a1`` in ``ready``, a task, a memory, a conversation thread, a cache entry, an event."""
    kind: Kind = request.param
    target = Target("redis", kind, deployments.get("redis", kind))
    target.flush()
    addresses = [(s.host, s.port, s.password) for s in masters(target.group)]
    quiet = target.settings(
        redis_enable_metrics=False,  # no metric series written while we compare digests
        redis_health_check_interval=3600.0,
        redis_memory_consolidation_interval=0,
    )
    async with open_zen(quiet) as zen:
        await zen.agents.create_agent("coder", agent_id="a1", metadata={"team": "blue"})
        await zen.agents.transition("a1", "ready")
        await zen.tasks.create_task("coder", {"prompt": "hi"}, task_id="t-1")
        memory = await zen.memory.store_memory("a1", "the sky is blue", tags=["sky"])
        thread_id = await zen.conversations.create_thread("chat", {"topic": "sky"})
        await zen.conversations.add_turn(thread_id, "user", "why is the sky blue?")
        await zen.cache.set("seed", {"v": 1}, ttl=600)
        await zen.events.publish("orders", "order_placed", {"n": 1})
        found = World(zen, addresses, memory.memory_id, thread_id)
        try:
            yield found
        finally:
            await found.aclose()


# --- agents ---------------------------------------------------------------------------------
@PROPERTY
@given(agent_id=hostile_text())
@keyspace_unchanged
async def test_agent_ids_are_checked_by_every_service(world: World, agent_id: str) -> None:
    zen = world.zen
    if ID.fullmatch(agent_id):  # a valid id: looking it up is fine, it just is not there
        assert await zen.agents.get_agent(agent_id) is None or agent_id == "a1"
        return
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: zen.agents.get_agent(agent_id),
        lambda: zen.agents.transition(agent_id, "running"),
        lambda: zen.agents.update_agent(agent_id, metadata={"k": 1}),
        lambda: zen.agents.delete_agent(agent_id),
        lambda: zen.ports.allocate(agent_id, port_range=PORTS),
        lambda: zen.tasks.claim_next("coder", agent_id),
        lambda: zen.events.publish_agent_event(agent_id, "ping", {}),
        lambda: zen.memory.store_memory(agent_id, "hello"),
    ]
    if agent_id:  # "" creates an agent with a new id: see test_create_agent_with_an_empty_id
        calls.append(lambda: zen.agents.create_agent("coder", agent_id=agent_id))
    for call in calls:
        await rejected(call, *ID_WORDS)


STATES: Final = [s.value for s in LifecycleState]
ALLOWED_FROM_READY: Final = {s.value for s in TRANSITIONS[LifecycleState.READY]}


@PROPERTY
@given(
    state=st.one_of(
        st.sampled_from(["READY", "Ready", " ready", "ready ", "ready\n", "run*", "ready:x", ""]),
        st.sampled_from(STATES),
        any_unicode(),
    ).filter(lambda s: s not in ALLOWED_FROM_READY)
)
@keyspace_unchanged
async def test_state_names_outside_the_table_are_refused(world: World, state: str) -> None:
    if state in STATES:  # a real state the table does not allow from ready
        await rejected(
            lambda: world.zen.agents.transition("a1", state),
            f"from ready to {state}",
            "running",  # what is allowed instead
            error=InvalidTransitionError,
        )
    else:
        await rejected(
            lambda: world.zen.agents.transition("a1", state),
            f"state {state!r}",
            "initializing",
        )


@PROPERTY
@given(metadata=unserialisable(), agent_type=st.one_of(st.just("coder"), hostile_text()))
@keyspace_unchanged
async def test_agent_metadata_and_types(world: World, metadata: Any, agent_type: str) -> None:
    zen = world.zen
    if not AGENT_TYPE.fullmatch(agent_type):
        await rejected(
            lambda: zen.agents.create_agent(agent_type, agent_id="a2"),
            "agent type",
            "a-z 0-9",
        )
    await rejected(lambda: zen.agents.update_agent("a1", metadata=metadata), "metadata", "JSON")
    await rejected(
        lambda: zen.agents.create_agent("coder", agent_id="a2", metadata=metadata),
        "metadata",
        "JSON",
    )


# --- tasks ----------------------------------------------------------------------------------
def bad_task_fields() -> st.SearchStrategy[tuple[dict[str, Any], tuple[str, ...]]]:
    """One bad field of a task (the others valid), with words its error must hold."""
    return st.one_of(
        hostile_text()
        .filter(lambda t: not AGENT_TYPE.fullmatch(t))
        .map(lambda t: ({"agent_type": t}, ("agent type", "a-z 0-9"))),
        hostile_text()
        .filter(lambda t: not ID.fullmatch(t))
        .map(lambda t: ({"task_id": t}, ("task id", "A-Z a-z 0-9"))),
        st.one_of(st.floats().filter(lambda f: not (0 < f <= THIRTY_DAYS)), bad_ttls()).map(
            lambda f: ({"timeout_seconds": f}, ("timeout_seconds",))
        ),
        st.one_of(st.integers().filter(lambda p: abs(p) > 10**9), st.booleans(), st.floats()).map(
            lambda p: ({"priority": p}, ("priority",))
        ),
        st.one_of(st.sampled_from([[1], "text", 5, None]), unserialisable()).map(
            lambda r: ({"request": r}, ("request",))
        ),
    )


@PROPERTY
@given(bad=bad_task_fields())
@keyspace_unchanged
async def test_task_fields(world: World, bad: tuple[dict[str, Any], tuple[str, ...]]) -> None:
    fields, words = bad
    spec: dict[str, Any] = {"agent_type": "coder", "request": {"prompt": "x"}} | fields
    await rejected(lambda: world.zen.tasks.create_task(**spec), *words)


@FEW
@given(excess=st.integers(-8, 8))
async def test_task_request_size_limit_is_exact(world: World, excess: int) -> None:
    """Requests up to MAX_PAYLOAD_BYTES of JSON are stored; one byte more is refused."""
    request = {"blob": "x" * (MAX_PAYLOAD_BYTES - len('{"blob":""}') + excess)}
    assert len(orjson.dumps(request)) == MAX_PAYLOAD_BYTES + excess
    if excess > 0:
        async with unchanged(world):
            await rejected(
                lambda: world.zen.tasks.create_task("coder", request),
                "request",
                str(MAX_PAYLOAD_BYTES),
            )
        return
    task = await world.zen.tasks.create_task("coder", request)
    stored = await world.zen.tasks.get_task(task.task_id)
    assert stored is not None
    assert stored.request == request
    assert await world.zen.tasks.delete_task(task.task_id)


@PROPERTY
@given(text=hostile_text(), which=st.sampled_from(["role", "content", "error"]))
@keyspace_unchanged
async def test_task_texts(world: World, text: str, which: str) -> None:
    tasks = world.zen.tasks
    if which == "role":
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
            await rejected(lambda: tasks.append_message("t-1", text, "hi"), "role", "A-Z a-z")
    elif which == "content":
        if not _encodable(text):
            await rejected(lambda: tasks.append_message("t-1", "user", text), "content", "UTF-8")
    elif not text or not _encodable(text):
        await rejected(lambda: tasks.fail("t-1", text), "error")
    else:  # a valid text: the pending task cannot fail, and says so
        await rejected(
            lambda: tasks.fail("t-1", text), "pending to failed", error=InvalidTransitionError
        )


# --- ports ----------------------------------------------------------------------------------
def port_ranges() -> st.SearchStrategy[Any]:
    edge = st.sampled_from([-1, 0, 1, 65535, 65536, 65537, 2**63])
    number = st.one_of(edge, st.integers(), st.floats(), st.booleans(), st.just("4000"))
    return st.one_of(
        st.tuples(number, number),
        st.lists(st.integers(1, 65536), max_size=4).filter(lambda v: len(v) != 2),
    )


def _valid_range(r: Any) -> bool:
    return (
        isinstance(r, tuple | list)
        and len(r) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        and 1 <= r[0] < r[1] <= 65536
    )


@PROPERTY
@given(
    port_range=port_ranges().filter(lambda r: not _valid_range(r)),
    port=st.one_of(st.integers().filter(lambda p: not 1 <= p <= 65535), st.booleans(), st.floats()),
    host=hostile_text().filter(lambda h: not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", h)),
)
@keyspace_unchanged
async def test_port_ranges_hosts_and_leases(
    world: World, port_range: Any, port: Any, host: str
) -> None:
    ports = world.zen.ports
    now = datetime.now(UTC)
    await rejected(lambda: ports.allocate("a1", port_range=port_range), "port_range")
    await rejected(lambda: ports.allocate("a1", host=host, port_range=PORTS), "host")
    await rejected(lambda: ports.release(PortLease(40001, host, "a1", 1, now)), "host")
    await rejected(lambda: ports.release(PortLease(port, "node", "a1", 1, now)), "port", "65535")
    await rejected(lambda: ports.release_port("a1", port), "port", "65535")


# --- memory ---------------------------------------------------------------------------------
@PROPERTY
@given(vector=bad_vectors())
@keyspace_unchanged
async def test_memory_vectors(world: World, vector: Any) -> None:
    memory = world.zen.memory
    await rejected(lambda: memory.store_memory("a1", "hello", vector=vector), "vector")
    await rejected(lambda: memory.search_memories("a1", vector=vector), "vector")
    await rejected(
        lambda: memory.update_memory(world.memory_id, vector=vector),
        "vector",
    )


@PROPERTY
@given(
    limit=st.one_of(st.integers().filter(lambda n: not 1 <= n <= 1000), st.booleans()),
    threshold=st.floats().filter(lambda f: not -1.0 <= f <= 1.0),
)
@keyspace_unchanged
async def test_memory_search_bounds(world: World, limit: int, threshold: float) -> None:
    memory = world.zen.memory
    await rejected(lambda: memory.search_memories("a1", "sky", limit=limit), "limit")
    await rejected(
        lambda: memory.search_memories("a1", "sky", similarity_threshold=threshold),
        "similarity_threshold",
    )


@PROPERTY
@given(
    content=st.one_of(st.sampled_from(["", "   ", "\n", {}, [], 5, None]), unserialisable()),
    tag=hostile_text(),
)
@keyspace_unchanged
async def test_memory_content_and_tags(world: World, content: Any, tag: str) -> None:
    memory = world.zen.memory
    await rejected(lambda: memory.store_memory("a1", content), "content")
    if not re.fullmatch(r"[^\x00-\x1f]{1,64}", tag) or not _encodable(tag):
        await rejected(lambda: memory.store_memory("a1", "tagged", tags=[tag]), "tag")


@keyspace_unchanged
async def test_memory_content_size_limit(world: World) -> None:
    limit = world.zen.memory.options.max_content_bytes
    await rejected(
        lambda: world.zen.memory.store_memory("a1", "x" * limit, vector=[0.5] * VECTOR_DIM),
        "bytes",
        str(limit),
    )


# --- events ---------------------------------------------------------------------------------
@PROPERTY
@given(
    stream=hostile_text(),
    event_type=hostile_text(),
    key=hostile_text(),
    data=unserialisable(),
)
@keyspace_unchanged
async def test_event_names_keys_and_data(
    world: World, stream: str, event_type: str, key: str, data: Any
) -> None:
    events = world.zen.events
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", stream):
        await rejected(lambda: events.publish(stream, "x", {}), "stream", "A-Z a-z 0-9")
    elif stream.startswith(("agents.", "zen.")):
        await rejected(lambda: events.publish(stream, "x", {}), "reserved")
    if not re.fullmatch(r"[a-z0-9_.-]{1,64}", event_type):
        await rejected(lambda: events.publish("orders", event_type, {}), "event type", "a-z 0-9")
    if not re.fullmatch(r"[A-Za-z0-9_.:/@=+-]{1,200}", key):
        await rejected(
            lambda: events.publish("orders", "x", {}, idempotency_key=key),
            "idempotency key",
        )
    await rejected(lambda: events.publish("orders", "x", data), "data")
    await rejected(lambda: events.publish_agent_event("a1", "x", data), "data")


# --- conversations --------------------------------------------------------------------------
@PROPERTY
@given(name=hostile_text(), thread_id=hostile_text(), role=hostile_text())
@keyspace_unchanged
async def test_conversation_inputs(world: World, name: str, thread_id: str, role: str) -> None:
    conversations = world.zen.conversations
    if not (name and len(name) <= 256 and _encodable(name)):
        await rejected(lambda: conversations.create_thread(name, {}), "tool_name")
    await rejected(lambda: conversations.add_turn(thread_id, "user", "hi"), "thread_id", "UUID")
    if role not in ("user", "assistant"):
        await rejected(lambda: conversations.add_turn(world.thread_id, role, "hi"), "role", "user")


@keyspace_unchanged
async def test_conversation_limits(world: World) -> None:
    conversations = world.zen.conversations
    # The limit applies to the encoded (compressed) context: make it incompressible.
    big = {"blob": base64.b64encode(random.Random(6).randbytes(1_500_000)).decode()}
    await rejected(lambda: conversations.create_thread("chat", big), "bytes", "1048576")
    await rejected(
        lambda: conversations.add_turn(world.thread_id, "user", "x" * (MAX_CONTENT_CHARS + 1)),
        "content",
        str(MAX_CONTENT_CHARS),
    )
    unknown = "123e4567-e89b-42d3-a456-426614174000"
    await rejected(
        lambda: conversations.add_turn(unknown, "user", "hi"),
        unknown,
        error=NotFoundError,
    )


# --- cache ----------------------------------------------------------------------------------
def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@PROPERTY
@given(
    key=st.one_of(hostile_text(), st.integers(1000, 1100).map(lambda n: "é" * (n // 2))),
    ttl=st.one_of(st.none(), st.floats(0.5, 86400.0), bad_ttls()),
)
async def test_cache_keys_cannot_escape_their_namespace(
    world: World, key: str, ttl: float | None
) -> None:
    """A key is refused, or stored exactly under the tenant's cache prefix: whatever it
    holds (``*``, ``{``, ``:``...) it never names, reads or overwrites another key."""
    cache = world.zen.cache
    key_ok = bool(key) and _encodable(key) and len(key.encode()) <= MAX_KEY_BYTES
    ttl_ok = ttl is None or 0.5 <= ttl <= 86400.0
    if not key_ok:
        async with unchanged(world):
            await rejected(lambda: cache.set(key, 1, ttl=600), "key")
            await rejected(lambda: cache.get(key), "key")
            await rejected(lambda: cache.delete(key), "key")
        return
    if not ttl_ok:
        async with unchanged(world):
            await rejected(lambda: cache.set(key, 1, ttl=ttl), "ttl", "seconds")
        return
    before = await digest(world)
    await cache.set(key, {"key": key}, ttl=ttl)
    after = await digest(world)
    name = world.zen.redis.keyspace("cache").key("c", key).encode()
    assert [k[2] for k in changed(before, after)] == [name], "only the key's own entry changes"
    assert await cache.get(key) == {"key": key}
    assert await cache.get("seed") == {"v": 1}
    assert await cache.delete(key)


@PROPERTY
@given(ttl=bad_ttls())
@keyspace_unchanged
async def test_nats_and_temporal_ttls(world: World, ttl: float) -> None:
    cache = world.zen.cache
    await rejected(lambda: cache.set_nats_connection_state("c1", {}, ttl=ttl), "ttl")
    await rejected(lambda: cache.set_temporal_workflow_context("w1", {}, ttl=ttl), "ttl")


# --- conflicts and exhaustion --------------------------------------------------------------
async def test_conflicts_leave_no_trace(world: World) -> None:
    zen = world.zen
    async with unchanged(world):
        await rejected(
            lambda: zen.agents.create_agent("coder", agent_id="a1"), "a1", error=ConflictError
        )
        await rejected(
            lambda: zen.agents.transition("a1", "running", expected_version=99),
            "version",
            error=ConflictError,
        )
        await rejected(
            lambda: zen.tasks.create_task("coder", {}, task_id="t-1"), "t-1", error=ConflictError
        )
        await rejected(
            lambda: zen.memory.update_memory(world.memory_id, tags=["x"], expected_version=99),
            "version",
            error=ConflictError,
        )


async def test_an_exhausted_port_range_leaves_no_trace(world: World) -> None:
    await world.zen.ports.allocate("a1", port_range=(9500, 9501))
    async with unchanged(world):
        await rejected(
            lambda: world.zen.ports.allocate("b1", port_range=(9500, 9501)),
            "9500",
            error=CapacityError,
        )


# --- bad inputs the properties found (each was a bug, now fixed) ------------------------------
async def test_create_agent_with_an_empty_id(world: World) -> None:
    async with unchanged(world):
        await rejected(lambda: world.zen.agents.create_agent("coder", agent_id=""), *ID_WORDS)


@pytest.mark.parametrize("metadata", [[1], "text", {1: "int key"}])
async def test_create_agent_with_metadata_that_is_not_an_object(
    world: World, metadata: Any
) -> None:
    async with unchanged(world):
        await rejected(
            lambda: world.zen.agents.create_agent("coder", agent_id="a2", metadata=metadata),
            "metadata",
        )


async def test_update_agent_with_metadata_that_is_not_an_object(world: World) -> None:
    async with unchanged(world):
        await rejected(lambda: world.zen.agents.update_agent("a1", metadata=[1]), "metadata")  # type: ignore[arg-type]


async def test_search_with_a_float32_overflow(world: World) -> None:
    vector = [0.5] * (VECTOR_DIM - 1) + [1e39]
    async with unchanged(world):
        await rejected(lambda: world.zen.memory.search_memories("a1", vector=vector), "vector")


async def test_memory_tag_with_a_lone_surrogate(world: World) -> None:
    async with unchanged(world):
        await rejected(
            lambda: world.zen.memory.store_memory("a1", "tagged", tags=["\ud800"]), "tag"
        )


# --- NaN and infinity, wrongly typed updates, value sizes (issue 14) ---------------------------
NON_FINITE: Final = [math.nan, math.inf, -math.inf]
NESTINGS: Final[list[Callable[[float], dict[str, Any]]]] = [
    lambda v: {"x": v},
    lambda v: {"a": [1, {"b": v}]},
    lambda v: {"n": {"m": [2.5, v]}, "ok": None},
]


@settings(PROPERTY, max_examples=20)
@given(number=st.sampled_from(NON_FINITE), nest=st.sampled_from(NESTINGS))
@keyspace_unchanged
async def test_nan_and_infinity_are_refused_wherever_a_number_is_stored(
    world: World, number: float, nest: Callable[[float], dict[str, Any]]
) -> None:
    """orjson writes NaN and infinity as null: stored, they would come back as something the
    caller never wrote (and a null where the model needs a number breaks every read)."""
    zen = world.zen
    agents, events, cache = zen.agents, zen.events, zen.cache
    data = nest(number)
    capabilities: Any = {"timeout_seconds": number}
    calls: list[tuple[Callable[[], Awaitable[object]], tuple[str, ...]]] = [
        (lambda: agents.create_agent("coder", agent_id="a2", metadata=data), ("metadata", "NaN")),
        (
            lambda: agents.create_agent("coder", agent_id="a2", capabilities=capabilities),
            ("timeout_seconds", "finite"),
        ),
        (lambda: agents.update_agent("a1", capabilities=capabilities), ("timeout_seconds",)),
        (lambda: agents.update_agent("a1", metadata=data), ("metadata", "NaN")),
        (lambda: agents.update_agent("a1", allocated_resources=data), ("allocated_resources",)),
        (
            lambda: agents.update_agent("a1", performance={"memory_mb": number}),  # type: ignore[arg-type]
            ("memory_mb", "finite"),
        ),
        (lambda: agents.heartbeat("a1", memory_mb=number), ("memory_mb", "finite")),
        (lambda: agents.heartbeat("a1", cpu_percent=number), ("cpu_percent", "finite")),
        (lambda: agents.heartbeats(["a1"], memory_mb=number), ("memory_mb", "finite")),
        (lambda: events.publish("orders", "x", data), ("event data", "NaN")),
        (lambda: events.publish_agent_event("a1", "x", data), ("event data", "NaN")),
        (lambda: cache.set("k", data, ttl=60), ("cache value", "NaN")),
        (lambda: cache.set("k", number), ("cache value", "NaN")),
        (lambda: cache.set_nats_connection_state("c1", data), ("NaN",)),
        (lambda: cache.set_temporal_workflow_context("w1", data), ("NaN",)),
        (lambda: zen.conversations.create_thread("chat", data), ("NaN",)),
    ]
    for call, words in calls:
        await rejected(call, *words)


async def test_a_non_finite_value_computed_by_get_or_set_is_refused(world: World) -> None:
    cache = world.zen.cache

    async def compute() -> Any:
        return {"ratio": math.nan}

    await rejected(lambda: cache.get_or_set("ratio", compute, ttl=60), "cache value", "NaN")
    assert await cache.get("ratio") is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"capabilities": {"x": 1}}, ("capabilities", "x", "Extra inputs")),
        ({"capabilities": {"max_concurrent_tasks": 0}}, ("capabilities", "max_concurrent_tasks")),
        ({"capabilities": [1]}, ("capabilities",)),
        ({"allocated_resources": "zzz"}, ("allocated_resources", "dictionary")),
        ({"allocated_resources": {1: "int key"}}, ("allocated_resources",)),
        ({"performance": {"memory_mb": "lots"}}, ("performance", "memory_mb")),
        ({"performance": {"health_score": 2}}, ("performance", "health_score")),
        ({"current_task_id": 5}, ("current_task_id", "string")),
    ],
)
async def test_update_agent_validates_each_field(
    world: World, changes: dict[str, Any], words: tuple[str, ...]
) -> None:
    """``model_copy(update=...)`` does not validate: a wrongly typed field used to be stored,
    and every later read of the agent (and of the tenant's lists) failed."""
    agents = world.zen.agents
    async with unchanged(world):
        await rejected(lambda: agents.update_agent("a1", **changes), *words)
    record = await agents.get_agent("a1")
    assert record is not None
    assert (record.version, record.metadata) == (2, {"team": "blue"})
    assert [a.agent_id for a in (await agents.list_agents())[0]] == ["a1"]


@pytest.mark.parametrize(
    ("gauges", "words"),
    [
        ({"memory_mb": "abc"}, ("memory_mb", "finite number")),
        ({"memory_mb": -1.0}, ("memory_mb", ">= 0")),
        ({"memory_mb": 10**400}, ("memory_mb", "finite number")),
        ({"cpu_percent": True}, ("cpu_percent",)),
        ({"cpu_percent": [1]}, ("cpu_percent",)),
        ({"connections": 1.5}, ("connections", "integer")),
        ({"connections": True}, ("connections", "integer")),
        ({"connections": -1}, ("connections", "integer")),
        ({"connections": 2**63}, ("connections", "integer")),
    ],
)
async def test_heartbeat_gauges_are_checked(
    world: World, gauges: dict[str, Any], words: tuple[str, ...]
) -> None:
    """A gauge is stored as text and read back as a number: one that is not (``"abc"``) used
    to be stored, and every later read of the agent failed."""
    agents = world.zen.agents
    async with unchanged(world):
        await rejected(lambda: agents.heartbeat("a1", **gauges), *words)
        await rejected(lambda: agents.heartbeats(["a1"], **gauges), *words)
    assert await agents.get_agent("a1") is not None


def _json_of_size(size: int) -> dict[str, str]:
    value = {"blob": "x" * (size - len('{"blob":""}'))}
    assert len(orjson.dumps(value)) == size
    return value


async def test_value_size_limit_is_exact(world: World) -> None:
    """Agent metadata and allocated_resources, event data and cache values of up to
    REDIS_MAX_VALUE_BYTES of JSON are stored; one byte more is refused before any work."""
    zen = world.zen
    limit = 1_048_576  # the default
    over = _json_of_size(limit + 1)
    words = (str(limit), "REDIS_MAX_VALUE_BYTES")
    async with unchanged(world):
        await rejected(
            lambda: zen.agents.create_agent("coder", agent_id="a2", metadata=over),
            "agent metadata",
            *words,
        )
        await rejected(lambda: zen.agents.update_agent("a1", metadata=over), "metadata", *words)
        await rejected(
            lambda: zen.agents.update_agent("a1", allocated_resources=over),
            "allocated_resources",
            *words,
        )
        await rejected(lambda: zen.events.publish("orders", "big", over), "event data", *words)
        await rejected(
            lambda: zen.events.publish_agent_event("a1", "big", over), "event data", *words
        )
        await rejected(lambda: zen.cache.set("big", over), "cache value", *words)
        await rejected(lambda: zen.cache.set("big", b"x" * (limit + 1)), "cache value", *words)
        await rejected(lambda: zen.cache.set_nats_connection_state("c1", over), *words)
    at = _json_of_size(limit)
    await zen.agents.create_agent("coder", agent_id="a2", metadata=at)
    updated = await zen.agents.update_agent("a2", allocated_resources=at)
    assert (updated.metadata, updated.allocated_resources) == (at, at)
    stored = await zen.agents.get_agent("a2")
    assert stored is not None
    assert (stored.metadata, stored.allocated_resources) == (at, at)
    event_id = await zen.events.publish("orders", "big", at)
    assert [e.data async for e in zen.events.replay("orders") if e.id == event_id] == [at]
    await zen.cache.set("big", at, ttl=60)
    assert await zen.cache.get("big") == at
    assert zen.redis.settings.redis_max_value_bytes == limit
