"""A Jepsen-style randomized outage checker for exactly-once degraded mode (issue 13).

Per seed, ``random.Random`` draws a fault schedule; two worker processes
(``_outage_worker.py``, each with its own REDIS_OUTAGE_JOURNAL file) run 4 clients each that
make colliding writes on a few shared entities (transitions and metadata updates of 4 agents,
turns of 2 threads, publishes on 1 stream, sets of 3 cache keys), every write under a
client-made op id, each logged to a ledger before and after it is made. While they run, the
schedule kills the server (-9, AOF ``always``) and restarts it, freezes it (SIGSTOP/SIGCONT),
kills every client connection (``CLIENT KILL TYPE normal``), and SIGKILLs a worker and
restarts it on its journal file (it replays what the dead one acknowledged). The Sentinel
variant (``REDIS_DURABILITY=replicated``: nothing is journaled, writes raise instead) kills the
master with -9 and freezes the replicas (unconfirmed writes). Once the workers have replayed
their journals, every entity is checked against the ledgers:

- every acknowledged write is applied exactly once, or (a journaled one) refused on replay
  and recorded once as a ``journal_write_refused`` event: never lost, never doubled;
- a write refused with a typed error, or whose error said it was not applied, is not applied;
  an unknown outcome (a timeout, a worker killed mid-call) is applied at most once;
- nothing is applied that no client asked for;
- order: a write acknowledged before another was invoked is applied before it, when the first
  was acknowledged online or both went through the same journal (same worker); so each
  client's writes are applied in its own order;
- agents: versions and states are contiguous (each ``state_changed`` continues the previous
  one), the final version is 1 + transitions + updates applied, the audit trail holds exactly
  the transitions applied (the op marker of each transition and each event agree), and the
  final metadata is the last update applied; cache keys hold a value some client wrote, not
  one its own later write replaced.

The fixed seeds (20 standalone, 3 Sentinel) run in CI (``slow``); ``ZEN_SOAK_SEEDS=500`` runs
seeds 1-500 instead (and 1-20 on Sentinel). The checker itself is tested on synthetic histories
at the end (no server). With ``WRITE_RELIABILITY_DOCS=1`` the summaries are written into
docs/reliability.md between the ``outage-checker`` markers.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread
import orjson
import pytest

from zen_async import AgentRecord, Event, LifecycleState, Settings, Zen, open_zen
from zen_async.degraded import OutageJournal
from zen_async.events.envelope import agent_shard, shard_tag
from zen_async.testing import Flavor, SentinelGroup, Standalone
from zen_async.testing.deployments import settings_for
from zen_async.testing.waiting import wait_for

ROOT: Final = Path(__file__).resolve().parents[2]
WORKER_MODULE: Final = "tests.faults._outage_worker"
AGENTS: Final = tuple(f"oc-a{i}" for i in range(4))
STREAM: Final = "checker"
REFUSALS_STREAM: Final = "outage_journal"
CACHE_KEYS: Final = ("oc-k0", "oc-k1", "oc-k2")
WORKERS: Final = 2
COROUTINES: Final = 4
THINK: Final = (0.01, 0.06)
"""Seconds a client waits between two operations (uniform): about 70 writes/s per worker,
enough to collide on every entity, few enough that the replay after the last fault is short."""
SETUP_REASON: Final = "setup"
ACKED: Final = frozenset({"ok-online", "ok-offline", "ok"})
DOCS: Final = ROOT / "docs" / "reliability.md"
ARTIFACTS: Final = ROOT / "build" / "outage-checker"
START_MARK: Final = "<!-- outage-checker:start -->"
END_MARK: Final = "<!-- outage-checker:end -->"
READY_DEADLINE: Final = 60.0
STALL: Final = 15.0
"""Seconds without progress after which a worker gives up waiting for its journal's replay
(a replayer that stopped: the server is back by then). Progress, not total time, so a slow
machine only makes it wait longer."""
EXIT_DEADLINE: Final = 180.0
"""How long a worker may take to replay its journal and exit once told to stop: a bound on a
hang, not a speed requirement."""


def _soak_seeds() -> int | None:
    """``ZEN_SOAK_SEEDS`` (tests/conftest.py leaves this one ``ZEN_*`` variable in place)."""
    value = os.environ.get("ZEN_SOAK_SEEDS")
    if not value:
        return None
    if not value.isdecimal() or int(value) < 1:
        raise ValueError(f"ZEN_SOAK_SEEDS={value!r}: expected a number of seeds, e.g. 500")
    return int(value)


SOAK: Final = _soak_seeds()
STANDALONE_SEEDS: Final = list(range(1, (SOAK or 20) + 1))
SENTINEL_SEEDS: Final = list(range(1, (max(3, math.ceil(SOAK / 25)) if SOAK else 3) + 1))


# --- the fault schedule ---------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of a schedule.

    Attributes:
        action: ``load`` (faults off), ``pause`` / ``kill9`` (the server, for ``seconds``),
            ``client_kill``, ``worker_kill`` (worker ``slot``, restarted ``seconds`` later),
            ``replicas_pause`` (Sentinel: both replicas frozen for ``seconds``),
            ``master_kill`` (Sentinel: -9, failover, restarted ``seconds`` after it).
        slot: a worker SIGKILLed (and restarted at once) ``at`` seconds into a server outage.
    """

    action: str
    seconds: float = 0.0
    slot: int | None = None
    at: float = 0.0

    def describe(self) -> str:
        if self.action == "load":
            return ""
        if self.action == "client_kill":
            return "CLIENT KILL"
        if self.action == "worker_kill":
            return f"worker{self.slot} kill -9 ({self.seconds:.1f}s)"
        text = {
            "pause": "SIGSTOP",
            "kill9": "kill -9",
            "replicas_pause": "replicas SIGSTOP",
            "master_kill": "master kill -9 +failover",
        }[self.action]
        text += f" {self.seconds:.1f}s"
        if self.slot is not None:
            text += f" +worker{self.slot} kill -9"
        return text


def describe(schedule: Sequence[Step]) -> str:
    return "; ".join(d for d in (s.describe() for s in schedule) if d)


