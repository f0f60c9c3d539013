"""Events: publishing (one at a time and batched) and consuming through a consumer group,
through zen_async's event log, each next to raw redis-py doing the equivalent commands on
the same server in the same run.

    python -m benchmarks.events [--quick] [--url redis://127.0.0.1:6379] [--no-profile]

Without --url it starts its own redis-server on a free loopback port. Every key it writes
lives under a tenant of its own (``bench-<hex>``), removed at the end.

Baselines (raw redis-py, a ``BlockingConnectionPool`` as large as zen's, same DB):

- publish: XADD of the same envelope fields (the client stamps ``time``); and the same
  ``event_publish.lua`` by EVALSHA.
- publish_many: the same, pipelined in chunks of 500.
- consume + ack: a backlog of events is read by a new consumer group. zen: ``events.consumer``
  with a no-op handler (default options, batch 100 and concurrency 16, but ``block=0.05``,
  which only shortens the shut-down after the clock stopped), timed from entering it until
  ``wait_handled`` sees the whole backlog. Raw: a loop of XREADGROUP COUNT 100 and one
  XACK of the ids read; and the same work zen does (an MGET of the batch's done markers, then
  ``event_ack.lua``: SET marker PX + XACK), but once per read batch where zen acks what its
  handlers finished meanwhile. For these rows p50
  and p99 are of the time one round took to drain its backlog.

In full mode, a zen scenario at less than 0.8x its first baseline is then profiled with
py-spy (a separate process on the same server) and the profile added to the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from benchmarks._harness import (
    Call,
    Comparison,
    CpuWatch,
    Outcome,
    Round,
    calls_round,
    compare_all,
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
from zen_async import Settings, Zen, open_zen
from zen_async.events import Event, NewEvent
from zen_async.events.envelope import encode_fields
from zen_async.events.log import StreamRef
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import KEYSPACES

BATCH: Final = 500
"""REDIS_PIPELINE_BATCH_SIZE for zen, and the chunk size of every raw pipeline."""
POOL: Final = 50
"""Connections per pool, zen's (REDIS_MAX_CONNECTIONS) and the raw client's alike."""
READ_COUNT: Final = 100
"""Entries per XREADGROUP: the consumer's default ``batch``, and the raw loops'."""
GROUP: Final = "bench"
EVENT_TYPE: Final = "bench.progress"
DATA: Final = {"task": "task-0042", "step": 3, "progress": 0.5, "note": "tokens streamed"}


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does per round."""

    rounds: int
    singles: int  # sequential publishes per round
    batch: int  # events per publish_many call
    batch_calls: int  # publish_many calls per round
    backlog: int  # events one consume round drains


FULL: Final = Sizes(5, 3000, 1000, 10, 20_000)
PROFILE_BELOW: Final = 0.8
"""Profile a zen scenario slower than this fraction of its first baseline."""
QUICK: Final = Sizes(5, 40, 100, 2, 300)


def names(sizes: Sizes) -> dict[str, str]:
    """The scenario names of a run with ``sizes`` (what the smoke test checks)."""
    return {
        "publish": "zen publish",
        "publish_many": f"zen publish_many ({sizes.batch}/call)",
        "consume": f"zen consumer, no-op handler ({sizes.backlog} backlog)",
    }


