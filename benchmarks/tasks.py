"""Tasks vs arq (issue #8, scenario 7): zen_async's task queue — create, claim, start and
complete — against arq (enqueue, then execution by an arq worker) on the same server, in
alternating rounds of the same run.

    python -m benchmarks.tasks [--quick] [--url redis://127.0.0.1:6379] [--no-profile]

Without --url it starts its own redis-server on a free loopback port.

One round, on either side: the clock starts, N tasks are created one after another (one
call each; the bulk row: 100 a call), then C consumers execute them until the queue is
empty; the round ends when the last task is complete. ops/s = N over that time (median over
rounds); p50/p99 are of each task's latency from the start of the call that created it to
the end of its completion (mostly its wait in the queue: a picture of the drain, not of one
call).

- zen: ``tasks.create_task`` per task (or ``tasks.create_tasks``), on a zen with a pool of
  C connections (arq's pool has no limit); C = 100 consumer coroutines, each an agent
  (``w<j>``), loop ``claim_next(start=True)`` (which also leases the agent a port for the
  task and starts it: one script call on standalone and Sentinel) → ``complete`` with a
  small result (which releases the port) until ``claim_next`` finds nothing. After each
  round: every task completed, none claimed twice (read back from the server).
- arq: ``benchmarks/_arq_side.py`` in its own virtualenv (``benchmarks/.arq-venv``, made on
  first use with pip: arq pins ``redis<6``, which cannot live beside zen_async's
  ``redis>=8.1``; pip would otherwise fall back to arq 0.25, which has no upper pin but
  predates redis-py 5 and 8). ``enqueue_job`` per job, then a burst ``Worker`` on the same
  pool runs a no-op coroutine per job and stores its result (arq's default) until the
  queue is empty. Two configurations: ``max_jobs`` = C (as many jobs at once as zen has
  consumers) and ``poll_delay`` 5 ms, and arq's defaults (``max_jobs=10``, ``poll_delay=0.5``).

Target (issue #8): tasks >= 3x arq. In full mode, a missed target is followed by a py-spy
profile of the zen round (a separate process on the same server), added to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from benchmarks._harness import (
    Check,
    Comparison,
    CpuWatch,
    Outcome,
    Round,
    drop_tenant,
    measure_rounds,
    profile_rounds,
    py_spy_profile,
    raw_client,
    save,
    save_markdown,
    server_pid,
    server_url,
)
from benchmarks._topologies import ProcessesWatch, loadavg, standalone_settings
from zen_async import Zen, open_zen
from zen_async.agents import TaskSpec, TaskStatus
from zen_async.store.topology import KEYSPACES

HERE: Final = Path(__file__).resolve().parent
ARQ_VENV: Final = HERE / ".arq-venv"
ARQ_REQUIREMENT: Final = "arq==0.28.0"
ARQ_DB: Final = 8
"""arq's DB on the server (zen's databases layout uses 0-6)."""
TARGET: Final = 3.0


@dataclass(frozen=True)
class Sizes:
    """How much one round does."""

    rounds: int
    tasks: int  # tasks (jobs) per round
    workers: int  # zen consumer coroutines; arq max_jobs (tuned)
    poll: float  # arq poll_delay (tuned)
    bulk: int  # tasks per create_tasks call (bulk row)


FULL: Final = Sizes(rounds=5, tasks=2000, workers=100, poll=0.005, bulk=100)
QUICK: Final = Sizes(rounds=2, tasks=60, workers=10, poll=0.005, bulk=20)


def names(sizes: Sizes) -> dict[str, str]:
    """The scenario and baseline names of a run with ``sizes``."""
    n, c = sizes.tasks, sizes.workers
    return {
        "single": f"zen create_task + claim_next + start + complete ({n} tasks, {c} workers)",
        "bulk": f"zen create_tasks ({sizes.bulk}/call) + claim_next + start + complete "
        f"({n} tasks, {c} workers)",
        "arq": f"arq enqueue_job + worker execution ({n} jobs, max_jobs={c}, "
        f"poll_delay={sizes.poll:g})",
        "arq_defaults": f"arq enqueue_job + worker execution ({n} jobs, arq defaults: "
        "max_jobs=10, poll_delay=0.5)",
    }


# --- arq, in its own virtualenv ------------------------------------------------------------
async def _run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


async def arq_python() -> tuple[Path, str]:
    """The arq virtualenv's interpreter, made (``python -m venv`` + ``pip install``) when
    missing or broken, and the versions it runs (``arq X, redis-py Y``).

    Raises:
        RuntimeError: the virtualenv could not be made or arq not installed (with pip's
            output).
    """
    python = ARQ_VENV / "bin" / "python"
    probe = "import arq.version, redis; print(arq.version.VERSION, redis.__version__)"
    if python.exists():
        code, out = await _run(str(python), "-c", probe)
        if code == 0:
            return python, _versions(out)
    code, out = await _run(sys.executable, "-m", "venv", "--clear", str(ARQ_VENV))
    if code == 0:
        code, out = await _run(
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ARQ_REQUIREMENT,
        )
    if code == 0:
        code, out = await _run(str(python), "-c", probe)
    if code != 0:
        raise RuntimeError(f"could not set up arq in {ARQ_VENV}: {out[-800:]}")
    return python, _versions(out)


def _versions(probe: str) -> str:
    arq, redis = probe.split()[-2:]
    return f"arq {arq}, redis-py {redis}"


class ArqSide:
    """The arq process, driven one JSON line at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, python: Path, url: str) -> AsyncIterator[ArqSide]:
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(HERE / "_arq_side.py"),
            "--url",
            url,
            "--db",
            str(ARQ_DB),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
        )
        side = cls(process)
        try:
            yield side
            await side.ask({"cmd": "cleanup"})
        finally:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError, ConnectionError):
                assert process.stdin is not None
                process.stdin.write(b'{"cmd": "quit"}\n')
                await process.stdin.drain()
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            code = await self.process.wait()
            raise RuntimeError(f"the arq side exited ({code}) without a reply to {command}")
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    def round(self, tasks: int, max_jobs: int, poll_delay: float) -> Round:
        async def measured() -> tuple[int, float, list[float]]:
            command = {"cmd": "round", "tasks": tasks, "max_jobs": max_jobs}
            reply = await self.ask({**command, "poll_delay": poll_delay})
            return reply["ops"], reply["elapsed"], [v / 1e6 for v in reply["lat_us"]]

        return measured