def standalone_schedule(rng: random.Random) -> list[Step]:
    """About 3-6 s of faults between stretches of plain load; the first is a server outage."""
    steps = [Step("load", rng.uniform(0.4, 1.0))]
    budget, spent = rng.uniform(3.0, 5.5), 0.0
    while spent < budget:
        if len(steps) == 1:
            action = rng.choice(("pause", "kill9"))
        else:
            action = rng.choices(("pause", "kill9", "client_kill", "worker_kill"), (4, 3, 2, 2))[0]
        if action in ("pause", "kill9"):
            seconds = rng.uniform(0.2, 3.0) if action == "pause" else rng.uniform(0.2, 2.5)
            slot = rng.randrange(WORKERS) if rng.random() < 0.3 else None
            step = Step(action, seconds, slot=slot, at=rng.uniform(0.0, seconds))
        elif action == "worker_kill":
            step = Step(action, rng.uniform(0.0, 1.0), slot=rng.randrange(WORKERS))
        else:
            step = Step(action)
        gap = Step("load", rng.uniform(0.2, 1.2))
        steps += [step, gap]
        spent += step.seconds + gap.seconds
    return steps


def sentinel_schedule(rng: random.Random) -> list[Step]:
    """Load, maybe a CLIENT KILL and frozen replicas, then the master killed with -9."""
    steps = [Step("load", rng.uniform(1.0, 2.0))]
    if rng.random() < 0.5:
        steps += [Step("client_kill"), Step("load", rng.uniform(0.3, 1.0))]
    if rng.random() < 0.6:
        steps += [Step("replicas_pause", rng.uniform(0.3, 0.9)), Step("load", rng.uniform(0.3, 1))]
    steps.append(Step("master_kill", rng.uniform(0.5, 2.0)))
    if rng.random() < 0.5:
        steps.append(Step("worker_kill", rng.uniform(0.0, 1.0), slot=rng.randrange(WORKERS)))
    steps.append(Step("load", rng.uniform(1.0, 2.0)))
    return steps


# --- the workers ----------------------------------------------------------------------------
@dataclass
class WorkerProcess:
    """Worker ``slot``: its current incarnation, restarted on the same journal file."""

    slot: int
    config: Path
    run_dir: Path
    incarnation: int = 0
    kills: int = 0
    proc: asyncio.subprocess.Process | None = None

    @property
    def journal(self) -> Path:
        """Its REDIS_OUTAGE_JOURNAL (the worker module names it so)."""
        return self.run_dir / f"journal-{self.slot}"

    async def start(self) -> None:
        self.incarnation += 1
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_MODULE, str(self.config), str(self.slot),
            str(self.incarnation),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(READY_DEADLINE):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            line = b""
        if line != b"ready\n":
            await self.kill()
            raise AssertionError(f"worker {self.slot} did not start:\n{self.log_tail()}")

    async def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or an operator would."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            self.kills += 1
        await self._reap()

    async def stop(self) -> int | None:
        """SIGTERM: finish, replay the journal, exit. Returns the exit code (None: hung)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(EXIT_DEADLINE):
                await self._reap()
        except TimeoutError:
            await self.kill()
            return None
        return self.proc.returncode

    async def _reap(self) -> None:
        if self.proc is not None:
            await self.proc.communicate()  # reads stdout to its end, or wait() may not return

    def log_lines(self) -> list[str]:
        path = self.run_dir / f"worker-{self.slot}.{self.incarnation}.log"
        try:
            return path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return [f"(no log {path})"]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:])


async def client_kill(port: int) -> None:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    await anyio.run_process(
        [cli, "-h", "127.0.0.1", "-p", str(port), "CLIENT", "KILL", "TYPE", "normal"],
        check=False,
    )


async def run_standalone_step(step: Step, group: Standalone, workers: list[WorkerProcess]) -> None:
    server = group.server
    if step.action == "load":
        await anyio.sleep(step.seconds)
    elif step.action == "client_kill":
        await client_kill(server.port)
    elif step.action == "worker_kill":
        assert step.slot is not None
        await workers[step.slot].kill()
        await anyio.sleep(step.seconds)
        await workers[step.slot].start()
    else:
        began = time.monotonic()
        if step.action == "pause":
            server.pause()
        else:
            await anyio.to_thread.run_sync(server.kill)
        try:
            if step.slot is not None:  # a worker dies during the outage, its successor adopts
                await anyio.sleep(step.at)
                await workers[step.slot].kill()
                await workers[step.slot].start()
            await anyio.sleep(max(0.0, step.seconds - (time.monotonic() - began)))
        finally:
            if step.action == "pause":
                server.resume()
            else:
                await anyio.to_thread.run_sync(server.start)


async def run_sentinel_step(step: Step, group: SentinelGroup, workers: list[WorkerProcess]) -> None:
    if step.action == "load":
        await anyio.sleep(step.seconds)
    elif step.action == "client_kill":
        await client_kill(group.current_master().port)
    elif step.action == "worker_kill":
        assert step.slot is not None
        await workers[step.slot].kill()
        await anyio.sleep(step.seconds)
        await workers[step.slot].start()
    elif step.action == "replicas_pause":
        master = group.current_master()
        replicas = [s for s in group.servers if s is not master and s.is_running]
        for replica in replicas:
            replica.pause()
        try:
            await anyio.sleep(step.seconds)
        finally:
            for replica in replicas:
                replica.resume()
    else:
        old = group.current_master()
        await anyio.to_thread.run_sync(old.kill)
        await anyio.to_thread.run_sync(lambda: group.wait_for_new_master(old, timeout=60))
        await anyio.sleep(step.seconds)
        await anyio.to_thread.run_sync(old.start)  # rejoins as a replica of the new master


# --- what happened: ledgers and the server's state ------------------------------------------
@dataclass
class Op:
    """One write as the ledgers tell it."""

    op: str
    kind: str
    entity: str
    args: dict[str, Any]
    slot: int
    inc: int
    coro: int
    invoked: float
    completed: float | None = None
    outcome: str = "unknown"
    """An op invoked and never completed (its worker was killed mid-call) is unknown."""
    result: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def acked(self) -> bool:
        return self.outcome in ACKED

    def line(self, t0: float) -> str:
        done = "died" if self.completed is None else f"{self.completed - t0:7.3f}"
        errors = ",".join(
            f"{e['type']}{'(maybe)' if e.get('maybe') else ''}"
            + ("" if e.get("op_id") in (None, self.op) else f"[op_id={e.get('op_id')}]")
            for e in self.errors
        )
        return (
            f"{self.invoked - t0:7.3f}..{done} w{self.slot}.{self.inc} c{self.coro} {self.op} "
            f"{self.kind} {self.entity} {orjson.dumps(self.args).decode()} -> {self.outcome} "
            f"{orjson.dumps(self.result).decode() if self.result else ''}"
            + (f" errors={errors}" if errors else "")
        )


@dataclass
class Ledgers:
    ops: dict[str, Op]
    drained: list[dict[str, Any]]
    """The ``drained`` line of each incarnation that exited by itself."""


def read_ledgers(run_dir: Path) -> Ledgers:
    ops: dict[str, Op] = {}
    drained: list[dict[str, Any]] = []
    for path in sorted(run_dir.glob("ledger-*.jsonl")):
        for raw in path.read_bytes().splitlines():
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a line torn by a SIGKILL: that op stays invoked (or unknown)
            if rec["ev"] == "invoke":
                ops[rec["op"]] = Op(
                    rec["op"], rec["kind"], rec["entity"], rec["args"], rec["slot"], rec["inc"],
                    rec["coro"], rec["t"],
                )  # fmt: skip
            elif rec["ev"] == "complete":
                op = ops[rec["op"]]
                op.completed, op.outcome = rec["t"], rec["outcome"]
                op.result, op.errors = rec["result"], rec["errors"]
            elif rec["ev"] == "drained":
                drained.append(rec)
    return Ledgers(ops, drained)


@dataclass
class Observed:
    """The server's state once every journal is replayed."""

    trails: dict[str, list[Event]]
    records: dict[str, AgentRecord | None]
    markers: dict[str, bool]
    """Agent write op id → whether its op marker exists (recorded iff it was applied)."""
    turns: dict[str, list[str]]
    events: list[Event]
    refusals: list[Event]
    cache: dict[str, Any]


