"""Agents on every topology: the transition table, atomic transitions with their events,
optimistic concurrency, waiting for a state, liveness and the reaper, indexes, bulk ops."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from zen_async import (
    BackendError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    Zen,
    ZenError,
    open_zen,
)
from zen_async.agents._shards import shard_chunks, shard_of
from zen_async.agents.models import (
    TRANSITIONS,
    AgentCapabilities,
    AgentPerformance,
    AgentRecord,
    AgentSpec,
    LifecycleState,
    TransitionResult,
)
from zen_async.agents.ports import PortAllocator
from zen_async.agents.state import AgentStateManager
from zen_async.events import Event
from zen_async.events.envelope import agent_shard, shard_tag
from zen_async.store import Message
from zen_async.testing.deployments import Target

S = LifecycleState
PATH_TO: dict[LifecycleState, list[LifecycleState]] = {
    S.INITIALIZING: [],
    S.READY: [S.READY],
    S.RUNNING: [S.READY, S.RUNNING],
    S.PAUSED: [S.READY, S.PAUSED],
    S.TERMINATING: [S.READY, S.TERMINATING],
    S.TERMINATED: [S.READY, S.TERMINATING, S.TERMINATED],
    S.ERROR: [S.ERROR],
}


async def drive(zen: Zen, agent_id: str, path: list[LifecycleState]) -> None:
    for state in path:
        await zen.agents.transition(agent_id, state)


async def test_the_whole_transition_table(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        pairs = list(itertools.product(S, S))
        await zen.agents.create_agents(
            [AgentSpec(agent_type="probe", agent_id=f"t-{a.value}-{b.value}") for a, b in pairs]
        )
        for start, target in pairs:
            agent_id = f"t-{start.value}-{target.value}"
            await drive(zen, agent_id, PATH_TO[start])
            before = await zen.agents.get_agent(agent_id)
            assert before is not None
            if target in TRANSITIONS[start]:
                result = await zen.agents.transition(agent_id, target)
                assert (result.from_state, result.to_state) == (start, target)
                assert result.version == before.version + 1
            else:
                with pytest.raises(InvalidTransitionError) as info:
                    await zen.agents.transition(agent_id, target)
                message = str(info.value)
                assert f"from {start.value} to {target.value}" in message
                for allowed in TRANSITIONS[start]:
                    assert allowed.value in message
                after = await zen.agents.get_agent(agent_id)
                assert after == before, "a refused transition changes nothing"


async def test_transition_writes_state_indexes_and_one_event(zen: Zen) -> None:
    agents = zen.agents
    record = await agents.create_agent("coder", agent_id="a1", metadata={"team": "x"})
    assert record.lifecycle_state is S.INITIALIZING
    result = await agents.transition("a1", "ready", reason="booted")
    assert result.version == 2
    stored = await agents.get_agent("a1")
    assert stored is not None
    assert stored.lifecycle_state is S.READY
    assert stored.version == 2
    assert stored.metadata == {"team": "x"}
    ready, _ = await agents.list_agents(state="ready")
    assert [r.agent_id for r in ready] == ["a1"]
    assert (await agents.list_agents(state="initializing"))[0] == []
    trail = await zen.events.audit_trail("a1")
    assert [(e.type, e.data.get("to")) for e in trail] == [
        ("agent_created", "initializing"),
        ("state_changed", "ready"),
    ]
    assert trail[1].data == {
        "from": "initializing",
        "to": "ready",
        "version": 2,
        "reason": "booted",
    }
    assert trail[1].id == result.event_id


async def test_expected_version_lets_exactly_one_of_50_writers_win(zen: Zen) -> None:
    await zen.agents.create_agent("w", agent_id="contended")
    await zen.agents.transition("contended", "ready")  # version 2

    async def writer(i: int) -> str:
        target = S.RUNNING if i % 2 else S.PAUSED
        try:
            await zen.agents.transition("contended", target, expected_version=2)
        except ConflictError:
            return "conflict"
        return "won"

    outcomes = await asyncio.gather(*(writer(i) for i in range(50)))
    assert outcomes.count("won") == 1
    assert outcomes.count("conflict") == 49
    stored = await zen.agents.get_agent("contended")
    assert stored is not None
    assert stored.version == 3


CONTENDER = textwrap.dedent(
    """
    import asyncio, sys
    from zen_async import ConflictError, Settings, open_zen

    async def main() -> None:
        settings = Settings(_env_file=None, redis_url=sys.argv[1], redis_embedded="false")
        wins = 0
        async with open_zen(settings) as zen:
            for version in range(2, 2 + int(sys.argv[2])):
                target = "paused" if version % 2 == 0 else "ready"
                try:
                    await zen.agents.transition("shared", target, expected_version=version)
                    wins += 1
                except ConflictError:
                    pass
        print(wins, flush=True)

    asyncio.run(main())
    """
)


async def zen_events_for(target: Target, agent_id: str) -> AsyncIterator[Event]:
    async with open_zen(target.settings()) as zen:
        async for event in zen.events.replay(agent_id=agent_id):
            if event.type == "state_changed" and event.data["version"] > 2:
                yield event


async def test_two_processes_never_lose_an_update(standalone: Target, tmp_path: Path) -> None:
    rounds = 200
    async with open_zen(standalone.settings()) as zen:
        await zen.agents.create_agent("w", agent_id="shared")
        await zen.agents.transition("shared", "ready")  # version 2
        script = tmp_path / "contender.py"
        script.write_text(CONTENDER)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            standalone.url,
            str(rounds),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        my_wins = 0
        for version in range(2, 2 + rounds):
            target = S.PAUSED if version % 2 == 0 else S.READY  # ready at even versions
            try:
                await zen.agents.transition("shared", target, expected_version=version)
                my_wins += 1
            except ConflictError:
                pass
        out, _ = await child.communicate()
        child_wins = int(out.decode().split()[-1])  # its last line (logs may precede it)
        stored = await zen.agents.get_agent("shared")
    assert stored is not None
    # Every version was won by exactly one writer: the count of wins is the version delta,
    # and the shard stream holds exactly one state_changed per win.
    assert my_wins + child_wins == stored.version - 2
    changes = [e async for e in zen_events_for(standalone, "shared")]
    assert len(changes) == my_wins + child_wins


async def test_random_transitions_leave_one_event_each_in_order(zen: Zen) -> None:
    rng = random.Random(7)
    ids = [f"r{i}" for i in range(10)]
    await zen.agents.create_agents([AgentSpec(agent_type="rand", agent_id=i) for i in ids])
    done: dict[str, list[str]] = {i: [] for i in ids}
    for _ in range(300):
        agent_id = rng.choice(ids)
        target = rng.choice(list(S))
        try:
            result = await zen.agents.transition(agent_id, target)
        except InvalidTransitionError:
            continue
        done[agent_id].append(result.event_id)
    for agent_id in ids:
        stream = zen.events.agent_stream(agent_id).name
        changes = [
            e.id
            async for e in zen.events.replay(stream, agent_id=agent_id)
            if e.type == "state_changed"
        ]
        assert changes == done[agent_id]


async def test_replaying_an_agent_reproduces_its_state_history(zen: Zen) -> None:
    await zen.agents.create_agent("hist", agent_id="h1")
    for target in (S.READY, S.RUNNING, S.PAUSED, S.RUNNING, S.READY, S.TERMINATING):
        await zen.agents.transition("h1", target)
    state = None
    history = []
    async for event in zen.events.replay(agent_id="h1"):
        if event.type in ("agent_created", "state_changed"):
            state = event.data["to"]
            history.append(state)
    stored = await zen.agents.get_agent("h1")
    assert stored is not None
    assert history == [
        "initializing",
        "ready",
        "running",
        "paused",
        "running",
        "ready",
        "terminating",
    ]
    assert state == stored.lifecycle_state.value


async def test_wait_for_state_is_woken_by_another_instance(target: Target) -> None:
    async with open_zen(target.settings()) as watcher, open_zen(target.settings()) as actor:
        await actor.agents.create_agent("svc", agent_id="waited")
        waiting = asyncio.create_task(
            watcher.agents.wait_for_state("waited", ["running"], timeout=20)
        )
        await actor.agents.transition("waited", "ready")
        await actor.agents.transition("waited", "running")
        assert await waiting is S.RUNNING
        # Already there: returns at once.
        assert await watcher.agents.wait_for_state("waited", ["running"], timeout=5) is S.RUNNING
        with pytest.raises(TimeoutError):
            await watcher.agents.wait_for_state("waited", ["terminated"], timeout=0.3)
        # A tenant view shares the background tasks; its waits listen for themselves.
        view, other = watcher.for_tenant("acme"), actor.for_tenant("acme")
        await other.agents.create_agent("svc", agent_id="waited")
        waiting = asyncio.create_task(view.agents.wait_for_state("waited", ["ready"], timeout=20))
        await other.agents.transition("waited", "ready")
        assert await waiting is S.READY


async def test_missed_heartbeats_are_reaped_once_and_ports_released(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        fast = [
            AgentStateManager(
                zen.redis, zen.events, ports=zen.ports, lease_ttl=0.2, release_grace=0.0
            )
            for _ in range(2)
        ]
        ids = [f"lost{i}" for i in range(20)]
        await fast[0].create_agents([AgentSpec(agent_type="lossy", agent_id=i) for i in ids])
        await fast[0].create_agent("lossy", agent_id="alive")
        for agent_id in ids[:5]:
            await fast[0].transition(agent_id, "ready")
        ports = [await zen.ports.allocate_port(i) for i in ids[:3]]
        async with asyncio.timeout(10):
            while (await zen.agents.count_by_state())[S.ERROR] < len(ids):
                await fast[0].heartbeat("alive")
                results = await asyncio.gather(fast[0].reap(), fast[1].reap())
                reaped = [a for r in results for a in r]
                assert len(reaped) == len(set(reaped)), "two reapers never double-handle"
        await fast[0].reap()  # the grace period is over: ports go back
        for agent_id in ids:
            trail = await zen.events.audit_trail(agent_id)
            lost = [e for e in trail if e.data.get("reason") == "heartbeat_lost"]
            assert len(lost) == 1
        alive = await zen.agents.get_agent("alive")
        assert alive is not None
        assert alive.lifecycle_state is S.INITIALIZING
        for agent_id in ids[:3]:
            assert await zen.ports.leases(agent_id) == []
        again = [await zen.ports.allocate_port(f"new{i}") for i in range(3)]
        assert sorted(again) == sorted(ports)  # the released ports are handed out again


async def test_heartbeat_records_gauges_and_renews(zen: Zen) -> None:
    await zen.agents.create_agent("hb", agent_id="beating")
    expiry = await zen.agents.heartbeat("beating", memory_mb=512.5, cpu_percent=12.5, connections=3)
    assert expiry is not None
    record = await zen.agents.get_agent("beating")
    assert record is not None
    assert (
        record.performance.memory_mb,
        record.performance.cpu_percent,
        record.performance.connections,
    ) == (512.5, 12.5, 3)
    with pytest.raises(NotFoundError):
        await zen.agents.heartbeat("nobody")


async def test_indexes_pagination_counts_and_availability(zen: Zen) -> None:
    agents = zen.agents
    specs = [
        AgentSpec(agent_type="coder" if i % 2 else "tester", agent_id=f"p{i:03d}")
        for i in range(60)
    ]
    await agents.create_agents(specs)
    results = await agents.transition_many([(f"p{i:03d}", "ready", None) for i in range(30)])
    assert not any(isinstance(r, ZenError) for r in results)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await agents.list_agents(limit=7, cursor=cursor)
        seen.extend(r.agent_id for r in page)
        if cursor is None:
            break
    assert sorted(seen) == sorted(s.agent_id for s in specs if s.agent_id)
    counts = await agents.count_by_state()
    assert counts[S.READY] == 30
    assert counts[S.INITIALIZING] == 30
    assert await agents.count_active() == 60
    available = await agents.get_available_agents("coder")
    assert sorted(a.agent_id for a in available) == [f"p{i:03d}" for i in range(1, 30, 2)]
    status = await zen.redis.check_health()
    assert status["active_agents"] == 60


async def test_update_merges_and_delete_cleans_up(zen: Zen) -> None:
    agents = zen.agents
    await agents.create_agent("u", agent_id="upd", metadata={"a": 1})
    updated = await agents.update_agent("upd", metadata={"a": 2}, current_task_id="task-9")
    assert updated.version == 2
    stored = await agents.get_agent("upd")
    assert stored is not None
    assert (stored.metadata, stored.current_task_id, stored.version) == ({"a": 2}, "task-9", 2)
    with pytest.raises(ConflictError, match="at version 2, expected 1"):
        await agents.update_agent("upd", expected_version=1, metadata={})
    port = await zen.ports.allocate_port("upd")
    assert await agents.delete_agent("upd") is True
    assert await agents.get_agent("upd") is None
    assert await agents.delete_agent("upd") is False
    assert (await agents.list_agents())[0] == []
    assert await zen.ports.leases("upd") == []
    assert await zen.ports.allocate_port("someone") == port
    trail = [e.type for e in await zen.events.audit_trail("upd")]
    assert trail[0] == "agent_created"
    assert trail[-1] == "agent_deleted"
    assert trail.index("port_released") > trail.index("port_allocated")


async def test_bad_ids_states_and_types_are_validation_errors(zen: Zen) -> None:
    agents = zen.agents
    with pytest.raises(ValidationError, match="agent id"):
        await agents.create_agent("ok", agent_id="has space")
    with pytest.raises(ValidationError, match="agent id"):
        await agents.get_agent("x" * 200)
    with pytest.raises(ValidationError, match="agent type"):
        await agents.create_agent("Bad Type")
    await agents.create_agent("ok", agent_id="fine")
    with pytest.raises(ValidationError, match="unknown lifecycle state"):
        await agents.transition("fine", "sleeping")
    with pytest.raises(NotFoundError):
        await agents.transition("ghost", "ready")
    with pytest.raises(ConflictError, match="already exists"):
        await agents.create_agent("ok", agent_id="fine")
    assert [r.agent_id for r in (await agents.list_agents())[0]] == ["fine"]


async def test_a_thousand_agents_through_full_lifecycles(target: Target) -> None:
    async with open_zen(target.settings()) as zen:
        agents = zen.agents
        ids = [f"fleet-{i:04d}" for i in range(1000)]
        await agents.create_agents([AgentSpec(agent_type="fleet", agent_id=i) for i in ids])
        for state in (S.READY, S.RUNNING, S.READY, S.TERMINATING, S.TERMINATED):
            results = await agents.transition_many([(i, state, None) for i in ids])
            assert not any(isinstance(r, ZenError) for r in results)
            beats = await agents.heartbeats(ids, memory_mb=100.0)
            assert not any(isinstance(b, ZenError) for b in beats)
        counts = await agents.count_by_state()
        assert counts[S.TERMINATED] == 1000
        assert sum(counts.values()) == 1000
        records = await agents.get_agents(ids)
        assert all(r is not None and r.version == 6 for r in records)


# --- bulk paths ---------------------------------------------------------------------------------


async def test_bulk_read_records_equal_fully_validated_ones(zen: Zen) -> None:
    agents = zen.agents
    specs = [
        AgentSpec(
            agent_type="rich",
            agent_id=f"rich-{i}",
            capabilities=AgentCapabilities(
                supported_operations=["plan", "code"][: i % 3],
                max_concurrent_tasks=1 + i,
                port_range=(4000 + i, 4100 + i) if i % 2 else None,
            ),
            metadata={"i": i, "tags": ["a", "b"], "nested": {"x": [1, 2.5, None]}},
            host=f"host-{i}" if i % 2 else None,
            pid=1000 + i if i % 3 else None,
        )
        for i in range(6)
    ]
    created = await agents.create_agents(specs)
    await agents.update_agent(
        "rich-1",
        current_task_id="task-1",
        allocated_resources={"gpu": 1},
        performance=AgentPerformance(tasks_completed=3, total_processing_time=4.5),
    )
    await agents.heartbeat("rich-2", memory_mb=256.5, cpu_percent=7.5, connections=4)
    await agents.transition("rich-3", "ready")
    stored = await agents.get_agents([s.agent_id or "" for s in specs])
    for record in [*created, *stored]:
        assert record is not None
        # the fast construction skips validation: it must build what validation would
        assert AgentRecord.model_validate(record.model_dump()) == record
        assert (
            record.model_dump()
            == AgentRecord.model_validate_json(record.model_dump_json()).model_dump()
        )
    assert stored[0] == created[0], "a record reads back as create_agents returned it"
    one, two, three = stored[1], stored[2], stored[3]
    assert one is not None
    assert two is not None
    assert three is not None
    assert one.capabilities.port_range == (4001, 4101)
    assert (one.current_task_id, one.allocated_resources) == ("task-1", {"gpu": 1})
    assert (one.performance.tasks_completed, one.performance.total_processing_time) == (3, 4.5)
    assert (two.performance.memory_mb, two.performance.connections) == (256.5, 4)
    assert (three.lifecycle_state, three.version) == (S.READY, 2)
    copied = one.model_copy(update={"metadata": {"new": True}})
    assert copied.metadata == {"new": True}
    assert one.metadata["i"] == 1, "a copy leaves the record it was made from alone"


async def test_create_agents_names_the_first_existing_id_and_creates_the_others(
    zen: Zen,
) -> None:
    agents = zen.agents
    await agents.create_agent("dup", agent_id="dup-old")
    ids = ["dup-new", "dup-old", *[f"dup-{i}" for i in range(30)], "dup-new"]
    with pytest.raises(ConflictError, match="agent dup-old already exists"):
        await agents.create_agents([AgentSpec(agent_type="dup", agent_id=i) for i in ids])
    records = await agents.get_agents(ids)
    assert all(r is not None for r in records)
    trail = await zen.events.audit_trail("dup-new")
    assert [e.type for e in trail] == ["agent_created"], "a repeated id is created once"
    counts = await agents.count_by_state(agent_type="dup")
    assert counts[S.INITIALIZING] == 32


async def test_transition_many_keeps_order_and_reports_each_refusal_in_place(
    target: Target,
) -> None:
    # A batch size of 3 splits one shard's agents over several calls: their order must hold.
    async with open_zen(target.settings(redis_pipeline_batch_size=3)) as zen:
        agents = zen.agents
        ids = [f"order-{i}" for i in range(20)]
        await agents.create_agents([AgentSpec(agent_type="order", agent_id=i) for i in ids])
        moves: list[tuple[str, LifecycleState | str, int | None]] = []
        for agent_id in ids:
            moves += [(agent_id, "ready", 1), (agent_id, "running", None), (agent_id, "paused", 3)]
        moves += [
            ("order-0", "initializing", None),  # paused -> initializing: refused
            ("order-1", "ready", 1),  # stale expected version
            ("order-missing", "ready", None),
        ]
        results = await agents.transition_many(moves, reason="bulk")
        done = [r for r in results[:60] if isinstance(r, TransitionResult)]
        assert len(done) == 60
        for n, agent_id in enumerate(ids):
            steps = results[3 * n : 3 * n + 3]
            assert [(r.agent_id, r.version) for r in steps if isinstance(r, TransitionResult)] == [
                (agent_id, 2),
                (agent_id, 3),
                (agent_id, 4),
            ]
        invalid, conflict, missing = results[60:]
        assert isinstance(invalid, InvalidTransitionError)
        assert "cannot go from paused to initializing" in str(invalid)
        assert isinstance(conflict, ConflictError)
        assert "order-1 is at version 4, expected 1" in str(conflict)
        assert isinstance(missing, NotFoundError)
        records = await agents.get_agents(ids)
        assert all(
            r is not None and (r.lifecycle_state, r.version) == (S.PAUSED, 4) for r in records
        )
        for agent_id in ids[:3]:
            trail = await zen.events.audit_trail(agent_id)
            assert [e.data.get("to") for e in trail] == [
                "initializing",
                "ready",
                "running",
                "paused",
            ]
            assert all(e.data.get("reason") == "bulk" for e in trail[1:])
        assert (await agents.count_by_state(agent_type="order"))[S.PAUSED] == 20


async def test_a_bulk_call_sends_its_hints_as_one_message_and_wakes_waiters(
    target: Target,
) -> None:
    async with open_zen(target.settings()) as watcher, open_zen(target.settings()) as actor:
        ids = [f"woken-{i}" for i in range(40)]
        await actor.agents.create_agents([AgentSpec(agent_type="w", agent_id=i) for i in ids])
        waits = [
            asyncio.create_task(watcher.agents.wait_for_state(i, ["ready"], timeout=20))
            for i in ids
        ]
        async with actor.redis.subscribe(actor.events.agent_channel) as hints:
            results = await actor.agents.transition_many([(i, "ready", None) for i in ids])
            seen: list[dict[str, object]] = []
            messages = 0
            async with asyncio.timeout(10):
                async for item in hints:
                    if isinstance(item, Message):
                        decoded = orjson.loads(item.data)  # one hint, or a list of several
                        batch = decoded if isinstance(decoded, list) else [decoded]
                        # (on Cluster, hints of the creation may arrive after subscribing)
                        changes = [h for h in batch if h["type"] == "state_changed"]
                        seen += changes
                        messages += bool(changes)
                    if len(seen) == len(ids):
                        break
        shards = {agent_shard(i, actor.agents.shards) for i in ids}
        assert messages == len(shards), "one message per call (a shard's agents), not per agent"
        events = {r.agent_id: r.event_id for r in results if isinstance(r, TransitionResult)}
        assert sorted((h["agent"], h["id"]) for h in seen) == sorted(events.items())
        assert {(h["type"], h["to"], h["version"]) for h in seen} == {("state_changed", "ready", 2)}
        assert await asyncio.gather(*waits) == [S.READY] * len(ids)


async def test_heartbeats_report_each_agent_and_renew_its_port_leases(zen: Zen) -> None:
    short = PortAllocator(zen.redis, host="hb-a", lease_ttl=5.0)
    long = PortAllocator(zen.redis, host="hb-a", lease_ttl=600.0)
    agents = AgentStateManager(zen.redis, zen.events, ports=long)
    ids = [f"hb-{i}" for i in range(12)]
    await agents.create_agents([AgentSpec(agent_type="hb", agent_id=i) for i in ids])
    for target_state in (S.READY, S.TERMINATING, S.TERMINATED):
        await agents.transition("hb-0", target_state)
    before = {}
    for agent_id in ids[1:6]:
        await short.allocate(agent_id)
        await short.allocate(agent_id, host="hb-b")
        before[agent_id] = {
            (lease.host, lease.port): lease for lease in await short.leases(agent_id)
        }
    results = await agents.heartbeats([*ids, "hb-missing"], memory_mb=64.0)
    assert results[0] is None, "a terminated agent has no lease"
    assert all(isinstance(r, datetime) for r in results[1:12])
    assert isinstance(results[12], NotFoundError)
    for agent_id, leases in before.items():
        after = await short.leases(agent_id)
        assert len(after) == 2
        for lease in after:
            # renewed by the heartbeat with the long allocator's TTL
            assert lease.expires_at > leases[(lease.host, lease.port)].expires_at
    record = await agents.get_agent("hb-7")
    assert record is not None
    assert record.performance.memory_mb == 64.0


def test_shards_of_the_bulk_paths_match_the_event_envelope() -> None:
    ids = [f"agent-{i}" for i in range(500)] + ["x", "a:b", "Z.9_-"]
    for shards in (1, 3, 16, 1024):
        assert [shard_of(i, shards) for i in ids] == [agent_shard(i, shards) for i in ids]
    chunks = shard_chunks(ids, 16, 7)
    assert sorted(p for _, positions in chunks for p in positions) == list(range(len(ids)))
    for shard, positions in chunks:
        assert len(positions) <= 7
        assert positions == sorted(positions)
        assert all(agent_shard(ids[p], 16) == shard for p in positions)


# --- records that cannot be decoded -----------------------------------------------------------
def agent_key(zen: Zen, agent_id: str) -> str:
    """The hash of an agent, as the state manager names it (to write one by hand)."""
    tag = shard_tag(agent_shard(agent_id, zen.agents.shards))
    return zen.redis.keyspace("state").key(tag, "agent", agent_id)


_CAPABILITIES = AgentCapabilities().model_dump(mode="json")
_PERFORMANCE = AgentPerformance().model_dump(mode="json")
UNDECODABLE: dict[str, tuple[str, bytes]] = {
    # hash field written by hand (or by another version) -> its value
    "extra-capability": ("doc", b'{"capabilities": {"x": 1}}'),
    "null-timeout": (
        "doc",
        orjson.dumps({"capabilities": _CAPABILITIES | {"timeout_seconds": None}}),
    ),
    "null-memory": ("doc", orjson.dumps({"performance": _PERFORMANCE | {"memory_mb": None}})),
    "text-resources": ("doc", b'{"allocated_resources": "zzz"}'),
    "list-metadata": ("doc", b'{"metadata": [1, 2]}'),
    "number-task": ("doc", b'{"current_task_id": 5}'),
    "not-json": ("doc", b"{not json"),
    "not-object": ("doc", b"[]"),
    "nan-gauge": ("mem", b"nan"),
    "text-connections": ("conns", b"many"),
    "unknown-state": ("state", b"sleeping"),
    "text-version": ("version", b"v2"),
}


async def test_a_record_that_cannot_be_decoded_breaks_only_itself(zen: Zen) -> None:
    """Invariant: one bad stored record (another version's, or written by hand) never breaks
    reads of the tenant's other agents: lists skip it and count it, and reading it by id
    raises a typed error naming it."""
    agents = zen.agents
    good = ["good-1", "good-2", "good-3"]
    ids = [*good, *UNDECODABLE]
    await agents.create_agents([AgentSpec(agent_type="coder", agent_id=i) for i in ids])
    results = await agents.transition_many([(i, S.READY, None) for i in ids])
    assert not any(isinstance(r, ZenError) for r in results)
    ks = zen.redis.keyspace("state")
    for agent_id, (field, value) in UNDECODABLE.items():
        await ks.execute("HSET", agent_key(zen, agent_id), field, value)

    for agent_id in UNDECODABLE:
        with pytest.raises(
            BackendError, match=f"agent '{agent_id}' is stored but cannot be decoded"
        ):
            await agents.get_agent(agent_id)
    with pytest.raises(BackendError, match="cannot be decoded") as info:
        await agents.get_agents([*good, *UNDECODABLE])
    assert f"and {len(UNDECODABLE) - 1} more" in str(info.value)
    assert [r.agent_id for r in await agents.get_agents(good) if r is not None] == good

    with capture_logs() as logs:
        page = await agents.list_agents_page()
    assert sorted(a.agent_id for a in page.agents) == good
    assert (page.skipped, page.next_cursor) == (len(UNDECODABLE), None)
    warned = [e["error"] for e in logs if e["event"] == "agent_record_undecodable"]
    assert len(warned) == len(UNDECODABLE)
    assert all(any(f"'{i}'" in w for w in warned) for i in UNDECODABLE)

    records, cursor = await agents.list_agents(state="ready")  # the two-item shape stays
    assert (sorted(r.agent_id for r in records), cursor) == (good, None)
    seen: list[str] = []
    skipped, cursor = 0, None
    while True:
        page = await agents.list_agents_page(limit=4, cursor=cursor)
        seen += [a.agent_id for a in page.agents]
        skipped += page.skipped
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert (sorted(seen), skipped) == (good, len(UNDECODABLE))
    available = await agents.get_available_agents("coder")
    assert sorted(a.agent_id for a in available) == good

    assert await agents.delete_agent("not-json")  # the way out: delete it, create it anew
    await agents.create_agent("coder", agent_id="not-json")
    assert (await agents.get_agent("not-json")) is not None


async def test_reads_skip_validating_known_documents_yet_hand_out_records_of_their_own(
    zen: Zen,
) -> None:
    """Invariant: a document validated by an earlier read is not validated again, but every
    read gets instances of its own (a caller changing a record in place changes no other
    read's), and a document that does not validate is never remembered: it fails every
    read, also after the valid one it replaced was read."""
    agents = zen.agents
    capabilities = AgentCapabilities(supported_operations=["code", "review"])
    await agents.create_agents(
        [AgentSpec(agent_type="coder", agent_id=i, capabilities=capabilities) for i in "ab"]
    )
    first = await agents.get_agent("a")
    assert first is not None
    first.capabilities.supported_operations.append("tampered")
    for agent_id in ("a", "b"):
        again = await agents.get_agent(agent_id)
        assert again is not None
        assert again.capabilities == capabilities, "an earlier reader's change leaked"
    both = await agents.get_agents(["a", "b"])
    assert [r.capabilities for r in both if r is not None] == [capabilities] * 2
    bad = orjson.dumps({"capabilities": _CAPABILITIES | {"max_concurrent_tasks": 0}})
    await zen.redis.keyspace("state").execute("HSET", agent_key(zen, "b"), "doc", bad)
    for _ in range(2):
        with pytest.raises(BackendError, match="agent 'b' is stored but cannot be decoded"):
            await agents.get_agent("b")
    page = await agents.list_agents_page()
    assert ([a.agent_id for a in page.agents], page.skipped) == (["a"], 1)


async def test_updates_are_validated_as_the_model_validates(zen: Zen) -> None:
    """Invariant: update_agent stores only what the model accepts (model_copy does not
    validate): a bad field is refused, naming it, and the stored record still decodes."""
    agents = zen.agents
    await agents.create_agent("coder", agent_id="upd-v", metadata={"a": 1})
    bad: list[tuple[dict[str, Any], str]] = [
        ({"capabilities": {"x": 1}}, "capabilities"),
        ({"capabilities": {"timeout_seconds": float("inf")}}, "timeout_seconds"),
        ({"capabilities": {"max_concurrent_tasks": 0}}, "max_concurrent_tasks"),
        ({"allocated_resources": "zzz"}, "allocated_resources"),
        ({"allocated_resources": {"gpu": float("nan")}}, "allocated_resources.gpu"),
        ({"performance": {"memory_mb": float("nan")}}, "memory_mb"),
        ({"performance": {"tasks_completed": "many"}}, "tasks_completed"),
        ({"current_task_id": 5}, "current_task_id"),
        ({"metadata": {"n": float("-inf")}}, "metadata.n"),
    ]
    for changes, field in bad:
        with pytest.raises(ValidationError, match=re.escape(field)):
            await agents.update_agent("upd-v", **changes)
    record = await agents.get_agent("upd-v")
    assert record is not None
    assert (record.version, record.metadata) == (1, {"a": 1})
    updated = await agents.update_agent(
        "upd-v",
        capabilities={"timeout_seconds": 5, "port_range": [4000, 4010]},  # type: ignore[arg-type]
        allocated_resources={"gpu": 1},
    )
    assert updated.capabilities == AgentCapabilities(timeout_seconds=5.0, port_range=(4000, 4010))
    stored = await agents.get_agent("upd-v")
    assert stored is not None
    assert (stored.capabilities, stored.allocated_resources, stored.version) == (
        updated.capabilities,
        {"gpu": 1},
        2,
    )