# --- zen ------------------------------------------------------------------------------------
@dataclass
class ZenSide:
    """zen's rounds on one open zen, and what each round checked."""

    zen: Zen
    sizes: Sizes
    problems: list[str] = field(default_factory=list)
    rounds_checked: int = 0
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def round(self, *, bulk: bool) -> Round:
        async def measured() -> tuple[int, float, list[float]]:
            return await self._round(bulk=bulk)

        return measured

    async def _round(self, *, bulk: bool) -> tuple[int, float, list[float]]:
        tasks, sizes = self.zen.tasks, self.sizes
        agent_type = f"bench-{next(self._serial)}"
        sent: dict[str, float] = {}
        done: dict[str, float] = {}
        claims: dict[str, int] = {}

        async def consume(j: int) -> None:
            me = f"w{j}"
            while (task := await tasks.claim_next(agent_type, me, start=True)) is not None:
                claims[task.task_id] = claims.get(task.task_id, 0) + 1
                await tasks.complete(task.task_id, {"ok": True})
                done[task.task_id] = time.perf_counter()

        started = time.perf_counter()
        if bulk:
            for start in range(0, sizes.tasks, sizes.bulk):
                count = min(sizes.bulk, sizes.tasks - start)
                specs = [
                    TaskSpec(agent_type=agent_type, request={"i": start + i}) for i in range(count)
                ]
                t0 = time.perf_counter()
                for task in await tasks.create_tasks(specs):
                    sent[task.task_id] = t0
        else:
            for i in range(sizes.tasks):
                t0 = time.perf_counter()
                task = await tasks.create_task(agent_type, {"i": i})
                sent[task.task_id] = t0
        async with asyncio.TaskGroup() as group:  # each returns when the queue is empty
            for j in range(sizes.workers):
                group.create_task(consume(j))
        elapsed = max(done.values()) - started
        await self._check(agent_type, sent, claims)
        return len(done), elapsed, [done[t] - sent[t] for t in sent if t in done]

    async def _check(self, agent_type: str, sent: dict[str, float], claims: dict[str, int]) -> None:
        """Every task created completed, each claimed once (read back from the server)."""
        counts = await self.zen.tasks.count_by_status(agent_type=agent_type)
        twice = [t for t, n in claims.items() if n != 1]
        completed = counts.get(TaskStatus.COMPLETED, 0)
        others = {s.value: n for s, n in counts.items() if n and s != TaskStatus.COMPLETED}
        if completed != len(sent) or twice or others or set(claims) != set(sent):
            self.problems.append(
                f"{agent_type}: {len(sent)} created, {completed} completed, other statuses "
                f"{others}, claimed twice {len(twice)}, never claimed "
                f"{len(set(sent) - set(claims))}"
            )
        self.rounds_checked += 1


@contextlib.asynccontextmanager
async def _zen(url: str, sizes: Sizes) -> AsyncIterator[ZenSide]:
    tenant = f"bench-tasks-{uuid.uuid4().hex[:8]}"
    # A connection per consumer: with fewer, redis-py's BlockingConnectionPool lets a caller
    # that released a connection take it again before a waiter runs, starving the others
    # (arq's pool has no limit).
    settings = standalone_settings(url, tenant, redis_max_connections=max(50, sizes.workers))
    async with open_zen(settings) as zen:
        yield ZenSide(zen, sizes)
        dbs = {zen.redis.keyspace(name).db for name in KEYSPACES}
    await drop_tenant(url, tenant, dbs)