async def observe(zen: Zen, threads: Sequence[str], ops: Iterable[Op]) -> Observed:
    trails = {a: await zen.events.audit_trail(a, limit=1_000_000) for a in AGENTS}
    records = {a: await zen.agents.get_agent(a) for a in AGENTS}
    ks = zen.redis.keyspace("state")
    shards = zen.settings.redis_agent_shards
    agent_ops = [o for o in ops if o.kind in ("transition", "update")]
    found = await ks.batch(
        [
            ("EXISTS", ks.key(shard_tag(agent_shard(o.entity, shards)), "op", o.op))
            for o in agent_ops
        ]
    )
    turns: dict[str, list[str]] = {}
    for thread in threads:
        context = await zen.conversations.get_thread(thread)
        turns[thread] = [] if context is None else [t.content for t in context.turns]
    return Observed(
        trails=trails,
        records=records,
        markers={o.op: bool(n) for o, n in zip(agent_ops, found, strict=True)},
        turns=turns,
        events=[e async for e in zen.events.replay(STREAM)],
        refusals=[e async for e in zen.events.replay(REFUSALS_STREAM)],
        cache={key: await zen.cache.get(key) for key in CACHE_KEYS},
    )


# --- the check ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Violation:
    entity: str
    what: str
    """``lost``, ``doubled``, ``unrequested``, ``order``, ``version``, ``misreported``..."""
    detail: str
    ops: tuple[str, ...] = ()


