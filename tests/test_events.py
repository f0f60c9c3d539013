"""The event log on every topology: publish, idempotency, agent events with audit and hints,
replay, consumer groups (ack after success, dead letters, dedupe, graceful stop), trimming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from zen_async import ValidationError, Zen, open_zen
from zen_async._tasks import background
from zen_async.events import AGENT_STREAMS, Event, NewEvent
from zen_async.events.envelope import decode_entries, decode_entry
from zen_async.events.export import EXPORT_SCHEMA, EventExporter
from zen_async.events.log import EXPORT_STREAM, EventLog
from zen_async.store import Message
from zen_async.testing.deployments import Target
from zen_async.testing.waiting import wait_for


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


async def test_publish_and_replay_round_trip(zen: Zen) -> None:
    events = zen.events
    payload = {"nested": {"list": [1, 2, {"deep": True}]}, "text": "héllo"}
    first = await events.publish("orders", "order_placed", payload, agent_id="agent-1")
    second = await events.publish("orders", "order_shipped", {"n": 2})
    replayed = await collect(events.replay("orders"))
    assert [e.id for e in replayed] == [first, second]
    assert replayed[0].data == payload  # a nested dict goes in as JSON and comes back whole
    assert replayed[0].type == "order_placed"
    assert replayed[0].agent_id == "agent-1"
    assert replayed[1].agent_id is None
    assert abs(replayed[0].time - datetime.now(UTC)) < timedelta(minutes=5)
    assert [e.id for e in await collect(events.replay("orders", from_id=first))] == [second]
    only_agent = await collect(events.replay("orders", agent_id="agent-1"))
    assert [e.id for e in only_agent] == [first]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await collect(events.replay("orders", since=future)) == []


async def test_replay_pages_through_long_streams(zen: Zen) -> None:
    ids = await zen.events.publish_many("bulk", [NewEvent("tick", {"i": i}) for i in range(1203)])
    assert len(set(ids)) == 1203
    replayed = await collect(zen.events.replay("bulk", page_size=500))
    assert [e.data["i"] for e in replayed] == list(range(1203))


async def test_replay_bounds_by_time_and_by_id(zen: Zen) -> None:
    """since and until are inclusive, to the millisecond; from_id is exclusive; with both
    from_id and since, the later start wins."""
    ids: list[str] = []
    for i in range(4):
        ids.append(await zen.events.publish("timeline", "tick", {"i": i}))
        await asyncio.sleep(0.003)  # entries in distinct milliseconds
    ms = [int(i.split("-")[0]) for i in ids]
    assert ms == sorted(set(ms)), "setup: one entry per millisecond"

    def at(millis: int, micros: int = 0) -> datetime:
        return datetime.fromtimestamp(millis / 1000, UTC) + timedelta(microseconds=micros)

    async def replayed(
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        from_id: str | None = None,
    ) -> list[str]:
        found = zen.events.replay(
            "timeline", since=since, until=until, from_id=from_id, page_size=1
        )
        return [e.id async for e in found]

    assert await replayed(until=at(ms[1])) == ids[:2]
    assert await replayed(until=at(ms[1], 999)) == ids[:2]  # the whole millisecond
    assert await replayed(until=at(ms[0] - 1)) == []
    assert await replayed(since=at(ms[1])) == ids[1:]
    assert await replayed(since=at(ms[1]), until=at(ms[2])) == ids[1:3]
    assert await replayed(from_id=ids[0], until=at(ms[2])) == ids[1:3]
    assert await replayed(from_id=ids[0], since=at(ms[2])) == ids[2:]
    assert await replayed(from_id=ids[2], since=at(ms[0])) == ids[3:]
    assert await replayed(from_id=ids[3]) == []


async def test_idempotency_key_appends_once(zen: Zen) -> None:
    events = zen.events
    first = await events.publish("payments", "charged", {"cents": 100}, idempotency_key="pay-1")
    again = await events.publish("payments", "charged", {"cents": 100}, idempotency_key="pay-1")
    other = await events.publish("payments", "charged", {"cents": 5}, idempotency_key="pay-2")
    assert again == first
    assert other != first
    assert await events.length("payments") == 2
    batch = await events.publish_many(
        "payments", [NewEvent("charged", {}, idempotency_key="pay-1"), NewEvent("charged", {})]
    )
    assert batch[0] == first
    assert await events.length("payments") == 3


async def test_agent_events_go_to_shard_audit_and_channel(zen: Zen) -> None:
    events = zen.events
    async with zen.redis.subscribe(events.agent_channel) as hints:
        first = await zen.redis.publish_agent_event("worker-7", "state_changed", {"to": "ready"})
        second = await zen.redis._publish_agent_event("worker-7", "port_leased", {"port": 4000})
        received: list[Message] = []
        async with asyncio.timeout(10):
            async for item in hints:
                if isinstance(item, Message):
                    received.append(item)
                if len(received) == 2:
                    break
    shard = events.agent_stream("worker-7").name
    assert [orjson.loads(m.data) for m in received] == [
        {"agent": "worker-7", "id": first, "stream": shard, "type": "state_changed"},
        {"agent": "worker-7", "id": second, "stream": shard, "type": "port_leased"},
    ]
    trail = await events.audit_trail("worker-7")
    assert [(e.id, e.type) for e in trail] == [(first, "state_changed"), (second, "port_leased")]
    shard_events = await collect(events.replay(events.agent_stream("worker-7").name))
    assert [e.id for e in shard_events] == [first, second]


async def test_consumer_handles_every_event_once_and_acks(zen: Zen) -> None:
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    ids = await zen.events.publish_many("jobs", [NewEvent("job", {"i": i}) for i in range(40)])
    async with zen.events.consumer("workers", ["jobs"], handler, start_id="0") as consumer:
        await consumer.wait_handled(40, timeout=30)
        more = await zen.events.publish("jobs", "job", {"i": 40})
        await consumer.wait_handled(41, timeout=30)
    assert sorted(handled) == sorted([*ids, more])
    ref = zen.events.stream("jobs")
    pending = await ref.ks.execute("XPENDING", ref.key, "workers")
    assert pending["pending"] == 0
    assert consumer.statistics().handled == 41


async def test_consumer_reads_every_agent_shard(zen: Zen) -> None:
    seen: set[str] = set()

    async def handler(event: Event) -> None:
        assert event.agent_id is not None
        seen.add(event.agent_id)

    async with zen.events.consumer("audit", [AGENT_STREAMS], handler) as consumer:
        for i in range(30):
            await zen.events.publish_agent_event(f"a{i}", "heartbeat", {})
        await consumer.wait_handled(30, timeout=30)
    assert seen == {f"a{i}" for i in range(30)}


async def test_poison_event_goes_to_dead_letter_after_n_deliveries(zen: Zen) -> None:
    attempts: dict[str, int] = {}

    async def handler(event: Event) -> None:
        attempts[event.id] = attempts.get(event.id, 0) + 1
        if event.data.get("poison"):
            raise RuntimeError("cannot digest this")

    good = await zen.events.publish("meals", "meal", {"poison": False})
    bad = await zen.events.publish("meals", "meal", {"poison": True})
    consumer = zen.events.consumer(
        "eaters", ["meals"], handler, start_id="0", min_idle=0.1, max_deliveries=3, block=0.1
    )
    async with consumer:
        await consumer.wait_handled(2, timeout=30)
    dead = await zen.events.dead_letters("meals", "eaters")
    stats = consumer.statistics()
    assert attempts == {good: 1, bad: 3}
    assert [e.data for e in dead] == [{"poison": True}]
    assert stats.dead_lettered == 1
    assert stats.failed == 3
    ref = zen.events.stream("meals")
    assert (await ref.ks.execute("XPENDING", ref.key, "eaters"))["pending"] == 0


async def test_a_long_handler_keeps_its_entry_and_a_failure_is_retried(zen: Zen) -> None:
    """A handler running for many min-idle periods is not claimed from under itself (no
    delivery is counted while it runs), so one failure leads to one retry, not to the
    dead-letter stream."""
    calls: list[float] = []

    async def slow_then_fine(event: Event) -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            await asyncio.sleep(1.5)  # 5 x min_idle
            raise RuntimeError("transient")

    await zen.events.publish("jobs", "job", {})
    consumer = zen.events.consumer(
        "workers", ["jobs"], slow_then_fine, start_id="0", min_idle=0.3, max_deliveries=3
    )
    async with consumer:
        await consumer.wait_handled(1, timeout=30)
    stats = consumer.statistics()
    assert (len(calls), stats.failed, stats.handled, stats.dead_lettered) == (2, 1, 1, 0)
    assert await zen.events.dead_letters("jobs", "workers") == []


async def test_an_entry_already_marked_handled_is_skipped_and_acked(zen: Zen) -> None:
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    ref = zen.events.stream("mail")
    entry = await zen.events.publish("mail", "letter", {})
    await ref.ks.execute("XGROUP", "CREATE", ref.key, "post", "0")
    # Its done marker exists while a copy of it is still to be handled here: what a member
    # meets when another one, paused past min_idle while this one took the entry over, then
    # handled and acknowledged it (the marker is written with the ack, in one step).
    await ref.ks.execute("XREADGROUP", "GROUP", "post", "dead", "STREAMS", ref.key, ">")
    await ref.ks.set(ref.done_key("post", entry), b"1", ttl_ms=60_000)
    async with zen.events.consumer("post", ["mail"], handler, min_idle=0.05) as consumer:
        await consumer.wait_handled(1, timeout=30)
    assert consumer.statistics().duplicates_skipped == 1
    assert handled == []
    assert (await ref.ks.execute("XPENDING", ref.key, "post"))["pending"] == 0


async def test_shutdown_finishes_what_was_read(zen: Zen) -> None:
    handled: list[int] = []

    async def slow_handler(event: Event) -> None:
        await asyncio.sleep(0.01)
        handled.append(event.data["i"])

    await zen.events.publish_many("slow", [NewEvent("e", {"i": i}) for i in range(20)])
    consumer = zen.events.consumer("g", ["slow"], slow_handler, start_id="0", concurrency=2)
    async with consumer:
        await consumer.wait_handled(1, timeout=10)
    # leaving the block waited for every entry already read, and acked it
    ref = zen.events.stream("slow")
    summary = await ref.ks.execute("XPENDING", ref.key, "g")
    assert summary["pending"] == 0
    assert len(handled) == consumer.statistics().handled >= 1


async def test_a_drain_timeout_cancels_a_hanging_handler_and_its_entry_stays_pending(
    zen: Zen,
) -> None:
    """aclose() is bounded when asked: past the drain timeout a hanging handler is
    cancelled, its entry is not acknowledged, and another member handles it later."""
    started = asyncio.Event()
    cancelled: list[str] = []

    async def hang(event: Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(event.id)
            raise

    ref = zen.events.stream("jobs")
    first = await zen.events.publish("jobs", "job", {"n": 1})
    stuck = zen.events.consumer(
        "workers", ["jobs"], hang, name="stuck", start_id="0", min_idle=3600, drain_timeout=0.2
    )
    async with stuck:  # the option bounds the exit of the block
        await asyncio.wait_for(started.wait(), 30)
    assert cancelled == [first]
    started.clear()
    second = await zen.events.publish("jobs", "job", {"n": 2})
    again = zen.events.consumer("workers", ["jobs"], hang, name="stuck-2", min_idle=3600)
    async with again:
        await asyncio.wait_for(started.wait(), 30)
        await again.aclose(drain_timeout=0.2)  # the argument bounds a consumer that would wait
    assert cancelled == [first, second]
    rows = await ref.ks.execute("XPENDING", ref.key, "workers", "-", "+", 10)
    assert sorted((_text(r["message_id"]), _text(r["consumer"])) for r in rows) == sorted(
        [(first, "stuck"), (second, "stuck-2")]
    ), "an abandoned entry stays pending, unacknowledged"

    rescued: list[str] = []

    async def fine(event: Event) -> None:
        rescued.append(event.id)

    async with zen.events.consumer("workers", ["jobs"], fine, min_idle=0.1, block=0.1) as rescuer:
        await rescuer.wait_handled(2, timeout=30)
    assert sorted(rescued) == sorted([first, second])  # nothing lost


async def test_a_consumer_restarted_under_its_name_drains_its_own_pending_entries(
    zen: Zen,
) -> None:
    """On start a consumer re-reads what was delivered to its name and never acked, before
    any claim: with a min_idle of an hour, only that drain can hand these entries back."""

    async def fail(event: Event) -> None:
        raise RuntimeError("not now")

    jobs = await zen.events.publish_many("jobs", [NewEvent("job", {"i": i}) for i in range(5)])
    mail = await zen.events.publish_many("mail", [NewEvent("letter", {"i": i}) for i in range(3)])
    first = zen.events.consumer(
        "workers", ["jobs", "mail"], fail, name="me", start_id="0", block=0.1
    )
    async with first:

        async def all_failed() -> bool:
            return first.statistics().failed == 8

        await wait_for(all_failed, deadline=30, what="eight failed deliveries")

    handled: list[tuple[str, str]] = []

    async def fine(event: Event) -> None:
        handled.append((event.stream, event.id))

    restarted = zen.events.consumer(
        "workers", ["jobs", "mail"], fine, name="me", min_idle=3600, batch=2, block=0.1
    )
    async with restarted:
        await restarted.wait_handled(8, timeout=30)
    assert sorted(handled) == sorted([("jobs", i) for i in jobs] + [("mail", i) for i in mail])
    assert restarted.statistics().claimed == 0
    for name in ("jobs", "mail"):
        ref = zen.events.stream(name)
        assert (await ref.ks.execute("XPENDING", ref.key, "workers"))["pending"] == 0


def test_batch_decoding_matches_one_by_one_and_isolates_a_bad_entry() -> None:
    """decode_entries is decode_entry for a batch: the same events, field for field, and an
    entry that does not decode fails alone."""
    entries: list[tuple[str, dict[Any, Any]]] = [
        (
            "1700000000000-0",
            {
                b"time": b"1700000000000",
                b"type": b"job",
                b"agent": b"",
                b"v": b"1",
                b"data": b'{"i": 1}',
            },
        ),
        (
            "1700000000000-1",
            {
                b"time": b"1700000000000",
                b"type": b"job",
                b"agent": b"a-1",
                b"v": b"1",
                b"data": b"[1, 2]",
                b"key": b"op/x",
            },
        ),
        ("1700000000001-0", {b"time": b"1700000000001", b"type": b"job", b"data": b"{bad"}),
        ("1700000000002-0", {b"type": b"job"}),  # no time: the entry id's
        ("1700000000003-0", {"type": "job", "data": '{"s": true}'}),  # str keys
        ("1700000000004-0", {b"time": b"soon", b"type": b"job", b"data": b"{}"}),
    ]
    decoded = decode_entries("jobs", entries)
    assert len(decoded) == len(entries)
    for (entry_id, fields), event in zip(entries, decoded, strict=True):
        try:
            expected: Event | type[Exception] = decode_entry("jobs", entry_id, fields)
        except ValueError as exc:
            expected = type(exc)
        if isinstance(expected, Event):
            assert event == expected
        else:
            assert isinstance(event, expected), entry_id
    assert [isinstance(e, Exception) for e in decoded] == [False, False, True, False, False, True]


async def test_acks_go_by_the_batch_not_by_the_event(standalone: Target) -> None:
    """With a handler that does not wait, a read batch is handled and acknowledged in a few
    script calls (each XACK below is one event_ack call), not one per event."""
    async with open_zen(standalone.settings()) as zen:
        await zen.events.publish_many("bulk", [NewEvent("job", {"i": i}) for i in range(400)])
        ks = zen.events.stream("bulk").ks

        async def xacks() -> int:
            stats = await ks.execute("INFO", "commandstats")
            return int(stats.get("cmdstat_xack", {}).get("calls", 0))

        handled: list[int] = []

        async def handler(event: Event) -> None:
            handled.append(event.data["i"])

        before = await xacks()
        consumer = zen.events.consumer("g", ["bulk"], handler, start_id="0", batch=100)
        async with consumer:
            await consumer.wait_handled(400, timeout=30)
        calls = await xacks() - before
        assert sorted(handled) == list(range(400))
        assert consumer.statistics().handled == 400
        assert calls <= 12, f"{calls} ack calls for 400 events in batches of 100"
        ref = zen.events.stream("bulk")
        assert (await ref.ks.execute("XPENDING", ref.key, "g"))["pending"] == 0


async def test_an_undecodable_entry_fails_alone_and_is_dead_lettered(zen: Zen) -> None:
    handled: list[int] = []

    async def handler(event: Event) -> None:
        handled.append(event.data["i"])

    ref = zen.events.stream("mixed")
    first = await zen.events.publish_many("mixed", [NewEvent("job", {"i": i}) for i in range(3)])
    bad = await ref.ks.execute("XADD", ref.key, "*", "type", "job", "v", "1", "data", "{oops")
    last = await zen.events.publish_many("mixed", [NewEvent("job", {"i": i}) for i in range(3, 6)])
    consumer = zen.events.consumer(
        "g", ["mixed"], handler, start_id="0", min_idle=0.1, max_deliveries=2, block=0.1
    )
    async with consumer:
        await consumer.wait_handled(7, timeout=30)
    assert sorted(handled) == list(range(6)), "the good entries around it were handled"
    stats = consumer.statistics()
    assert (stats.handled, stats.dead_lettered, stats.failed) == (6, 1, 2)
    # Read raw: dead_letters() decodes each entry, and this one does not decode.
    dead = await ref.ks.execute("XRANGE", ref.dead_letter_key("g"), "-", "+")
    assert [_text(fields[b"dead_stream_id"]) for _, fields in dead] == [_text(bad)]
    assert (await ref.ks.execute("XPENDING", ref.key, "g"))["pending"] == 0
    assert len(first) == len(last) == 3


async def test_trimming_never_drops_pending_or_undelivered_entries(zen: Zen) -> None:
    events = zen.events
    ref = events.stream("trimmed")
    ids = await events.publish_many("trimmed", [NewEvent("e", {"i": i}) for i in range(100)])
    await ref.ks.execute("XGROUP", "CREATE", ref.key, "slowpoke", "0")
    # Deliver 30 entries; ack only the first 20: entries 20-29 stay pending, 30-99 undelivered.
    await ref.ks.execute(
        "XREADGROUP", "GROUP", "slowpoke", "c", "COUNT", 30, "STREAMS", ref.key, ">"
    )
    await ref.ks.execute("XACK", ref.key, "slowpoke", *ids[:20])
    removed = await events.trim("trimmed", max_len=10)
    assert removed == 20
    remaining = [e.id for e in await collect(events.replay("trimmed"))]
    assert remaining == ids[20:]  # pending and undelivered entries are all still there
    # Without groups a stream is simply capped.
    await events.publish_many("capped", [NewEvent("e", {}) for _ in range(50)])
    await events.trim("capped", max_len=10)
    assert await events.length("capped") == 10


async def test_a_trim_pass_covers_streams_that_other_instances_published_to(
    target: Target,
) -> None:
    async with open_zen(target.settings()) as writer, open_zen(target.settings()) as other:
        await writer.events.publish_many("orders", [NewEvent("e", {"i": i}) for i in range(50)])
        # Another instance's log, which never published to "orders" itself.
        trimmer = EventLog(other.redis, max_len=10)
        removed = await trimmer.trim_all()
        assert await other.events.length("orders") == 10
    assert removed == 40


async def test_dead_letter_streams_are_bounded_but_keep_what_a_group_still_needs(
    zen: Zen,
) -> None:
    async def fail(event: Event) -> None:
        raise RuntimeError("poison")

    for stream, count in (("meals", 30), ("drinks", 10)):
        await zen.events.publish_many(stream, [NewEvent("e", {"i": i}) for i in range(count)])
        consumer = zen.events.consumer(
            "eaters", [stream], fail, start_id="0", min_idle=0.05, max_deliveries=1, block=0.1
        )
        async with consumer:
            await consumer.wait_handled(count, timeout=30)
    meals = [e.id for e in await zen.events.dead_letters("meals", "eaters")]
    drinks = [e.id for e in await zen.events.dead_letters("drinks", "eaters")]
    assert (len(meals), len(drinks)) == (30, 10)
    # Someone reads the meals' dead letters with a group: 10 delivered, the first 5 acked.
    ref = zen.events.stream("meals")
    dead_key = ref.dead_letter_key("eaters")
    await ref.ks.execute("XGROUP", "CREATE", dead_key, "inspectors", "0")
    await ref.ks.execute(
        "XREADGROUP", "GROUP", "inspectors", "i", "COUNT", 10, "STREAMS", dead_key, ">"
    )
    await ref.ks.execute("XACK", dead_key, "inspectors", *meals[:5])

    removed = await EventLog(zen.redis, dead_letter_max_len=3).trim_all()
    kept_meals = [e.id for e in await zen.events.dead_letters("meals", "eaters")]
    kept_drinks = [e.id for e in await zen.events.dead_letters("drinks", "eaters")]
    assert kept_meals == meals[5:], "a dead letter pending or undelivered in a group stays"
    assert kept_drinks == drinks[-3:]  # no group: capped at the bound
    assert removed == 5 + 7


async def test_bad_input_is_rejected_and_nothing_is_written(zen: Zen) -> None:
    events = zen.events
    with pytest.raises(ValidationError, match="stream name"):
        await events.publish("bad name!", "t", {})
    with pytest.raises(ValidationError, match="event type"):
        await events.publish("ok", "Bad Type", {})
    with pytest.raises(ValidationError, match="agent id"):
        await events.publish_agent_event("no spaces", "t", {})
    with pytest.raises(ValidationError, match="not JSON-serialisable"):
        await events.publish("ok", "t", {"x": object()})
    with pytest.raises(ValidationError, match="idempotency key"):
        await events.publish("ok", "t", {}, idempotency_key="has space")
    with pytest.raises(ValidationError, match="reserved"):
        await events.publish("agents.x", "t", {})
    with pytest.raises(ValidationError, match="shards are"):
        events.stream("agents.z999")
    assert await events.length("ok") == 0


async def test_tenants_do_not_share_streams(zen: Zen) -> None:
    other = zen.for_tenant("acme")
    await zen.events.publish("shared-name", "e", {"tenant": "default"})
    await other.events.publish("shared-name", "e", {"tenant": "acme"})
    assert [e.data for e in await collect(other.events.replay("shared-name"))] == [
        {"tenant": "acme"}
    ]
    with pytest.raises(ValidationError, match="tenant"):
        zen.for_tenant("bad tenant")


async def test_export_stream_copies_every_event_once_with_its_envelope(target: Target) -> None:
    async with open_zen(target.settings(redis_event_export=True)) as zen:
        first = await zen.events.publish("orders", "order_placed", {"total": 12})
        await zen.events.publish("orders", "order_placed", {"total": 12}, idempotency_key="o1")
        await zen.events.publish("orders", "order_placed", {"total": 12}, idempotency_key="o1")
        agent_event = await zen.events.publish_agent_event("ex-1", "state_changed", {"to": "x"})
        exporter = EventExporter(zen.events, refresh=0.05)
        async with background(export=exporter.run()):

            async def exported() -> bool:
                return len(await zen.events.read_export()) >= 3

            await wait_for(exported, deadline=30, what="three exported events")
        entries = await zen.events.read_export()
        with pytest.raises(ValidationError, match="reserved"):
            await zen.events.publish(EXPORT_STREAM, "e", {})
    # Stream ids are unique per stream only: two streams can both hold an entry 1700…-0.
    by_source = {(e["stream"].split(".")[0], e["event_id"]): e for e in entries}
    assert len(entries) == 3, "each event exported once, whichever exporter ran"
    placed = by_source["orders", first]
    assert placed["schema"] == EXPORT_SCHEMA
    assert (placed["stream"], placed["type"], placed["agent"]) == ("orders", "order_placed", "")
    assert orjson.loads(placed["payload"]) == {"total": 12}
    assert placed["tenant"] == "default"
    assert datetime.fromisoformat(placed["event_time"]).tzinfo is not None
    assert by_source["agents", agent_event]["agent"] == "ex-1"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