class Bench:
    """The scenarios of one run, on one open zen and a raw client of the same DB."""

    def __init__(self, zen: Zen, raw: Redis, scripts: ScriptRegistry, sizes: Sizes) -> None:
        self.zen = zen
        self.raw = raw
        self.sizes = sizes
        self.scripts = scripts
        self.events = zen.events
        self._serial = itertools.count()
        self.fields = encode_fields(EVENT_TYPE, DATA, agent_id=None, idempotency_key=None)

    def ref(self, label: str) -> StreamRef:
        return self.events.stream(f"bench.{label}")

    def envelope(self) -> dict[FieldT, EncodableT]:
        """The envelope fields, with ``time`` stamped by the client."""
        it = iter(self.fields)
        return {"time": int(time.time() * 1000), **dict(zip(it, it, strict=True))}

    async def _pipelined(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        replies: list[Any] = []
        for start in range(0, len(commands), BATCH):
            pipe = self.raw.pipeline(transaction=False)
            for command in commands[start : start + BATCH]:
                pipe.execute_command(*command)
            replies.extend(await pipe.execute())
        return replies

    # --- publish ---------------------------------------------------------------------------
    def zen_publish(self) -> Call:
        publish, name = self.events.publish, self.ref("pub.zen").name

        async def call(_: int) -> int:
            await publish(name, EVENT_TYPE, DATA)
            return 1

        return call

    def raw_xadd(self) -> Call:
        raw, key = self.raw, self.ref("pub.raw").key

        async def call(_: int) -> int:
            await raw.xadd(key, self.envelope())
            return 1

        return call

    def _lua_args(self, ref: StreamRef) -> list[Any]:
        keys = [ref.key, ref.idempotency_key("-"), ref.key]
        return [*keys, "0", "0", "", ref.name, *self.fields]

    def raw_lua_publish(self) -> Call:
        raw, sha = self.raw, self.scripts["event_publish"].sha
        args = self._lua_args(self.ref("pub.lua"))

        async def call(_: int) -> int:
            await raw.evalsha(sha, 3, *args)
            return 1

        return call

    def zen_publish_many(self) -> Call:
        publish_many, name = self.events.publish_many, self.ref("many.zen").name
        batch = [NewEvent(EVENT_TYPE, DATA) for _ in range(self.sizes.batch)]

        async def call(_: int) -> int:
            return len(await publish_many(name, batch))

        return call

    def raw_xadd_many(self) -> Call:
        key, count = self.ref("many.raw").key, self.sizes.batch

        async def call(_: int) -> int:
            for start in range(0, count, BATCH):
                pipe = self.raw.pipeline(transaction=False)
                for _ in range(min(BATCH, count - start)):
                    pipe.xadd(key, self.envelope())
                await pipe.execute()
            return count

        return call

    def raw_lua_publish_many(self) -> Call:
        sha = self.scripts["event_publish"].sha
        command = ("EVALSHA", sha, 3, *self._lua_args(self.ref("many.lua")))
        commands = [command] * self.sizes.batch

        async def call(_: int) -> int:
            await self._pipelined(commands)
            return len(commands)

        return call

    # --- consume + ack ---------------------------------------------------------------------
    async def backlogs(self, label: str, count: int) -> list[StreamRef]:
        """``count`` streams of ``backlog`` events each, written before the clock starts."""
        refs = [self.ref(f"consume.{label}.{next(self._serial)}") for _ in range(count)]
        for ref in refs:
            fields = self.envelope()
            for start in range(0, self.sizes.backlog, BATCH):
                pipe = self.raw.pipeline(transaction=False)
                for _ in range(min(BATCH, self.sizes.backlog - start)):
                    pipe.xadd(ref.key, fields)
                await pipe.execute()
        return refs

    def zen_consume(self, refs: list[StreamRef]) -> Round:
        supply = iter(refs)
        backlog = self.sizes.backlog

        async def noop(_: Event) -> None:
            return None

        async def measured() -> tuple[int, float, list[float]]:
            ref = next(supply)
            started = time.perf_counter()
            consumer = self.events.consumer(GROUP, [ref.name], noop, start_id="0", block=0.05)
            async with consumer:
                await consumer.wait_handled(backlog, timeout=600)
                elapsed = time.perf_counter() - started
            return backlog, elapsed, [elapsed]

        return measured

    def raw_consume(self, refs: list[StreamRef], *, same_work: bool) -> Round:
        supply = iter(refs)
        backlog, raw = self.sizes.backlog, self.raw
        ack_sha = self.scripts["event_ack"].sha
        done_ttl_ms = 24 * 3600 * 1000

        async def measured() -> tuple[int, float, list[float]]:
            ref = next(supply)
            key = ref.key
            started = time.perf_counter()
            await raw.xgroup_create(key, GROUP, id="0")
            handled = 0
            while handled < backlog:
                reply = await raw.xreadgroup(GROUP, "raw", {key: ">"}, count=READ_COUNT)
                ids = [_text(entry[0]) for _, entries in _pairs(reply) for entry in entries]
                if not ids:
                    continue
                if same_work:
                    done = [ref.done_key(GROUP, i) for i in ids]
                    seen = await raw.mget(done)
                    assert not any(seen)
                    await raw.evalsha(ack_sha, 1 + len(done), key, *done, GROUP, done_ttl_ms, *ids)
                else:
                    await raw.xack(key, GROUP, *ids)
                handled += len(ids)
            elapsed = time.perf_counter() - started
            return handled, elapsed, [elapsed]

        return measured


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    if not reply:
        return []
    return list(reply.items() if isinstance(reply, dict) else reply)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the run ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _opened(url: str, sizes: Sizes) -> AsyncIterator[Bench]:
    """An open zen on a tenant of its own and a raw client of its streams DB; every key of
    the tenant removed on exit."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None,
        redis_url=url,
        redis_embedded="false",
        redis_pipeline_batch_size=BATCH,
        redis_max_connections=POOL,
        redis_namespace=tenant,
    )
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    raw: Redis | None = None
    try:
        async with open_zen(settings) as zen:
            raw = raw_client(url, db=zen.redis.keyspace("streams").db, max_connections=POOL)
            yield Bench(zen, raw, scripts, sizes)
            dbs = {zen.redis.keyspace(name).db for name in KEYSPACES}
        await drop_tenant(url, tenant, dbs)
    finally:
        if raw is not None:
            await raw.aclose(close_connection_pool=True)


async def run(url: str, *, quick: bool) -> Outcome:
    """Measure every scenario against its baselines; return the tables."""
    sizes = QUICK if quick else FULL
    n = names(sizes)
    rounds = sizes.rounds
    outcome = Outcome("events: zen_async vs raw redis-py (same server, same run)")
    before = os.getloadavg()
    async with _opened(url, sizes) as b:
        watch = CpuWatch(await server_pid(url, lambda: b.raw.info("server")))
        attempts = 1 if quick else 3
        publish = await outcome.settled(
            n["publish"],
            lambda: compare_all(
                (n["publish"], b.zen_publish()),
                [
                    ("redis-py XADD", b.raw_xadd()),
                    ("redis-py EVALSHA event_publish", b.raw_lua_publish()),
                ],
                rounds=rounds,
                calls=sizes.singles,
            ),
            watch=watch,
            attempts=attempts,
        )
        publish_many = await outcome.settled(
            n["publish_many"],
            lambda: compare_all(
                (n["publish_many"], b.zen_publish_many()),
                [
                    ("redis-py pipelined XADD", b.raw_xadd_many()),
                    ("redis-py pipelined EVALSHA event_publish", b.raw_lua_publish_many()),
                ],
                rounds=rounds,
                calls=sizes.batch_calls,
            ),
            watch=watch,
            attempts=attempts,
        )
        outcome.sections.append(
            ("Publish (ops = events; p50/p99 of one call)", [*publish, *publish_many])
        )

        async def consume() -> list[Comparison]:
            backlogs = rounds + 1  # written before the clock starts: see Bench.backlogs
            zen_refs = await b.backlogs("zen", backlogs)
            raw_refs = await b.backlogs("raw", backlogs)
            same_refs = await b.backlogs("same", backlogs)
            measures = await measure_rounds(
                [
                    (n["consume"], b.zen_consume(zen_refs)),
                    (
                        f"redis-py XREADGROUP COUNT {READ_COUNT} + XACK loop",
                        b.raw_consume(raw_refs, same_work=False),
                    ),
                    (
                        "redis-py XREADGROUP + MGET markers + event_ack per batch (zen's work)",
                        b.raw_consume(same_refs, same_work=True),
                    ),
                ],
                rounds=rounds,
            )
            return [Comparison(measures[0], m) for m in measures[1:]]

        outcome.sections.append(
            (
                "Consume + ack (ops = events; p50/p99 of draining one backlog)",
                await outcome.settled(n["consume"], consume, watch=watch, attempts=attempts),
            )
        )
    outcome.loadavg = (before, os.getloadavg())
    outcome.notes.append(
        "zen publish appends by `event_publish.lua` (server time, optional idempotency "
        "marker, optional audit copy and hint: here none); raw XADD stamps time on the client."
    )
    return outcome


# --- profiles --------------------------------------------------------------------------------
async def profile_scenario(url: str, scenario: str, *, seconds: float) -> None:
    """Run one zen scenario, without baselines, for about ``seconds`` (under py-spy)."""
    sizes = FULL
    async with _opened(url, sizes) as b:
        max_rounds = None
        if scenario == "publish":
            measured = calls_round(b.zen_publish(), sizes.singles)
        elif scenario == "publish_many":
            measured = calls_round(b.zen_publish_many(), sizes.batch_calls)
        elif scenario == "consume":
            max_rounds = 3
            measured = b.zen_consume(await b.backlogs("profile", max_rounds + 1))
        else:
            raise SystemExit(f"unknown profile scenario {scenario!r}")
        await measured()  # warm-up, outside the measured phase
        await profile_rounds(measured, seconds=seconds, max_rounds=max_rounds)


async def profiles(url: str, outcome: Outcome, *, seconds: float = 4.0) -> list[str]:
    """A py-spy profile of every zen scenario slower than PROFILE_BELOW x its first
    baseline."""
    out = []
    by_name = {v: k for k, v in names(FULL).items()}
    seen: set[str] = set()
    for comparison in outcome.comparisons:
        scenario = by_name.get(comparison.scenario.name)
        if scenario is None or scenario in seen:
            continue
        seen.add(scenario)
        if comparison.ratio >= PROFILE_BELOW:
            continue
        argv = [
            sys.executable,
            "-m",
            "benchmarks.events",
            "--url",
            url,
            "--profile-scenario",
            scenario,
            "--seconds",
            str(seconds),
        ]
        title = f"{comparison.scenario.name} ({comparison.ratio:.2f}x {comparison.baseline.name})"
        await CpuWatch(None).wait_quiet(25.0, patience=30.0)
        out.append(await py_spy_profile(argv, title=title))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy profiles of slow scenarios"
    )
    parser.add_argument("--profile-scenario", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_scenario:
        asyncio.run(profile_scenario(args.url, args.profile_scenario, seconds=args.seconds))
        return ""
    with server_url(args.url) as url:
        outcome = asyncio.run(run(url, quick=args.quick))
        if not args.quick and not args.no_profile:
            outcome.profiles = asyncio.run(profiles(url, outcome))
    report = outcome.markdown()
    if not args.quick:
        save("events", outcome.comparisons, {"loop": "asyncio", "batch": BATCH, **outcome.extra()})
        save_markdown("events", report)
    print(report)
    return report


if __name__ == "__main__":
    main()