@dataclass
class Summary:
    variant: str
    seed: int
    server: str
    schedule: str
    invoked: int = 0
    online: int = 0
    offline: int = 0
    cache_acked: int = 0
    refused: int = 0
    failed: int = 0
    refused_on_replay: int = 0
    unknown: int = 0
    unknown_applied: int = 0
    unknown_refused: int = 0
    unknown_not_applied: int = 0
    unknown_cache: int = 0
    worker_kills: int = 0
    lost: int = 0
    doubled: int = 0
    violations: int = 0
    seconds: float = 0.0
    phases: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Seconds: set-up and worker start, the schedule, stop and replay, the check."""
    offline_tail: float = 0.0
    """Seconds from the end of the last fault to the last write acknowledged offline: how
    long journaled writes kept new ones behind them (the breaker stays held)."""

    def text(self) -> str:
        return (
            f"[{self.variant} seed {self.seed} {self.server}] {self.schedule}\n"
            f"  ops {self.invoked}: acknowledged online {self.online}, offline {self.offline}, "
            f"cache {self.cache_acked}; refused {self.refused} (typed), {self.refused_on_replay} "
            f"on replay; failed {self.failed}; unknown {self.unknown} -> applied once "
            f"{self.unknown_applied}, refused on replay {self.unknown_refused}, not applied "
            f"{self.unknown_not_applied}, cache {self.unknown_cache}; worker kills "
            f"{self.worker_kills}\n"
            f"  lost {self.lost}, doubled {self.doubled}, violations {self.violations}; "
            f"{self.seconds:.1f}s (set-up {self.phases[0]:.1f}, faults {self.phases[1]:.1f}, "
            f"replay and exit {self.phases[2]:.1f}, check {self.phases[3]:.1f}); last offline "
            f"ack {self.offline_tail:.1f}s after the last fault"
        )


@dataclass
class Verdict:
    violations: list[Violation]
    summary: Summary
    server_history: dict[str, list[str]]
    """Per entity, what the server holds, one line per applied write or refusal."""


def agent_history(trail: Sequence[Event]) -> list[str]:
    lines = []
    for e in trail:
        data = e.data if isinstance(e.data, dict) else {}
        if e.type == "state_changed":
            lines.append(
                f"{e.id} state_changed {data.get('from')}->{data.get('to')} "
                f"v{data.get('version')} reason={data.get('reason')}"
            )
        else:
            lines.append(f"{e.id} {e.type} op_id={data.get('op_id')} {data.get('error', '')}")
    return lines


class Checker:
    """Checks what the server holds against the ledgers, entity by entity."""

    def __init__(self, ledgers: Ledgers, observed: Observed, summary: Summary) -> None:
        self.ops = ledgers.ops
        self.observed = observed
        self.summary = summary
        self.violations: list[Violation] = []
        self.applied: Counter[str] = Counter()
        """Op id → how many times the server holds it applied."""
        self.refused: Counter[str] = Counter()
        """Op id → its ``journal_write_refused`` events."""
        self.order: dict[str, list[str]] = {}
        """Per entity with a visible order, the op ids applied, in the server's order."""
        self.entries: dict[str, tuple[str, Any]] = {}
        """Op id → (entry id, version) of its event, to compare with an online ack."""
        self.history: dict[str, list[str]] = {}

    def violate(self, entity: str, what: str, detail: str, *op_ids: str) -> None:
        self.violations.append(Violation(entity, what, detail, op_ids))

    def run(self) -> Verdict:
        for agent in AGENTS:
            self.agent(agent)
        self.threads()
        self.stream()
        self.unrequested()
        for op in self.ops.values():
            self.outcome(op)
        for key in CACHE_KEYS:
            self.cache(key)
        for entity, applied in self.order.items():
            self.violations += order_violations(
                entity, [self.ops[o] for o in applied if o in self.ops]
            )
        summary = self.summary
        summary.lost = sum(v.what == "lost" for v in self.violations)
        summary.doubled = sum(v.what == "doubled" for v in self.violations)
        summary.violations = len(self.violations)
        return Verdict(self.violations, summary, self.history)

    def agent(self, agent: str) -> None:
        """The audit trail holds the transitions (reason = op id) and the refusals; updates
        are seen through their op markers, the final version and the final metadata."""
        trail = self.observed.trails[agent]
        self.history[agent] = agent_history(trail)
        changes = [e for e in trail if e.type == "state_changed"]
        self.order[agent] = []
        for e in trail:
            if e.type == "journal_write_refused":
                self.refused[str(e.data.get("op_id"))] += 1
        previous: dict[str, Any] | None = None
        for e in changes:
            data, reason = e.data, str(e.data.get("reason"))
            if reason != SETUP_REASON:
                self.order[agent].append(reason)
                self.applied[reason] += 1
                self.entries[reason] = (e.id, data.get("version"))
            if previous is not None and data.get("from") != previous.get("to"):
                self.violate(
                    agent,
                    "version",
                    f"{e.id} goes from {data.get('from')}, the change before went to "
                    f"{previous.get('to')}",
                    reason,
                )
            if previous is not None and data.get("version", 0) <= previous.get("version", 0):
                self.violate(
                    agent,
                    "version",
                    f"{e.id} has version {data.get('version')} after {previous.get('version')}",
                    reason,
                )
            previous = data
        updates = [
            o.op
            for o in self.ops.values()
            if o.kind == "update" and o.entity == agent and self.observed.markers.get(o.op)
        ]
        self.applied.update(updates)
        record = self.observed.records[agent]
        if record is None:
            self.violate(agent, "lost", "the agent is gone")
            return
        expected = 1 + len(changes) + len(updates)
        if record.version > expected:
            self.violate(
                agent,
                "doubled",
                f"final version {record.version} > 1 + {len(changes)} transitions + "
                f"{len(updates)} updates applied: a write applied without its op marker",
            )
        elif record.version < expected:
            self.violate(
                agent,
                "version",
                f"final version {record.version} < 1 + {len(changes)} transitions + "
                f"{len(updates)} updates applied",
            )
        if changes and record.lifecycle_state.value != changes[-1].data.get("to"):
            self.violate(
                agent,
                "version",
                f"final state {record.lifecycle_state.value}, the trail ends in "
                f"{changes[-1].data.get('to')}",
            )
        self.last_update(agent, record, updates)

    def last_update(self, agent: str, record: AgentRecord, updates: list[str]) -> None:
        """The final metadata is the update applied last: no other update applied was
        invoked after it was acknowledged (see :func:`superseded`)."""
        last = record.metadata.get("op")
        if not updates:
            if record.metadata:
                self.violate(agent, "unrequested", f"metadata {record.metadata}, no update")
            return
        if last not in updates:
            self.violate(
                agent,
                "lost",
                f"final metadata {record.metadata} is from none of the {len(updates)} "
                "updates applied",
                *updates[-3:],
            )
            return
        final = self.ops[str(last)]
        for op in updates:
            if op != last and superseded(final, self.ops[op]):
                self.violate(
                    agent,
                    "order",
                    f"final metadata is {last}'s, but {op}, invoked after {last} was "
                    "acknowledged, was applied too",
                    str(last),
                    op,
                )

    def threads(self) -> None:
        for thread, contents in self.observed.turns.items():
            self.order[thread] = [c.removeprefix("op ") for c in contents]
            self.history[thread] = [f"turn {i + 1}: {c}" for i, c in enumerate(contents)]
            self.applied.update(self.order[thread])

    def stream(self) -> None:
        """The checker's stream (each event's data names its op) and the refusals of writes
        that concern no agent (``outage_journal``)."""
        events = self.observed.events
        self.order[STREAM] = [str(e.data.get("op")) for e in events]
        self.history[STREAM] = [f"{e.id} op={e.data.get('op')}" for e in events]
        for e in events:
            self.entries[str(e.data.get("op"))] = (e.id, None)
        self.applied.update(self.order[STREAM])
        self.history[REFUSALS_STREAM] = []
        for e in self.observed.refusals:
            self.refused[str(e.data.get("op_id"))] += 1
            self.history[REFUSALS_STREAM].append(
                f"{e.id} {e.type} op_id={e.data.get('op_id')} {e.data.get('error', '')}"
            )

    def unrequested(self) -> None:
        """Nothing applied (or refused) that no client asked for."""
        for entity, applied in self.order.items():
            for op in applied:
                if op not in self.ops:
                    what = "reaped" if op == "heartbeat_lost" else "unrequested"
                    self.violate(entity, what, f"{op!r} was applied; no client invoked it", op)
        for op in self.refused:
            if op not in self.ops:
                self.violate(REFUSALS_STREAM, "unrequested", f"{op!r} refused, never invoked", op)

    def outcome(self, op: Op) -> None:
        """What each outcome promises: acknowledged = applied once (or, journaled, refused
        on replay once); refused or failed = not applied; unknown = at most once."""
        s = self.summary
        s.invoked += 1
        if op.kind == "cache":  # sets are idempotent: seen only through the final values
            s.cache_acked += op.acked
            s.unknown_cache += op.outcome == "unknown"
            s.failed += op.outcome == "failed"
            return
        n, r = self.applied[op.op], self.refused[op.op]
        s.online += op.outcome == "ok-online"
        s.offline += op.outcome == "ok-offline"
        s.refused += op.outcome == "refused"
        s.failed += op.outcome == "failed"
        s.refused_on_replay += r
        self.consistency(op, n, r)
        if op.outcome == "ok-online":
            if n == 0:
                self.violate(op.entity, "lost", f"{op.op} acknowledged online, not applied", op.op)
            if r:
                self.violate(
                    op.entity, "misreported", f"{op.op} acked online, refused on replay", op.op
                )
            self.acknowledgement(op)
        elif op.outcome == "ok-offline":
            if n + r == 0:
                self.violate(
                    op.entity,
                    "lost",
                    f"{op.op} acknowledged offline (journaled), neither applied nor refused",
                    op.op,
                )
        elif op.outcome in ("refused", "failed"):
            if n or r:
                said = op.errors[-1]["type"] if op.errors else "?"
                self.violate(
                    op.entity,
                    "misreported",
                    f"{op.op} raised {said} ({op.outcome}: not applied), but it was "
                    + ("applied" if n else "journaled and refused on replay"),
                    op.op,
                )
        else:
            s.unknown += 1
            s.unknown_applied += n == 1 and r == 0
            s.unknown_refused += r == 1 and n == 0
            s.unknown_not_applied += n + r == 0

    def consistency(self, op: Op, n: int, r: int) -> None:
        """Whatever the outcome: applied at most once, refused at most once, not both; the
        op marker of a transition exactly when its event is there; errors name this op."""
        for e in op.errors:
            if e.get("untyped"):
                self.violate(
                    op.entity,
                    "untyped",
                    f"{op.op}: {e['message']} escaped the library (not a ZenError)",
                    op.op,
                )
            if e.get("op_id") not in (None, op.op):
                self.violate(
                    op.entity, "misreported", f"{op.op}: an error named {e.get('op_id')}", op.op
                )
        if n > 1:
            self.violate(op.entity, "doubled", f"{op.op} ({op.outcome}) applied {n} times", op.op)
        if r > 1:
            self.violate(op.entity, "doubled", f"{op.op} refused {r} times on replay", op.op)
        if n and r:
            self.violate(op.entity, "doubled", f"{op.op} applied and refused on replay", op.op)
        marker = self.observed.markers.get(op.op)
        if op.kind == "transition" and bool(marker) != bool(n):
            self.violate(
                op.entity, "version", f"{op.op}: op marker {marker}, {n} state_changed", op.op
            )

    def acknowledgement(self, op: Op) -> None:
        """An online acknowledgement names what the server holds: the entry id and version
        of a transition's event, the entry id of a publish."""
        found = self.entries.get(op.op)
        if found is None or op.kind not in ("transition", "publish"):
            return
        entry_id, version = found
        if op.result.get("event_id") != entry_id:
            self.violate(
                op.entity,
                "doubled",
                f"{op.op} acknowledged as {op.result.get('event_id')}, its event is {entry_id}",
                op.op,
            )
        if op.kind == "transition" and op.result.get("version") != version:
            self.violate(
                op.entity,
                "version",
                f"{op.op} acknowledged at version {op.result.get('version')}, its event "
                f"says {version}",
                op.op,
            )

    def cache(self, key: str) -> None:
        """A value some client wrote, not one that client's own later set replaced."""
        value = self.observed.cache[key]
        writes = [o for o in self.ops.values() if o.kind == "cache" and o.entity == key]
        self.history[key] = [f"final value {value!r}"]
        if value is None:
            acked = [o.op for o in writes if o.acked]
            if acked:
                self.violate(key, "lost", f"no value after {len(acked)} acked sets", *acked[-3:])
            return
        op_id = value.get("op") if isinstance(value, dict) else None
        final = self.ops.get(str(op_id))
        if final is None or final.entity != key:
            self.violate(key, "unrequested", f"value {value!r} was written by no set of {key}")
            return
        if final.outcome in ("refused", "failed"):
            self.violate(key, "misreported", f"holds the value of {op_id}, which failed", final.op)
        for other in writes:
            if other.acked and other.op != final.op and superseded(final, other):
                self.violate(
                    key,
                    "order",
                    f"holds {final.op}'s value, but {other.op} was set after it was acknowledged",
                    final.op,
                    other.op,
                )