# --- the run --------------------------------------------------------------------------------
async def run(url: str, *, quick: bool) -> Outcome:
    """zen's rounds and arq's, alternating, after one warm-up round each."""
    sizes = QUICK if quick else FULL
    n = names(sizes)
    outcome = Outcome("tasks: zen_async task queue vs arq (same server, same run)")
    before = loadavg()
    python, versions = await arq_python()
    async with ArqSide.started(python, url) as arq, _zen(url, sizes) as zen:
        client = raw_client(url, db=0, max_connections=1)
        try:
            pid = await server_pid(url, lambda: client.info("server"))
        finally:
            await client.aclose(close_connection_pool=True)
        watch: CpuWatch = ProcessesWatch([p for p in (pid, arq.process.pid) if p is not None])

        async def measure() -> list[Comparison]:
            single, bulk, tuned, defaults = await measure_rounds(
                [
                    (n["single"], zen.round(bulk=False)),
                    (n["bulk"], zen.round(bulk=True)),
                    (n["arq"], arq.round(sizes.tasks, sizes.workers, sizes.poll)),
                    (n["arq_defaults"], arq.round(sizes.tasks, 10, 0.5)),
                ],
                rounds=sizes.rounds,
            )
            return [
                Comparison(single, tuned),
                Comparison(single, defaults),
                Comparison(bulk, tuned),
                Comparison(bulk, defaults),
            ]

        found = await outcome.settled(
            "zen tasks and arq", measure, watch=watch, attempts=1 if quick else 2
        )
    outcome.sections.append(
        (
            "Tasks: create + claim + complete vs arq enqueue + execution (ops = tasks; "
            "p50/p99: one task's latency from its creation call to its completion)",
            found,
        )
    )
    outcome.loadavg = (before, loadavg())
    outcome.checks = [
        Check(
            f"tasks >= {TARGET:g}x arq: {c.scenario.name.split(' (')[0]} vs "
            f"{'arq tuned alike' if c.baseline.name == n['arq'] else 'arq defaults'}",
            c.ratio,
            TARGET,
            "x",
            "min",
            f"{c.scenario.ops_per_s:,.0f} vs {c.baseline.ops_per_s:,.0f} tasks/s",
        )
        for c in found
    ]
    outcome.checks.append(
        Check(
            "every zen task completed, each claimed exactly once, every round",
            float(zen.rounds_checked - len(zen.problems)),
            float(zen.rounds_checked),
            "rounds",
            "min",
            zen.problems[0] if zen.problems else f"{zen.rounds_checked} rounds read back",
        )
    )
    outcome.notes = [
        f"arq side: {versions}, in {ARQ_VENV.relative_to(HERE.parent)} (arq pins redis<6; "
        "zen_async needs redis>=8.1), DB "
        f"{ARQ_DB} of the same server; its keys are deleted at the end.",
        "Per task, zen makes one script call that claims the task, leases its port, "
        "records the lease, starts the task and appends its task_starting and task_running "
        "events (claim_next(start=True); on Cluster a claim, a lease and a record-and-start "
        "call), the port_allocated event, a status change to completed (a script putting "
        "the lease in the release outbox), the lease release with its event and the "
        "task_completed event; arq makes a WATCH/MULTI enqueue, a WATCH/MULTI start, a read "
        "pipeline and a finish pipeline, and polls its queue.",
        "Both sides run in their own process on the same 2-core machine as the server (and "
        "other work): figures are noisy.",
    ]
    return outcome


# --- profile --------------------------------------------------------------------------------
async def profile_zen(url: str, *, bulk: bool) -> None:
    """zen's rounds alone, under py-spy's measured mark."""
    async with _zen(url, FULL) as zen:
        measured = zen.round(bulk=bulk)
        await measured()  # warm-up, outside the measured phase
        await profile_rounds(measured, seconds=3600.0, max_rounds=2)


async def profiles(url: str, checks: Sequence[Check]) -> list[str]:
    """A py-spy profile of the zen side of each missed target (single, then bulk)."""
    out = []
    for bulk in (False, True):
        label = "create_tasks" if bulk else "create_task"
        mine = [c for c in checks if c.target.partition(": ")[2].startswith(f"zen {label} ")]
        if not mine or all(c.passed for c in mine):
            continue
        argv = [sys.executable, "-m", "benchmarks.tasks", "--url", url, "--profile-zen"]
        if bulk:
            argv.append("--bulk")
        title = names(FULL)["bulk" if bulk else "single"]
        out.append(await py_spy_profile(argv, title=title, rate=200, top=15))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few tasks: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--profile-zen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bulk", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_zen:
        asyncio.run(profile_zen(args.url, bulk=args.bulk))
        return ""
    with server_url(args.url) as url:
        outcome = asyncio.run(run(url, quick=args.quick))
        if not args.quick and not args.no_profile:
            outcome.profiles = asyncio.run(profiles(url, outcome.checks))
    report = outcome.markdown()
    if not args.quick:
        save("tasks", outcome.comparisons, {"loop": "asyncio", **outcome.extra()})
        save_markdown("tasks", report)
    print(report)
    for check in outcome.checks:
        print(check.line())
    return report


if __name__ == "__main__":
    from zen_async.logs import configure_logging

    configure_logging("warning")  # zen's logs to stderr; stdout carries the report
    main()
