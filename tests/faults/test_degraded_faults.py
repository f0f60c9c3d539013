"""Degraded mode against a real server that is frozen or killed: writes made during the
outage are journaled, acknowledged, and applied exactly once when the server is back, also
when it dies again mid-replay or when the process restarts during the outage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from zen_async import (
    BackendError,
    BreakerState,
    ConflictError,
    DegradedError,
    InvalidTransitionError,
    Zen,
    open_zen,
)
from zen_async.agents.port_reserve import ReservingPortAllocator
from zen_async.degraded import JournalEntry, Replayable
from zen_async.testing import Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def degraded_settings(group: Standalone, **extra: Any) -> Any:
    return settings_for(
        group,
        redis_socket_timeout=0.3,
        redis_connect_timeout=0.3,
        redis_retry_attempts=0,
        redis_breaker_failure_threshold=1,
        redis_breaker_reset_timeout=0.2,
        redis_health_check_interval=0.2,
        **extra,
    )


async def until_journaled(op: Callable[[], Awaitable[object]]) -> None:
    """Call ``op`` until it is journaled: the calls before the breaker opens fail (they
    were never acknowledged, so they are not expected to be applied)."""
    while True:
        try:
            await op()
        except DegradedError:
            raise
        except BackendError:
            continue
        return


async def journal_drained(zen: Zen) -> None:
    async def drained() -> bool:
        return zen.redis.degraded.journal.depth == 0 and not zen.redis.degraded.active

    await wait_for(drained, deadline=30, what="the outage journal replayed")


async def test_writes_during_a_frozen_server_are_replayed_once_in_order(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            await zen.cache.set("colour", "red")
            assert await zen.cache.get("colour") == "red"
            thread = await zen.conversations.create_thread("chat", {})
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("colour", "blue"))
                await zen.cache.set("size", 3, ttl=60)
                ids = [await zen.events.publish("orders", "placed", {"n": i}) for i in range(20)]
                assert all(i.startswith("journal:") for i in ids)
                assert await zen.conversations.add_turn(thread, "user", "hello") == 0
                memory = await zen.memory.store_memory("a1", "remember the milk")
                stale = await zen.cache.read("colour")
                assert stale == ("blue", True), "its own journaled write, marked stale"
                with pytest.raises(DegradedError, match="no last-known value"):
                    await zen.cache.get("never-seen")
                status = (await zen.redis.get_health_status())["degraded_mode"]
                assert status["active"]
                assert status["journal_depth"] == 24
                assert status["outage_seconds"] > 0
            finally:
                group.server.resume()
            await journal_drained(zen)
            assert await zen.cache.read("colour") == ("blue", False)
            assert await zen.cache.get("size") == 3
            events = [e.data async for e in zen.events.replay("orders")]
            assert events == [{"n": i} for i in range(20)], "each event once, in order"
            context = await zen.conversations.get_thread(thread)
            assert context is not None
            assert [t.content for t in context.turns] == ["hello"]
            stored = await zen.memory.get_memory(memory.memory_id)
            assert stored is not None
            assert stored.content == "remember the milk"
            assert stored.access_count == 0, "stored once, not reinforced by its replay"
            status = (await zen.redis.get_health_status())["degraded_mode"]
            assert status["replayed_total"] == 24
            assert not status["active"]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_replay_survives_the_server_freezing_again_mid_replay(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            thread = await zen.conversations.create_thread("chat", {})
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("warm", 1))
                for i in range(300):
                    await zen.events.publish("orders", "placed", {"n": i})
                    if i < 40:
                        await zen.conversations.add_turn(thread, "user", f"turn {i}")
            finally:
                group.server.resume()
            degraded = zen.redis.degraded
            resolver = degraded.resolver
            assert resolver is not None
            applied = 0

            def freezing_resolver(tenant: str, service: str) -> Replayable:
                nonlocal applied
                applied += 1
                if applied == 100:  # the server freezes again in the middle of the replay
                    group.server.pause()
                return resolver(tenant, service)

            degraded.resolver = freezing_resolver

            async def frozen_mid_replay() -> bool:
                return applied >= 100

            await wait_for(frozen_mid_replay, deadline=30, what="the replay under way")
            await anyio.sleep(1.0)
            assert 0 < degraded.journal.depth < 341, "part replayed, the rest waits"
            group.server.resume()
            await journal_drained(zen)
            events = [e.data["n"] async for e in zen.events.replay("orders")]
            assert events == list(range(300)), "no event lost or doubled"
            context = await zen.conversations.get_thread(thread)
            assert context is not None
            assert [t.content for t in context.turns] == [f"turn {i}" for i in range(40)]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_restarted_process_replays_what_it_acknowledged(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path, extra_args=["--appendonly", "yes"])
    await anyio.to_thread.run_sync(group.start)
    journal_file = tmp_path / "outage.journal"
    settings = degraded_settings(group, redis_outage_journal=journal_file)
    try:
        async with open_zen(settings) as zen:
            await zen.cache.set("k", "before")
            await anyio.to_thread.run_sync(group.server.kill)
            await until_journaled(lambda: zen.cache.set("k", "during"))
            for i in range(10):
                await zen.events.publish("orders", "placed", {"n": i}, idempotency_key=f"o{i}")
            assert zen.redis.degraded.journal.depth == 11
        # The process is gone; its journal file is not.
        await anyio.to_thread.run_sync(group.server.start)
        async with open_zen(settings) as zen:
            await journal_drained(zen)
            assert await zen.cache.get("k") == "during"
            events = [e.data["n"] async for e in zen.events.replay("orders")]
            assert events == list(range(10))
        assert journal_file.read_bytes() == b""
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_ports_come_from_the_pre_leased_block_during_an_outage(tmp_path: Path) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group, redis_port_reserve=3)) as zen:
            ports = zen.ports
            assert isinstance(ports, ReservingPortAllocator)

            async def reserve_full() -> bool:
                return len(ports.reserved) == 3

            await wait_for(reserve_full, deadline=10, what="the pre-leased block")
            reserved = {lease.port: lease.token for lease in ports.reserved}
            online = await ports.allocate("online")
            assert online.port not in reserved
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("trip", 1))
                offline = [await ports.allocate(f"agent-{i}") for i in range(3)]
                assert {(lease.port, lease.token) for lease in offline} == set(reserved.items())
                with pytest.raises(DegradedError, match="pre-leased block has no port left"):
                    await ports.allocate("agent-3")
            finally:
                group.server.resume()
            await journal_drained(zen)
            for lease in offline:
                held = await ports.leases(lease.agent_id)
                assert [(h.port, h.token) for h in held] == [(lease.port, lease.token)]
                assert await ports.release(lease), "the agent owns it now: it can release it"
            await wait_for(reserve_full, deadline=10, what="the block refilled")
            assert not {lease.port for lease in ports.reserved} & {online.port}
            trail = await zen.events.audit_trail("agent-0")
            assert [e.type for e in trail][:1] == ["port_allocated"]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_agent_writes_during_an_outage_are_checked_journaled_and_replayed(
    tmp_path: Path,
) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        async with open_zen(degraded_settings(group)) as zen:
            agents = zen.agents
            await agents.create_agent("coder", agent_id="a1")
            await agents.transition("a1", "ready")
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("trip", 1))
                seen = await agents.get_agent("a1")
                assert seen is not None
                assert (seen.lifecycle_state, seen.version, seen.stale) == ("ready", 2, True)
                with pytest.raises(InvalidTransitionError, match="cannot go from ready to"):
                    await agents.transition("a1", "terminated")
                with pytest.raises(ConflictError, match="last known"):
                    await agents.transition("a1", "running", expected_version=7)
                running = await agents.transition("a1", "running")
                # provisional: the last version the server gave; the server numbers it later
                assert (running.version, running.event_id[:8], running.provisional) == (
                    2,
                    "journal:",
                    True,
                )
                with pytest.raises(ConflictError, match="journaled writes to it wait"):
                    await agents.update_agent("a1", metadata={}, expected_version=2)
                updated = await agents.update_agent("a1", metadata={"step": 1, "api_key": "k"})
                assert (updated.version, updated.stale, updated.provisional) == (2, True, True)
                assert updated.lifecycle_state == "running", "the view includes the journal"
                assert updated.metadata == {"step": 1, "api_key": "[redacted]"}
                assert await agents.heartbeat("a1", memory_mb=64) is not None
                with pytest.raises(DegradedError, match="no last-known record of agent a2"):
                    await agents.transition("a2", "ready")
            finally:
                group.server.resume()
            await journal_drained(zen)
            record = await agents.get_agent("a1")
            assert record is not None
            assert (record.lifecycle_state, record.version, record.stale) == ("running", 4, False)
            assert record.metadata == {"step": 1, "api_key": "[redacted]"}
            assert record.performance.memory_mb == 64
            trail = [e for e in await zen.events.audit_trail("a1") if e.type == "state_changed"]
            assert [(e.data["to"], e.data["version"]) for e in trail] == [
                ("ready", 2),
                ("running", 3),
            ]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def test_a_journaled_transition_that_conflicts_keeps_the_server_state(
    tmp_path: Path,
) -> None:
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = degraded_settings(group)
        async with open_zen(settings) as zen, open_zen(settings) as other:
            await zen.agents.create_agent("coder", agent_id="a1")
            await zen.agents.transition("a1", "ready")
            other_wrote = anyio.Event()
            degraded = zen.redis.degraded
            resolver = degraded.resolver
            assert resolver is not None

            class AfterTheOtherWrite:
                def __init__(self, service: Replayable) -> None:
                    self.service = service

                async def replay_journaled(self, entry: JournalEntry) -> None:
                    await other_wrote.wait()
                    await self.service.replay_journaled(entry)

            degraded.resolver = lambda tenant, name: AfterTheOtherWrite(resolver(tenant, name))
            group.server.pause()
            try:
                await until_journaled(lambda: zen.cache.set("trip", 1))
                # journaled, checked against version 2
                await zen.agents.transition("a1", "running", expected_version=2)
            finally:
                group.server.resume()
            # Another instance writes first: by the time the journal replays, version 2 is gone.
            await until_ok(lambda: other.agents.transition("a1", "paused"))
            other_wrote.set()
            await journal_drained(zen)
            record = await other.agents.get_agent("a1")
            assert record is not None
            assert (record.lifecycle_state, record.version) == ("paused", 3)
            refused = [
                e for e in await zen.events.audit_trail("a1") if e.type == "journal_write_refused"
            ]
            assert len(refused) == 1
            assert refused[0].data["kind"] == "agents.transition"
            assert "version" in refused[0].data["error"]
    finally:
        await anyio.to_thread.run_sync(group.stop)


async def until_ok(op: Callable[[], Awaitable[object]]) -> None:
    async def done() -> bool:
        try:
            await op()
        except BackendError:
            return False
        return True

    await wait_for(done, deadline=30, what="the other instance's write")


async def test_the_event_of_a_change_already_made_is_journaled_not_lost(tmp_path: Path) -> None:
    """A port lease or a memory forget is its own step; its audit event follows. When that
    event's append times out (the breaker still closed: a plain publish raises), record()
    journals it instead, and it is appended once on recovery, and only once even when the
    same change is recorded again."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        settings = settings_for(
            group,
            redis_socket_timeout=0.3,
            redis_retry_attempts=0,
            redis_breaker_failure_threshold=100,  # timeouts, but the circuit stays closed
        )
        async with open_zen(settings) as zen:
            await zen.events.publish_agent_event("a1", "created", {})
            group.server.pause()
            try:
                with pytest.raises(BackendError):  # an ordinary publish is the caller's to retry
                    await zen.events.publish_agent_event("a1", "plain", {})
                first = await zen.events.record(
                    "port_allocated", {"port": 4000}, key="lease-1", agent_id="a1"
                )
                assert first.startswith("journal:")
                assert zen.redis.breaker.statistics().state is BreakerState.CLOSED
            finally:
                group.server.resume()
            await journal_drained(zen)
            again = await zen.events.record(
                "port_allocated", {"port": 4000}, key="lease-1", agent_id="a1"
            )
            trail = await zen.events.audit_trail("a1")
            recorded = [e for e in trail if e.type == "port_allocated"]
            assert [e.data for e in recorded] == [{"port": 4000}]
            assert again == recorded[0].id, "recording the same change again appends nothing"
            # The paused publish may have been applied on resume (its reply was lost): the
            # caller was told BackendError, never an id. Nothing else is in the trail.
            assert {e.type for e in trail} <= {"created", "plain", "port_allocated"}

            # Ports record their lease events this way (an idempotency key per lease).
            lease = await zen.ports.allocate("a1", port_range=(9300, 9310))
            (event,) = [
                e for e in await zen.events.audit_trail("a1") if e.data.get("port") == lease.port
            ]
            assert event.idempotency_key is not None
            assert event.idempotency_key.startswith("change/")
    finally:
        await anyio.to_thread.run_sync(group.stop)