def offline_tail(ledgers: Ledgers, last_fault_end: float) -> float:
    offline = [o.completed or 0.0 for o in ledgers.ops.values() if o.outcome == "ok-offline"]
    return max(0.0, max(offline, default=last_fault_end) - last_fault_end)


def superseded(first: Op, later: Op) -> bool:
    """Whether ``later`` must be applied after ``first``: ``first`` was acknowledged before
    ``later`` was invoked, online (the server had it), or through the same journal (a
    worker's journal is replayed in order, and its later writes wait behind it)."""
    if first.completed is None or first.completed >= later.invoked:
        return False
    if first.outcome == "ok-online":
        return True
    return first.acked and first.slot == later.slot


def order_violations(entity: str, applied: Sequence[Op]) -> list[Violation]:
    """Ops applied before one that was acknowledged before they were invoked. One backwards
    scan, keeping the earliest acknowledgement among later positions (online ones, for
    everybody; any, per worker)."""
    found: list[Violation] = []
    earliest_online: Op | None = None
    earliest_by_slot: dict[int, Op] = {}
    for op in reversed(applied):
        for later in (earliest_online, earliest_by_slot.get(op.slot)):
            if later is not None and superseded(later, op):
                found.append(
                    Violation(
                        entity,
                        "order",
                        f"{op.op} (invoked at {op.invoked:.3f}) was applied before {later.op}, "
                        f"acknowledged ({later.outcome}) at {later.completed:.3f}",
                        (op.op, later.op),
                    )
                )
                break
        if op.completed is None or not op.acked:
            continue
        if op.outcome == "ok-online" and (
            earliest_online is None or op.completed < (earliest_online.completed or math.inf)
        ):
            earliest_online = op
        known = earliest_by_slot.get(op.slot)
        if known is None or op.completed < (known.completed or math.inf):
            earliest_by_slot[op.slot] = op
    return found


