"""Agent tasks on real servers: priority and FIFO claims, exactly-once claiming under
concurrency (also from a second process), the status table, port leases taken by a claim and
released by its end, the timeout sweep, the message stream, index-backed pagination and
input validation."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from zen_async import (
    BackendError,
    CapacityError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
    Zen,
    open_zen,
)
from zen_async.agents._shards import shard_of
from zen_async.agents.ports import PortAllocator
from zen_async.agents.tasks import (
    TASK_TRANSITIONS,
    AgentTask,
    AgentTaskManager,
    TaskSpec,
    TaskStatus,
)
from zen_async.store import Arg
from zen_async.testing.deployments import Deployments, Target
from zen_async.testing.waiting import wait_for

S = TaskStatus
Call = tuple[list[str], list[Arg]]
ROOT = Path(__file__).resolve().parents[1]


def tasks_of(zen: Zen, **options: Any) -> AgentTaskManager:
    return AgentTaskManager(
        zen.redis, ports=zen.ports, events=zen.events, tenant=zen.tenant, **options
    )


@pytest.fixture
async def szen(standalone: Target) -> AsyncIterator[Zen]:
    """An open Zen on the Redis standalone server."""
    async with open_zen(standalone.settings()) as opened:
        yield opened


async def claim_all(tasks: AgentTaskManager, agent_type: str, agent_id: str) -> list[AgentTask]:
    claimed = []
    while (task := await tasks.claim_next(agent_type, agent_id)) is not None:
        claimed.append(task)
    return claimed


async def leased_ports(zen: Zen, agent_id: str) -> list[int]:
    return [lease.port for lease in await zen.ports.leases(agent_id)]


async def task_events(zen: Zen, agent_id: str) -> list[tuple[str, str]]:
    return [
        (e.type, e.data["task_id"])
        for e in await zen.events.audit_trail(agent_id)
        if e.type.startswith("task_")
    ]


# --- every topology -----------------------------------------------------------------------


async def test_claims_take_the_highest_priority_first_and_fifo_within_one(zen: Zen) -> None:
    tasks = tasks_of(zen)
    priorities = {"a": 0, "b": 5, "c": 0, "d": 5, "e": -1, "f": 10, "g": 0}
    for task_id, priority in priorities.items():
        await tasks.create_task("coder", {"n": task_id}, priority=priority, task_id=task_id)
    await tasks.create_task("tester", {}, priority=100, task_id="other-type")
    claimed = await claim_all(tasks, "coder", "w1")
    assert [t.task_id for t in claimed] == ["f", "b", "d", "a", "c", "g", "e"]
    for task in claimed:
        assert (task.status, task.agent_id, task.attempts) == (S.STARTING, "w1", 1)
        assert task.request == {"n": task.task_id}
        assert task.deadline is not None
        assert task.deadline - task.updated_at <= timedelta(seconds=300)
    assert await tasks.claim_next("coder", "w1") is None, "every task is claimed once"
    other = await tasks.claim_next("tester", "w2")
    assert other is not None
    assert other.task_id == "other-type", "queues are per agent type"


async def test_a_claim_leases_a_port_and_finishing_releases_it(zen: Zen) -> None:
    tasks = tasks_of(zen)
    ends: dict[str, Callable[[str], Awaitable[AgentTask]]] = {
        "done": lambda i: tasks.complete(i, {"ok": True}),
        "failed": lambda i: tasks.fail(i, "boom"),
        "cancelled": tasks.cancel,
        "timed-out": lambda i: tasks.update_status(i, "timeout"),
    }
    for task_id in ends:
        await tasks.create_task("porter", {}, task_id=task_id)
    claimed = {}
    for task_id in ends:
        task = await tasks.claim_next("porter", f"agent-{task_id}", process_id=4242)
        assert task is not None
        assert task.task_id == task_id
        assert task.agent_port is not None
        assert task.process_id == 4242
        assert await leased_ports(zen, f"agent-{task_id}") == [task.agent_port]
        claimed[task_id] = task
    assert len({t.agent_port for t in claimed.values()}) == 4, "one port per claimed task"
    for task_id, end in ends.items():
        if task_id == "done":
            await tasks.update_status(task_id, "running")
        finished = await end(task_id)
        assert finished.agent_port == claimed[task_id].agent_port, "the record keeps the port"
        assert await leased_ports(zen, f"agent-{task_id}") == [], f"{task_id} released its port"
    assert (await zen.ports.stats()).in_use == 0
    done = await tasks.get_task("done")
    assert done is not None
    assert (done.status, done.result, done.error) == (S.COMPLETED, {"ok": True}, None)
    failed = await tasks.get_task("failed")
    assert failed is not None
    assert (failed.status, failed.error) == (S.FAILED, "boom")
    assert await task_events(zen, "agent-done") == [
        ("task_starting", "done"),
        ("task_running", "done"),
        ("task_completed", "done"),
    ]
    trail = [e.type for e in await zen.events.audit_trail("agent-failed")]
    assert trail.index("port_released") < trail.index("task_failed")


async def test_four_claimers_take_each_of_600_tasks_exactly_once(zen: Zen) -> None:
    tasks = tasks_of(zen)
    count = 600
    specs = [
        TaskSpec(agent_type="bulk", request={"i": i}, priority=i % 3, task_id=f"b{i:04d}")
        for i in range(count)
    ]
    await tasks.create_tasks(specs)
    results = await asyncio.gather(*(claim_all(tasks, "bulk", f"claimer-{k}") for k in range(4)))
    ids = [t.task_id for claimed in results for t in claimed]
    assert len(ids) == count, "no task was claimed twice"
    assert set(ids) == {s.task_id for s in specs}, "every task was claimed"
    assert all(claimed for claimed in results), "the four claimers all took part"
    for claimed in results:  # each claimer saw the priorities in order
        priorities = [t.priority for t in claimed]
        assert priorities == sorted(priorities, reverse=True)
    counts = await tasks.count_by_status()
    assert (counts[S.STARTING], counts[S.PENDING]) == (count, 0)


async def test_expired_tasks_time_out_once_under_two_sweepers(zen: Zen) -> None:
    # A tenant of its own: the facade's background sweeper (default tenant) stays out of it.
    zen = zen.for_tenant("sweeps")
    first, second = tasks_of(zen), tasks_of(zen)
    for i in range(6):
        await first.create_task("slow", {}, task_id=f"late{i}", timeout_seconds=0.2)
    await first.create_task("slow", {}, task_id="in-time", timeout_seconds=300, priority=-1)
    claimed = await claim_all(first, "slow", "sleeper")
    await first.update_status("late0", "running")
    await first.create_task("slow", {}, task_id="unclaimed", timeout_seconds=0.2)
    seen: list[str] = []
    async with asyncio.timeout(10):
        while len(seen) < 6:
            swept = await asyncio.gather(first.sweep(), second.sweep())
            seen.extend(i for ids in swept for i in ids)
            await asyncio.sleep(0.02)
    assert sorted(seen) == [f"late{i}" for i in range(6)], "each task timed out exactly once"
    assert await first.sweep() == []
    for i in range(6):
        task = await first.get_task(f"late{i}")
        assert task is not None
        assert task.status is S.TIMEOUT
        assert task.error is not None
        assert "0.2 s" in task.error
    in_time = next(t for t in claimed if t.task_id == "in-time")
    assert await leased_ports(zen, "sleeper") == [in_time.agent_port]
    unclaimed = await first.get_task("unclaimed")
    assert unclaimed is not None
    assert unclaimed.status is S.PENDING, "the deadline starts with the claim"
    events = await task_events(zen, "sleeper")
    assert sorted(i for t, i in events if t == "task_timeout") == [f"late{i}" for i in range(6)]
    with pytest.raises(InvalidTransitionError):
        await first.complete("late0", "too late")


async def test_message_stream_append_read_and_bound(zen: Zen) -> None:
    tasks = tasks_of(zen, max_messages=5)
    await tasks.create_task("chat", {}, task_id="talk")
    ids = [await tasks.append_message("talk", "user", f"m{i}") for i in range(3)]
    messages = await tasks.read_messages("talk")
    assert [(m.message_id, m.role, m.content) for m in messages] == [
        (ids[i], "user", f"m{i}") for i in range(3)
    ]
    after = await tasks.read_messages("talk", after=ids[0], limit=1)
    assert [m.content for m in after] == ["m1"]
    for i in range(3, 8):
        await tasks.append_message("talk", "assistant", f"m{i}")
    assert [m.content for m in await tasks.read_messages("talk")] == [f"m{i}" for i in range(3, 8)]
    with pytest.raises(NotFoundError):
        await tasks.append_message("nobody", "user", "hi")
    with pytest.raises(NotFoundError):
        await tasks.read_messages("nobody")


async def test_list_pages_through_every_type_from_the_indexes(zen: Zen) -> None:
    tasks = tasks_of(zen)
    made = []
    for kind in ("alpha", "beta", "gamma"):
        for i in range(9):
            made.append(await tasks.create_task(kind, {}, task_id=f"{kind}-{i}"))
    await tasks.cancel("beta-3")
    await tasks.cancel("gamma-8")
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await tasks.list_tasks(limit=4, cursor=cursor)
        assert len(page) <= 4
        seen.extend(t.task_id for t in page)
        if cursor is None:
            break
    assert seen == [t.task_id for t in made], "by type, then by creation"
    cancelled, cursor = await tasks.list_tasks("cancelled")
    assert ([t.task_id for t in cancelled], cursor) == (["beta-3", "gamma-8"], None)
    betas, cursor = await tasks.list_tasks("pending", agent_type="beta", limit=100)
    assert [t.task_id for t in betas] == [f"beta-{i}" for i in range(9) if i != 3]
    assert cursor is None


# --- standalone -----------------------------------------------------------------------------

PATH_TO: dict[TaskStatus, list[str]] = {
    S.PENDING: [],
    S.STARTING: ["claim"],
    S.RUNNING: ["claim", "running"],
    S.COMPLETED: ["claim", "running", "completed"],
    S.FAILED: ["claim", "failed"],
    S.TIMEOUT: ["claim", "timeout"],
    S.CANCELLED: ["cancelled"],
}


async def test_the_whole_status_table(szen: Zen) -> None:
    tasks = tasks_of(szen)
    for n, (start, target) in enumerate(itertools.product(S, S)):
        kind, task_id = f"table{n}", f"t-{start.value}-{target.value}"
        await tasks.create_task(kind, {}, task_id=task_id)
        for step in PATH_TO[start]:
            if step == "claim":
                assert await tasks.claim_next(kind, "prober") is not None
            else:
                await tasks.update_status(task_id, step)
        before = await tasks.get_task(task_id)
        assert before is not None
        assert before.status is start
        if (start, target) == (S.PENDING, S.STARTING):
            with pytest.raises(ValidationError, match="claim_next"):
                await tasks.update_status(task_id, target)
            assert await tasks.get_task(task_id) == before
            continue
        if target in TASK_TRANSITIONS[start]:
            after = await tasks.update_status(task_id, target)
            assert after.status is target
            assert after.version == before.version + 1
            continue
        with pytest.raises(InvalidTransitionError) as info:
            await tasks.update_status(task_id, target)
        message = str(info.value)
        assert f"from {start.value} to {target.value}" in message
        for allowed in TASK_TRANSITIONS[start]:
            assert allowed.value in message
        if not TASK_TRANSITIONS[start]:
            assert "nothing (final)" in message
        assert await tasks.get_task(task_id) == before, "a refused transition changes nothing"
    counts = await tasks.count_by_status()
    holding = counts[S.STARTING] + counts[S.RUNNING]
    assert (await szen.ports.stats()).in_use == holding, "only tasks that still run hold a port"


async def test_retry_queues_again_at_the_back_and_counts_the_next_claim(szen: Zen) -> None:
    tasks = tasks_of(szen)
    await tasks.create_task("flaky", {}, task_id="first")
    await tasks.create_task("flaky", {}, task_id="second")
    claimed = await tasks.claim_next("flaky", "w")
    assert claimed is not None
    failed = await tasks.fail("first", "crashed")
    retried = await tasks.retry("first", expected_version=failed.version)
    assert (retried.status, retried.attempts, retried.error, retried.agent_id) == (
        S.PENDING,
        1,
        None,
        None,
    )
    assert [t.task_id for t in await claim_all(tasks, "flaky", "w")] == ["second", "first"]
    again = await tasks.get_task("first")
    assert again is not None
    assert again.attempts == 2


async def test_no_free_port_puts_the_task_back_at_its_place(standalone: Target) -> None:
    settings = standalone.settings(redis_port_range_start=20000, redis_port_range_end=20001)
    async with open_zen(settings) as zen:
        tasks = tasks_of(zen)
        for task_id in ("one", "two", "three"):
            await tasks.create_task("narrow", {}, task_id=task_id)
        first = await tasks.claim_next("narrow", "w")
        assert first is not None
        assert first.agent_port == 20000
        with pytest.raises(CapacityError):
            await tasks.claim_next("narrow", "w")
        two = await tasks.get_task("two")
        assert two is not None
        assert (two.status, two.attempts, two.agent_id, two.deadline) == (S.PENDING, 0, None, None)
        await tasks.update_status("one", "running")
        await tasks.complete("one", None)
        second = await tasks.claim_next("narrow", "w")
        assert second is not None
        assert (second.task_id, second.agent_port, second.attempts) == ("two", 20000, 1)


@pytest.fixture
def cluster(deployments: Deployments) -> Target:
    """The shared Redis 7.0 Cluster, flushed: where a claim takes several steps."""
    found = Target("redis", "cluster", deployments.get("redis", "cluster"))
    found.flush()
    return found


async def test_a_task_cancelled_while_its_port_is_leased_is_skipped(cluster: Target) -> None:
    """On Cluster the lease is a step of its own between the claim and its record: a task
    cancelled in that window is skipped and the lease taken for it released."""
    victims = ["victim"]

    async def cancel_first_victim(event_type: str, agent_id: str, data: dict[str, Any]) -> None:
        if event_type == "port_allocated" and victims:
            await tasks.cancel(victims.pop())

    async with open_zen(cluster.settings()) as zen:
        ports = PortAllocator(zen.redis, on_event=cancel_first_victim)
        tasks = AgentTaskManager(zen.redis, ports=ports, events=zen.events)
        for start in (False, True):
            victims.append("victim")
            await tasks.create_task("racy", {}, task_id="victim", priority=1)
            await tasks.create_task("racy", {}, task_id="next")
            claimed = await tasks.claim_next("racy", "w", start=start)
            assert claimed is not None
            assert claimed.task_id == "next"
            assert claimed.status is (S.RUNNING if start else S.STARTING)
            victim = await tasks.get_task("victim")
            assert victim is not None
            assert victim.status is S.CANCELLED
            assert [lease.port for lease in await ports.leases("w")] == [claimed.agent_port]
            await tasks.cancel("next")
            for task_id in ("victim", "next"):
                await tasks.delete_task(task_id)
            victims.clear()


async def test_a_one_step_claim_shows_no_half_done_state(szen: Zen) -> None:
    """Standalone and Sentinel: by the time the port lease exists, the task already holds
    it, with its start, and the events are in its agent's audit trail (one script did it
    all), never a claimed task without its port. A cancel right after the claim releases
    the port as for any running task."""
    seen: list[tuple[S, int | None, int, list[str]]] = []

    async def look(event_type: str, agent_id: str, data: dict[str, Any]) -> None:
        if event_type == "port_allocated":
            task = await tasks.get_task("first")
            assert task is not None
            trail = [e.type for e in await szen.events.audit_trail(agent_id)]
            seen.append((task.status, task.agent_port, data["port"], trail))
            await tasks.cancel("first")

    ports = PortAllocator(szen.redis, on_event=look)
    tasks = AgentTaskManager(szen.redis, ports=ports, events=szen.events)
    await tasks.create_task("atomic", {}, task_id="first")
    claimed = await tasks.claim_next("atomic", "w", start=True)
    assert claimed is not None
    assert (claimed.task_id, claimed.status) == ("first", S.RUNNING)
    assert seen == [
        (S.RUNNING, claimed.agent_port, claimed.agent_port, ["task_starting", "task_running"])
    ]
    assert await ports.leases("w") == [], "the cancel released the claim's port"


async def test_claiming_with_start_leases_records_and_starts_on_every_topology(zen: Zen) -> None:
    tasks = tasks_of(zen)
    created = await tasks.create_task("starter", {"job": 1}, task_id="go", timeout_seconds=60)
    claimed = await tasks.claim_next("starter", "w", process_id=7, start=True)
    assert claimed is not None
    assert (claimed.task_id, claimed.status, claimed.agent_id, claimed.process_id) == (
        "go",
        S.RUNNING,
        "w",
        7,
    )
    assert (claimed.attempts, claimed.version) == (1, created.version + 2)
    assert claimed.agent_port is not None
    assert claimed.deadline is not None
    assert timedelta(0) < claimed.deadline - claimed.updated_at <= timedelta(seconds=60)
    assert await tasks.get_task("go") == claimed
    assert await leased_ports(zen, "w") == [claimed.agent_port]
    assert await zen.ports.renew_agent("w") == 1, "the agent's heartbeat finds the lease"
    counts = await tasks.count_by_status(agent_type="starter")
    assert (counts[S.PENDING], counts[S.STARTING], counts[S.RUNNING]) == (0, 0, 1)
    trail = await zen.events.audit_trail("w")
    task_trail = [(e.type, e.data) for e in trail if e.type.startswith("task_")]
    assert task_trail == [
        (
            "task_starting",
            {
                "task_id": "go",
                "agent_type": "starter",
                "from": "pending",
                "status": "starting",
                "attempts": 1,
                "version": claimed.version - 1,
                "port": claimed.agent_port,
            },
        ),
        (
            "task_running",
            {
                "task_id": "go",
                "agent_type": "starter",
                "from": "starting",
                "status": "running",
                "attempts": 1,
                "version": claimed.version,
                "port": claimed.agent_port,
            },
        ),
    ]
    assert "port_allocated" in [e.type for e in trail]
    with pytest.raises(InvalidTransitionError):
        await tasks.update_status("go", "running")
    done = await tasks.complete("go", {"ok": True})
    assert (done.status, done.version) == (S.COMPLETED, claimed.version + 1)
    assert await leased_ports(zen, "w") == [], "completing released the port"
    assert await tasks.claim_next("starter", "w", start=True) is None


async def test_no_free_port_leaves_a_one_step_claim_undone(standalone: Target) -> None:
    """The capacity check comes before any write: the task stays exactly as it was, and
    the claimer is not noted on the host."""
    settings = standalone.settings(
        redis_port_range_start=20000,
        redis_port_range_end=20001,
        redis_alert_port_failures_per_minute=0,
    )
    async with open_zen(settings) as zen:
        tasks = tasks_of(zen)
        for task_id in ("one", "two"):
            await tasks.create_task("narrow", {}, task_id=task_id)
        first = await tasks.claim_next("narrow", "w1", start=True)
        assert first is not None
        before = await tasks.get_task("two")
        with pytest.raises(CapacityError, match="20000-20001"):
            await tasks.claim_next("narrow", "w2", start=True)
        assert await tasks.get_task("two") == before, "not claimed, not bumped, not touched"
        assert await leased_ports(zen, "w2") == []
        hosts_key = zen.ports.hosts_prefix(shard_of("w2", zen.settings.redis_agent_shards))
        state = zen.redis.keyspace("state")
        assert await state.execute("EXISTS", hosts_key + "w2:hosts") == 0
        assert [e.type for e in await zen.events.audit_trail("w2")] == []
        status = await zen.redis.check_health()
        assert "port_allocation_failures" in [a["name"] for a in status["alerts"]]
        await tasks.complete("one", None)
        second = await tasks.claim_next("narrow", "w2", start=True)
        assert second is not None
        assert (second.task_id, second.agent_port, second.status) == ("two", 20000, S.RUNNING)


@pytest.mark.parametrize("layout", ["databases", "prefixed"])
async def test_a_one_step_claim_works_in_either_layout(standalone: Target, layout: str) -> None:
    """The task keys and the host's port keys are in two DBs (databases: the script SELECTs
    the state DB) or in one (prefixed)."""
    async with open_zen(standalone.settings(redis_db_layout=layout)) as zen:
        tasks = tasks_of(zen)
        assert (zen.redis.keyspace("tasks").db == zen.redis.keyspace("state").db) is (
            layout == "prefixed"
        )
        await tasks.create_task("either", {}, task_id="e1")
        claimed = await tasks.claim_next("either", "w", start=True)
        assert claimed is not None
        assert claimed.status is S.RUNNING
        assert await leased_ports(zen, "w") == [claimed.agent_port]
        assert [e.type for e in await zen.events.audit_trail("w")] == [
            "task_starting",
            "task_running",
            "port_allocated",
        ]
        await tasks.complete("e1", None)
        assert await leased_ports(zen, "w") == []


async def test_a_resent_one_step_claim_leases_once(szen: Zen) -> None:
    """task_claim_lease is resent after a lost reply: the resend returns the same task and
    leases no second port."""
    tasks = tasks_of(szen)
    await tasks.create_task("again", {}, task_id="a1")
    await tasks.create_task("again", {}, task_id="a2")
    ks = szen.redis.keyspace("tasks")
    prefix = ks.key("{q:again}") + ":"
    step = await szen.ports.lease_step("w")
    same_db = ks.db == step.db
    call: Call = (
        [prefix + "queue", prefix + "op:resend", *step.keys],
        [
            prefix,
            "w",
            "",
            60_000,
            *(["", ""] if same_db else [ks.db, step.db]),
            *step.args,
            "1",
            "",
            0,
            "",
            "",
            ",",
        ],
    )
    first = await ks.run_script("task_claim_lease", *call)
    again = await ks.run_script("task_claim_lease", *call)
    assert (first[0], again[0]) == (b"claimed", b"replayed")
    assert again[3] == first[3], "the resend returns the task the first send claimed"
    assert (await szen.ports.stats()).in_use == 1, "one lease"
    a2 = await tasks.get_task("a2")
    assert a2 is not None
    assert a2.status is S.PENDING


async def test_one_step_events_are_redacted_as_published_ones(standalone: Target) -> None:
    async with open_zen(standalone.settings(redis_redact_fields="port,token")) as zen:
        tasks = tasks_of(zen)
        await tasks.create_task("secretive", {}, task_id="s1")
        claimed = await tasks.claim_next("secretive", "w", start=True)
        assert claimed is not None
        assert claimed.agent_port is not None, "the task itself keeps its port"
        events = [e for e in await zen.events.audit_trail("w") if e.type.startswith("task_")]
        assert [e.data["port"] for e in events] == ["[redacted]", "[redacted]"]
        assert [e.data["task_id"] for e in events] == ["s1", "s1"]


async def test_a_stored_task_that_does_not_decode_is_a_backend_error(szen: Zen) -> None:
    """Reads build tasks without running the model's validation again, yet refuse what it
    would refuse: a hash written by hand or by another version is a typed error naming
    the task, never a task with wrong types."""
    tasks = tasks_of(szen)
    ks = szen.redis.keyspace("tasks")
    key = ks.key("{q:broken}") + ":task:"
    for task_id, field, value in (
        ("bad-status", "status", "sleeping"),
        ("bad-request", "req", b"\x01[1, 2]"),
        ("bad-codec", "req", b"\x09{}"),
        ("bad-number", "att", "many"),
        ("bad-time", "created", "yesterday"),
    ):
        await tasks.create_task("broken", {}, task_id=task_id)
        await ks.execute("HSET", key + task_id, field, value)
        with pytest.raises(BackendError, match=f"task '{task_id}' is stored but cannot be"):
            await tasks.get_task(task_id)
        with pytest.raises(BackendError, match=task_id):
            await tasks.list_tasks(agent_type="broken")
        assert await tasks.delete_task(task_id)
    await tasks.create_task("broken", {"fine": True}, task_id="fine")
    fine = await tasks.get_task("fine")
    assert fine is not None
    assert fine == AgentTask.model_validate(fine.model_dump()), "as validation builds it"


async def test_one_of_many_concurrent_writers_wins(szen: Zen) -> None:
    tasks = tasks_of(szen)
    await tasks.create_task("race", {}, task_id="contended")
    claimed = await tasks.claim_next("race", "w")
    assert claimed is not None
    running = await tasks.update_status("contended", "running")

    async def writer(i: int) -> str:
        try:
            if i % 3 == 0:
                await tasks.complete("contended", i, expected_version=running.version)
            elif i % 3 == 1:
                await tasks.fail("contended", f"e{i}", expected_version=running.version)
            else:
                await tasks.cancel("contended")
        except (ConflictError, InvalidTransitionError):
            return "lost"
        return "won"

    outcomes = await asyncio.gather(*(writer(i) for i in range(30)))
    assert outcomes.count("won") == 1
    final = await tasks.get_task("contended")
    assert final is not None
    assert final.version == running.version + 1
    assert await leased_ports(szen, "w") == []
    with pytest.raises(ConflictError, match=f"at version {final.version}, expected 1"):
        await tasks.cancel("contended", expected_version=1)


async def test_ids_are_unique_across_types_until_deleted(szen: Zen) -> None:
    tasks = tasks_of(szen)
    await tasks.create_task("one", {"v": 1}, task_id="dup")
    with pytest.raises(ConflictError, match="already exists"):
        await tasks.create_task("one", {"v": 2}, task_id="dup")
    with pytest.raises(ConflictError, match="agent type 'one'"):
        await tasks.create_task("two", {"v": 3}, task_id="dup")
    await tasks.append_message("dup", "user", "hello")
    stored = await tasks.get_task("dup")
    assert stored is not None
    assert stored.request == {"v": 1}
    claimed = await tasks.claim_next("one", "w")
    assert claimed is not None
    assert await tasks.delete_task("dup") is True
    assert await leased_ports(szen, "w") == [], "a deleted running task gives its port back"
    assert await tasks.get_task("dup") is None
    assert await tasks.delete_task("dup") is False
    with pytest.raises(NotFoundError):
        await tasks.read_messages("dup")
    recreated = await tasks.create_task("two", {"v": 4}, task_id="dup")
    assert recreated.agent_type == "two"
    assert await tasks.read_messages("dup") == []
    assert await tasks.claim_next("one", "w") is None


async def test_a_lease_left_by_a_crashed_finisher_is_released_by_the_sweeper(
    szen: Zen,
) -> None:
    szen = szen.for_tenant("crashes")
    tasks = tasks_of(szen, release_retry=0)
    await tasks.create_task("crashy", {}, task_id="orphan")
    claimed = await tasks.claim_next("crashy", "w")
    assert claimed is not None
    # The finishing script ran, then its caller died before releasing the lease.
    ks = szen.redis.keyspace("tasks", tenant="crashes")
    prefix = ks.key("{q:crashy}") + ":"
    await ks.run_script(
        "task_transition",
        [prefix + "task:orphan"],
        [prefix, "orphan", "cancelled", ",pending,starting,running,", "", "op", "0", b"", "", 0],
    )
    assert await leased_ports(szen, "w") == [claimed.agent_port]
    assert await tasks.sweep() == []
    assert await leased_ports(szen, "w") == [], "the sweeper released the outbox lease"
    assert await ks.execute("ZCARD", prefix + "release") == 0


async def test_a_resent_script_call_applies_once(szen: Zen) -> None:
    """The scripts marked idempotent may be resent after a lost reply: the resend returns
    the first reply and changes nothing more."""
    tasks = tasks_of(szen)
    for task_id in ("r1", "r2"):
        await tasks.create_task("resend", {}, task_id=task_id)
    ks = szen.redis.keyspace("tasks")
    prefix = ks.key("{q:resend}") + ":"
    create: Call = ([prefix + "task:r3"], [prefix, "r3", "resend", "op-c", 0, 1000, b"\x01{}"])
    assert await ks.run_script("task_create", *create) == await ks.run_script(
        "task_create", *create
    )
    claim: Call = ([prefix + "queue", prefix + "op:c1"], [prefix, "w", "", 60_000])
    first = await ks.run_script("task_claim", *claim)
    assert await ks.run_script("task_claim", *claim) == first, "the resend claims nothing new"
    cancel: Call = (
        [prefix + "task:r1"],
        [prefix, "r1", "cancelled", ",pending,starting,running,", "", "op-t", "0", b"", "", 0],
    )
    assert await ks.run_script("task_transition", *cancel) == await ks.run_script(
        "task_transition", *cancel
    )
    counts = await tasks.count_by_status(agent_type="resend")
    assert (counts[S.PENDING], counts[S.CANCELLED]) == (2, 1)
    r1 = await tasks.get_task("r1")
    assert r1 is not None
    assert (r1.attempts, r1.version) == (1, 3), "one claim and one cancel, each applied once"


async def test_run_sweeps_in_the_background(szen: Zen) -> None:
    szen = szen.for_tenant("background")
    tasks = tasks_of(szen, sweep_interval=0.05)
    await tasks.create_task("bg", {}, task_id="quick", timeout_seconds=0.1)
    assert await tasks.claim_next("bg", "w") is not None
    runner = asyncio.create_task(tasks.run())
    try:

        async def timed_out_and_released() -> bool:
            task = await tasks.get_task("quick")
            done = task is not None and task.status is S.TIMEOUT
            return done and await leased_ports(szen, "w") == []

        await wait_for(timed_out_and_released, what="the background sweep timed the task out")
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_bad_input_is_a_validation_error_and_writes_nothing(szen: Zen) -> None:
    tasks = tasks_of(szen)
    bad_creates: list[tuple[dict[str, Any], str]] = [
        ({"agent_type": "Bad Type", "request": {}}, "agent type"),
        ({"agent_type": "ok", "request": {}, "task_id": "has space"}, "task id"),
        ({"agent_type": "ok", "request": {}, "task_id": "x" * 129}, "task id"),
        ({"agent_type": "ok", "request": [1, 2]}, "request"),
        ({"agent_type": "ok", "request": {"s": {1, 2}}}, "JSON-serialisable"),
        ({"agent_type": "ok", "request": {"big": "x" * 1_100_000}}, "at most 1048576"),
        ({"agent_type": "ok", "request": {}, "priority": True}, "priority"),
        ({"agent_type": "ok", "request": {}, "priority": 10**10}, "priority"),
        ({"agent_type": "ok", "request": {}, "timeout_seconds": 0}, "timeout_seconds"),
        ({"agent_type": "ok", "request": {}, "timeout_seconds": float("inf")}, "timeout"),
    ]
    for kwargs, words in bad_creates:
        with pytest.raises(ValidationError, match=words):
            await tasks.create_task(**kwargs)
    with pytest.raises(ValidationError, match="more than once"):
        await tasks.create_tasks([TaskSpec(agent_type="ok", task_id="same")] * 2)
    with pytest.raises(ValidationError, match="agent id"):
        await tasks.claim_next("ok", "bad agent")
    with pytest.raises(ValidationError, match="unknown task status"):
        await tasks.update_status("fine", "sleeping")
    with pytest.raises(ValidationError, match="cursor"):
        await tasks.list_tasks(cursor="nonsense")
    with pytest.raises(ValidationError, match="limit"):
        await tasks.list_tasks(limit=0)
    with pytest.raises(ValidationError, match="role"):
        await tasks.append_message("fine", "no spaces", "x")
    with pytest.raises(ValidationError, match="after"):
        await tasks.read_messages("fine", after="yesterday")
    assert await szen.redis.keyspace("tasks").execute("DBSIZE") == 0, "nothing was written"
    await tasks.create_task("ok", {}, task_id="fine")
    claimed = await tasks.claim_next("ok", "w")
    assert claimed is not None
    await tasks.update_status("fine", "running")
    with pytest.raises(ValidationError, match="JSON"):
        await tasks.complete("fine", object())
    with pytest.raises(ValidationError, match="error"):
        await tasks.fail("fine", "")
    after = await tasks.get_task("fine")
    assert after is not None
    assert (after.status, after.version) == (S.RUNNING, claimed.version + 1)


CLAIMER = """
import asyncio, sys
import orjson
from zen_async import Settings, open_zen
from zen_async.agents.tasks import AgentTaskManager
from zen_async.logs import configure_logging