def minimal_history(
    verdict: Verdict, ops: dict[str, Op], t0: float, run_dir: Path, *, context: int = 6
) -> str:
    """The ledger lines and server history around each failing op, per failing entity (the
    whole of both is written to ``history-<entity>.txt`` in ``run_dir``)."""
    out: list[str] = []
    by_entity: dict[str, list[Violation]] = defaultdict(list)
    for v in verdict.violations:
        by_entity[v.entity].append(v)
    for entity, found in by_entity.items():
        mine = sorted((o for o in ops.values() if o.entity == entity), key=lambda o: o.invoked)
        focus = {op for v in found for op in v.ops}
        lines = [o.line(t0) for o in mine]
        server = verdict.server_history.get(entity, [])
        full = run_dir / f"history-{entity}.txt"
        full.write_text(
            "\n".join(["# ledger", *lines, "", "# server", *server]) + "\n", encoding="utf-8"
        )
        out.append(f"== {entity}: {len(found)} violation(s) (whole history: {full.name})")
        out += [f"  ! {v.what}: {v.detail}" for v in found[:10]]
        out.append("  ledger (t from the first op; w<worker>.<incarnation> c<client>):")
        out += window(lines, [i for i, o in enumerate(mine) if o.op in focus], context)
        out.append("  server:")
        named = [i for i, s in enumerate(server) if focus & set(s.replace("=", " ").split())]
        out += window(server, named, context)
    report = "\n".join(out)
    (run_dir / "violations.txt").write_text(report + "\n", encoding="utf-8")
    return report


def window(lines: Sequence[str], marks: Sequence[int], context: int) -> list[str]:
    keep = sorted({j for i in marks[:8] for j in range(i - context, i + context + 1)})
    keep = [j for j in keep if 0 <= j < len(lines)] or list(range(min(len(lines), 2 * context)))
    out: list[str] = []
    for prev, j in zip([-2, *keep], keep, strict=False):
        if j != prev + 1:
            out.append("    ...")
        out.append(("  > " if j in marks else "    ") + lines[j])
    return out


# --- one seed -------------------------------------------------------------------------------
SUMMARIES: list[Summary] = []


@dataclass
class Plan:
    """What one seed runs: the deployment, its fault schedule and the workers' settings."""

    variant: str
    seed: int
    flavor: Flavor
    group: Standalone | SentinelGroup
    schedule: list[Step]
    overrides: dict[str, Any]


def plan(variant: str, seed: int, base_dir: Path) -> Plan:
    rng = random.Random(f"{variant}/{seed}")
    flavor: Flavor = "valkey" if seed % 2 else "redis"
    group: Standalone | SentinelGroup
    if variant == "standalone":
        aof = ["--appendonly", "yes", "--appendfsync", "always"]
        group = Standalone(flavor, base_dir=base_dir, extra_args=aof)
        schedule = standalone_schedule(rng)
        overrides: dict[str, Any] = {
            "redis_socket_timeout": rng.choice((0.3, 0.5)),
            "redis_connect_timeout": 0.3,
        }
    else:
        group = SentinelGroup(flavor, base_dir=base_dir, down_after_ms=1000)
        schedule = sentinel_schedule(rng)
        overrides = {
            "redis_durability": "replicated",
            "redis_durability_timeout_ms": 500,
            "redis_socket_timeout": 1.0,
            "redis_connect_timeout": 0.5,
        }
    overrides |= {
        "redis_breaker_failure_threshold": rng.choice((1, 3)),
        "redis_retry_attempts": rng.choice((0, 2)),
        "redis_breaker_reset_timeout": 0.2,
        "redis_health_check_interval": 0.2,
    }
    return Plan(variant, seed, flavor, group, schedule, overrides)


async def set_up(zen: Zen) -> list[str]:
    """The shared agents (in ``ready``) and threads; returns the thread ids."""
    for agent in AGENTS:
        await zen.agents.create_agent("checker", agent_id=agent)
        await zen.agents.transition(agent, "ready", reason=SETUP_REASON)
    return [await zen.conversations.create_thread("checker", {}) for _ in range(2)]


async def stop_workers(
    workers: Sequence[WorkerProcess], settings: dict[str, Any]
) -> list[Violation]:
    """SIGTERM each: it replays its journal and exits 0. One whose replay stalled (exit 3)
    is a violation; its journal is then adopted here, as a restarted process would, so the
    check that follows still sees every write it acknowledged."""
    stuck: list[Violation] = []
    codes = [await worker.stop() for worker in workers]
    for worker, code in zip(workers, codes, strict=True):
        assert code in (0, 3), (
            f"worker {worker.slot} (incarnation {worker.incarnation}) "
            + ("did not exit" if code is None else f"exited with {code}")
            + f" after SIGTERM:\n{worker.log_tail()}"
        )
        if code == 3:
            failures = [line for line in worker.log_lines() if "background_task_failed" in line]
            stuck.append(
                Violation(
                    f"journal-{worker.slot}",
                    "stuck",
                    f"worker {worker.slot}.{worker.incarnation}: the replay of its outage "
                    f"journal stopped with writes pending; the server was back; its log: "
                    + ("; ".join(failures[-3:]) or "(no background_task_failed)"),
                )
            )
            await adopt(worker.journal, settings)
    for worker in workers:
        journal = await OutageJournal.open(path=worker.journal, max_ops=100_000)
        try:
            assert journal.depth == 0, f"{worker.journal} still holds writes"
        finally:
            await journal.aclose()
    return stuck


async def adopt(journal: Path, values: dict[str, Any]) -> None:
    """Replay a journal a worker left behind: open zen on it and wait for the replay."""
    settings = Settings(_env_file=None, **values, redis_outage_journal=journal)
    async with open_zen(settings) as zen:
        degraded = zen.redis.degraded

        async def drained() -> bool:
            return degraded.journal.depth == 0 and not degraded.active

        await wait_for(drained, deadline=EXIT_DEADLINE, what=f"{journal} replayed")


async def run_seed(variant: str, seed: int, tmp_path: Path) -> None:
    began = time.monotonic()
    run = plan(variant, seed, tmp_path / "servers")
    group = run.group
    summary = Summary(variant, seed, f"{run.flavor} {variant}", describe(run.schedule))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    await anyio.to_thread.run_sync(group.start)
    workers: list[WorkerProcess] = []
    try:
        settings = settings_for(group, **run.overrides)
        async with open_zen(settings) as zen:
            threads = await set_up(zen)
        worker_settings = settings.model_dump(mode="json", exclude_unset=True)
        config = {
            "seed": seed,
            "run_dir": str(run_dir),
            "settings": worker_settings,
            "agents": AGENTS,
            "threads": threads,
            "stream": STREAM,
            "cache_keys": CACHE_KEYS,
            "coroutines": COROUTINES,
            "think": THINK,
            "duration": 120,
            "stall_seconds": STALL,
        }
        config_path = run_dir / "config.json"
        config_path.write_bytes(orjson.dumps(config))
        workers = [WorkerProcess(slot, config_path, run_dir) for slot in range(WORKERS)]
        for worker in workers:
            await worker.start()
        t0 = time.monotonic()
        last_fault_end = t0
        for step in run.schedule:
            if isinstance(group, Standalone):
                await run_standalone_step(step, group, workers)
            else:
                await run_sentinel_step(step, group, workers)
            if step.action != "load":
                last_fault_end = time.monotonic()
        summary.worker_kills = sum(w.kills for w in workers)
        t1 = time.monotonic()
        stuck = await stop_workers(workers, worker_settings)
        t2 = time.monotonic()
        ledgers = read_ledgers(run_dir)
        async with open_zen(settings_for(group)) as zen:
            observed = await observe(zen, threads, ledgers.ops.values())
        verdict = Checker(ledgers, observed, summary).run()
        verdict.violations += stuck
        summary.violations += len(stuck)
        summary.seconds = time.monotonic() - began
        summary.phases = (t0 - began, t1 - t0, t2 - t1, time.monotonic() - t2)
        summary.offline_tail = offline_tail(ledgers, last_fault_end)
        SUMMARIES.append(summary)
        print(summary.text())
        assert not verdict.violations, (
            f"seed {seed} ({variant}, {run.flavor}): {len(verdict.violations)} violation(s); "
            f"schedule: {summary.schedule}\n" + minimal_history(verdict, ledgers.ops, t0, run_dir)
        )
    except BaseException:
        # Kept where a later pytest run does not delete it (pytest keeps 3 base temp dirs).
        await anyio.to_thread.run_sync(keep_artifacts, run_dir, f"{variant}-seed{seed}")
        raise
    finally:
        for worker in workers:
            await worker.kill()
        await anyio.to_thread.run_sync(group.stop)