async def main(url):
    configure_logging("warning")  # stderr: stdout carries the replies
    settings = Settings(_env_file=None, redis_url=url, redis_embedded="false")
    async with open_zen(settings) as zen:
        tasks = AgentTaskManager(zen.redis, ports=zen.ports, events=zen.events)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        ids = []
        while (task := await tasks.claim_next("bulk", "child")) is not None:
            ids.append(task.task_id)
        print(orjson.dumps(ids).decode(), flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_2000_tasks_claimed_exactly_once_by_four_claimers_in_two_processes(szen: Zen) -> None:
    tasks = tasks_of(szen)
    count = 2000
    await tasks.create_tasks(
        [TaskSpec(agent_type="bulk", request={"i": i}, task_id=f"t{i}") for i in range(count)]
    )
    url = szen.settings.redis_url
    assert url is not None
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLAIMER,
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        async with asyncio.timeout(60):
            assert await child.stdout.readline() == b"ready\n"
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            mine, theirs = await asyncio.gather(
                asyncio.gather(*(claim_all(tasks, "bulk", f"parent-{k}") for k in range(3))),
                child.stdout.readline(),
            )
            await child.communicate()
            assert child.returncode == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()
    ids = [t.task_id for claimed in mine for t in claimed] + orjson.loads(theirs)
    assert len(ids) == count, "no task was claimed twice"
    assert set(ids) == {f"t{i}" for i in range(count)}, "every task was claimed"
    assert orjson.loads(theirs), "the second process took part"
    assert all(mine), "every claimer in this process took part"
    assert (await szen.ports.stats()).in_use == count, "one port per claimed task"