def keep_artifacts(run_dir: Path, name: str) -> None:
    """Copy a failed run's ledgers, worker logs and histories to build/outage-checker/."""
    target = ARTIFACTS / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("journal-*"))
    print(f"ledgers, worker logs and histories kept in {target}")


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("seed", STANDALONE_SEEDS)
async def test_random_outages_lose_and_double_no_acknowledged_write(
    seed: int, tmp_path: Path
) -> None:
    """Exactly once through kill -9, SIGSTOP, CLIENT KILL and SIGKILLed workers (journals)."""
    await run_seed("standalone", seed, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", SENTINEL_SEEDS)
async def test_sentinel_master_kill_loses_no_replicated_write(seed: int, tmp_path: Path) -> None:
    """Replicated durability, no journal: a master kill -9 and a failover lose no
    acknowledged write and double no unknown one."""
    await run_seed("sentinel", seed, tmp_path)


# --- docs/reliability.md --------------------------------------------------------------------
SECTION: Final = f"""
## Randomized outage checker (exactly once)

`tests/faults/test_outage_checker.py` runs a random fault schedule per seed while two worker
processes (`tests/faults/_outage_worker.py`, each with its own `REDIS_OUTAGE_JOURNAL`) make
colliding writes under client-made op ids: transitions and metadata updates of 4 shared
agents, turns of 2 threads, publishes on 1 stream (idempotency key = op id), sets of 3 cache
keys. Faults: server kill -9 and restart (AOF `always`), SIGSTOP/SIGCONT of 0.2-3 s, `CLIENT
KILL TYPE normal`, and a worker SIGKILLed and restarted on its journal file; on Sentinel
(`REDIS_DURABILITY=replicated`, no journal) a master kill -9 with failover, and frozen
replicas. Each worker keeps a ledger (each op invoked, then its outcome). Once the journals
are replayed, each entity is checked against the ledgers: every acknowledged write applied
exactly once, or (journaled) refused on replay and recorded once as `journal_write_refused`;
typed refusals, and writes whose errors all said "not applied", not applied; unknown outcomes
applied at most once; nothing applied that nobody asked for; a write acknowledged before
another was invoked applied before it (online, or through the same journal); versions
contiguous, audit trails equal to the transitions applied, op markers present exactly for the
writes applied. *Lost*: acknowledged writes missing. *Doubled*: writes applied twice. *Other
violations*: wrong outcomes (an error saying "not applied" for a write that was, an error
outside the `ZenError` tree), order, and a journal whose replay stopped. `make soak
SEEDS=500` runs more seeds.

{START_MARK}
{END_MARK}
"""


TOTALLED: Final = (
    "invoked",
    "online",
    "offline",
    "refused",
    "refused_on_replay",
    "unknown_applied",
    "unknown_refused",
    "unknown_not_applied",
    "lost",
    "doubled",
    "violations",
)


def render_table(summaries: Sequence[Summary]) -> str:
    """One row per seed; for a soak run (more than 40 seeds) one row per variant, naming
    the seeds that found something."""
    lines = [
        f"Last run: {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
        f"{len(summaries)} seeds.",
        "",
        "| variant | seed | server | schedule | writes | ack online | ack offline | refused "
        "(typed / on replay) | unknown → once / refused / not applied | lost | doubled "
        "| other violations |",
        "|---|---|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    rows = sorted(summaries, key=lambda s: (s.variant, s.seed))
    labels = {(s.variant, s.seed): str(s.seed) for s in rows}
    if len(rows) > 40:
        totals: dict[str, Summary] = {}
        found: dict[str, list[str]] = defaultdict(list)
        for s in rows:
            total = totals.setdefault(s.variant, Summary(s.variant, 0, "both", "random"))
            total.seed += 1
            for name in TOTALLED:
                setattr(total, name, getattr(total, name) + getattr(s, name))
            if s.violations:
                found[s.variant].append(str(s.seed))
        rows = list(totals.values())
        labels = {
            (s.variant, s.seed): f"{s.seed} seeds"
            + (f" (found something: {', '.join(found[s.variant])})" if found[s.variant] else "")
            for s in rows
        }
    for s in rows:
        lines.append(
            f"| {s.variant} | {labels[s.variant, s.seed]} | {s.server} | {s.schedule} | "
            f"{s.invoked:,} | {s.online:,} | {s.offline:,} | "
            f"{s.refused:,} / {s.refused_on_replay:,} | "
            f"{s.unknown_applied:,} / {s.unknown_refused:,} / {s.unknown_not_applied:,} | "
            f"{s.lost} | {s.doubled} | {s.violations - s.lost - s.doubled} |"
        )
    return "\n".join(lines)


def write_docs(table: str) -> None:
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    if START_MARK not in text or END_MARK not in text:
        text = text.rstrip("\n") + "\n" + SECTION
    head, _, rest = text.partition(START_MARK)
    _, _, tail = rest.partition(END_MARK)
    DOCS.write_text(f"{head}{START_MARK}\n{table}\n{END_MARK}{tail}", encoding="utf-8")


@pytest.fixture(scope="module", autouse=True)
def outage_checker_table() -> Iterator[None]:
    """After the module: the summaries as a table in docs/reliability.md, when
    WRITE_RELIABILITY_DOCS=1."""
    yield
    if SUMMARIES and os.environ.get("WRITE_RELIABILITY_DOCS") == "1":
        write_docs(render_table(SUMMARIES))


# --- the checker checked (no server) --------------------------------------------------------
def _agent(agent_id: str, state: str, version: int) -> AgentRecord:
    now = datetime.now(UTC)
    return AgentRecord(
        agent_id=agent_id,
        agent_type="checker",
        lifecycle_state=LifecycleState(state),
        created_at=now,
        updated_at=now,
        version=version,
    )


def _change(n: int, agent: str, src: str, dst: str, reason: str) -> Event:
    """Entry ``n-0`` of the trail: a change to version ``n``."""
    data = {"from": src, "to": dst, "version": n, "reason": reason}
    return Event(f"{n}-0", f"audit:{agent}", "state_changed", agent, datetime.now(UTC), data)


def _history() -> tuple[Ledgers, Observed]:
    """Three transitions of oc-a0, one of them journaled, all applied once in order."""
    a = AGENTS[0]
    ops = {
        "t1": Op("t1", "transition", a, {"to": "running"}, 0, 1, 0, 1.0, 1.1, "ok-online",
                 {"version": 3, "event_id": "3-0"}),
        "t2": Op("t2", "transition", a, {"to": "paused"}, 0, 1, 0, 1.2, 1.3, "ok-offline"),
        "t3": Op("t3", "transition", a, {"to": "running"}, 1, 1, 0, 2.0, 2.1, "ok-online",
                 {"version": 5, "event_id": "5-0"}),
    }  # fmt: skip
    trails = {agent: [_change(2, agent, "initializing", "ready", SETUP_REASON)] for agent in AGENTS}
    trails[a] += [
        _change(3, a, "ready", "running", "t1"),
        _change(4, a, "running", "paused", "t2"),
        _change(5, a, "paused", "running", "t3"),
    ]
    records: dict[str, AgentRecord | None] = {agent: _agent(agent, "ready", 2) for agent in AGENTS}
    records[a] = _agent(a, "running", 5)
    observed = Observed(
        trails=trails,
        records=records,
        markers={"t1": True, "t2": True, "t3": True},
        turns={},
        events=[],
        refusals=[],
        cache=dict.fromkeys(CACHE_KEYS),
    )
    return Ledgers(ops, []), observed


def _found(ledgers: Ledgers, observed: Observed) -> set[str]:
    summary = Summary("synthetic", 0, "-", "-")
    return {v.what for v in Checker(ledgers, observed, summary).run().violations}


def test_the_checker_passes_a_history_applied_once_in_order() -> None:
    assert _found(*_history()) == set()


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        ("drop the journaled transition", "lost"),
        ("apply a transition twice", "doubled"),
        ("apply an op nobody invoked", "unrequested"),
        ("apply a refused op", "misreported"),
        ("apply an acknowledged op after a later one", "order"),
    ],
)
def test_the_checker_finds(mutation: str, expected: str) -> None:
    """Each invariant the checker promises, broken on purpose in a synthetic history."""
    ledgers, observed = _history()
    trail = observed.trails[AGENTS[0]]
    if mutation == "drop the journaled transition":
        del trail[2]
        observed.markers["t2"] = False
    elif mutation == "apply a transition twice":
        trail.append(_change(6, AGENTS[0], "running", "running", "t3"))
    elif mutation == "apply an op nobody invoked":
        trail.append(_change(6, AGENTS[0], "running", "paused", "x9"))
    elif mutation == "apply a refused op":
        ledgers.ops["t2"].outcome = "refused"
    else:
        trail[1], trail[3] = trail[3], trail[1]
    assert expected in _found(ledgers, observed)
