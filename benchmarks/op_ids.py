"""Operation ids (issue 13): what the exactly-once marker of every write costs, in time and
in memory, each figure next to the same work without a marker on the same server in the same
run.

    python -m benchmarks.op_ids [--quick] [--url redis://127.0.0.1:6379]

Without --url it starts its own redis-server on a free loopback port. Every key it writes
lives under a tenant of its own (``bench-<hex>``), removed at the end.

Since issue 13 a transition (``agent_transition.lua``) may take KEYS[2], the operation's
marker ``<P>op:<op id>`` (same hash tag as the agent) and ARGV[10], its TTL in ms: the script
first GETs the marker (a recorded reply is returned and nothing applied), and SETs it PX the
TTL after applying the transition. ``zen.agents.transition`` always sends one (a new op id
unless ``op_id=`` names one; ``REDIS_OP_MARKER_TTL``, a day by default).
``conversation_add_turn.lua`` takes KEYS[3], a dedupe key, the same way (zen always sends it).

- Transitions: ``concurrency`` agents per fleet, one coroutine each driving its own agent
  ready <-> paused, ``per_agent`` transitions one after another per round: the same
  ``agent_transition.lua`` by raw EVALSHA without a marker (how a transition was sent before
  issue 13), with one (KEYS[2] + TTL, a new uuid4 hex op id per call, as zen makes them), and
  ``zen.agents.transition`` (markers), in alternating rounds.
- Heartbeats carry no marker (the script sets the lease expiry and gauges to absolute values:
  applying one twice has the effect of once): measured once, ``heartbeats`` of a whole fleet
  per call next to the same ``agent_heartbeat.lua`` by raw pipelined EVALSHA, for reference.
- Conversation turns: ``conversation_add_turn.lua`` by raw EVALSHA with and without the
  KEYS[3] dedupe key, one thread per coroutine; and ``ConversationStore.add_turn`` (dedupe key,
  then the thread index's ZADD) next to both.
- Marker memory: ``markers`` transitions by pipelined raw EVALSHA with a marker, alternating
  in ten parts with as many without one (so the streams grow alike on both sides; no pub/sub
  hint, whose client buffers would blur the figure): the difference of INFO ``used_memory``
  deltas per marker, and ``MEMORY USAGE`` of a sample of the marker keys (SCAN MATCH).

The agents are created through an ``AgentStateManager`` built like ``zen.agents`` but with a
one-hour lease, so that the reaper does not reap them half-way through the run; transitions
go through ``zen.agents``. The machine may be shared: each group is measured again (up to 3
times in full mode) while other processes used more than a quarter of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import anyio
from redis.asyncio import Redis

from benchmarks._harness import (
    Call,
    Check,
    Comparison,
    CpuWatch,
    Outcome,
    Round,
    compare_all,
    drop_tenant,
    measure_rounds,
    raw_client,
    save,
    save_markdown,
    server_pid,
    server_url,
)
from zen_async import Settings, Zen, open_zen
from zen_async.agents import AgentSpec, AgentStateManager, LifecycleState
from zen_async.agents.models import sources_of
from zen_async.conversations import ConversationStore
from zen_async.events.envelope import agent_shard, shard_stream_name, shard_tag
from zen_async.store.scripts import ScriptRegistry
from zen_async.store.topology import KEYSPACES

BATCH: Final = 500
"""REDIS_PIPELINE_BATCH_SIZE for zen, and the chunk size of every raw pipeline."""
POOL: Final = 50
"""Connections per pool, zen's (REDIS_MAX_CONNECTIONS) and the raw client's alike."""
LEASE_S: Final = 3600
TURN_TTL_MS: Final = 3 * 3600 * 1000
MAX_TURNS: Final = 100_000
"""The turn limit of the benchmark's threads (every round appends to the same threads)."""
AGENT_TYPE: Final = "bench"
RAW_SCRIPTS: Final = ("agent_transition", "agent_heartbeat", "conversation_add_turn")
TARGET_RATIO: Final = 0.90
"""Issue 13: a marker may cost at most 10% of transition throughput."""
PARTS: Final = 10
"""The marker-memory run alternates this many parts with and without markers."""


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does."""

    rounds: int
    concurrency: int  # agents (and threads) driven at once, one coroutine each
    per_agent: int  # transitions one coroutine makes in a row per round
    per_thread: int  # turns one coroutine appends in a row per round
    heartbeat_calls: int  # heartbeats calls (a whole fleet each) per round
    markers: int  # transitions with a marker written for the memory figure
    sample: int  # marker keys whose MEMORY USAGE is read


FULL: Final = Sizes(9, 1000, 10, 4, 5, 100_000, 1000)
QUICK: Final = Sizes(5, 50, 2, 2, 1, 2000, 1000)


def names(sizes: Sizes) -> dict[str, str]:
    """The measured entries of a run with ``sizes`` (what the smoke test checks)."""
    c = sizes.concurrency
    return {
        "plain": f"redis-py EVALSHA agent_transition, no marker x{c} agents",
        "marked": f"redis-py EVALSHA agent_transition + op-id marker x{c} agents",
        "zen": f"zen agents.transition (marker) x{c} agents",
        "hb": f"zen agents.heartbeats ({c}/call, no marker)",
        "hb_raw": f"redis-py pipelined EVALSHA agent_heartbeat ({c}/call)",
        "turn_plain": f"redis-py EVALSHA conversation_add_turn, no dedupe key x{c} threads",
        "turn_marked": f"redis-py EVALSHA conversation_add_turn + dedupe key x{c} threads",
        "turn_zen": f"zen conversations.add_turn (dedupe key + index) x{c} threads",
    }


GROUPS: Final = ("transitions", "heartbeats", "conversation turns")


class Fleet:
    """Agents each driven ready <-> paused by one coroutine at a time."""

    def __init__(self, bench: Bench, label: str, count: int) -> None:
        self.ids = [f"{label}-{i}" for i in range(count)]
        self.prefixes = [bench.prefix(a) for a in self.ids]
        self.keys = [p + "agent:" + a for p, a in zip(self.prefixes, self.ids, strict=True)]
        self.hints = [bench.hint_args(a) for a in self.ids]
        self.paused = [False] * count

    def step(self, n: int) -> str:
        """The state agent ``n`` moves to next; recorded as done."""
        self.paused[n] = not self.paused[n]
        return "paused" if self.paused[n] else "ready"


def fleet_round(move: Call, agents: int, per_agent: int) -> Round:
    """A round of ``agents`` coroutines, coroutine ``n`` calling ``move(n)`` ``per_agent``
    times in a row; the latency of each call is kept."""

    async def measured() -> tuple[int, float, list[float]]:
        latencies: list[float] = []

        async def worker(n: int) -> int:
            done = 0
            for _ in range(per_agent):
                t0 = time.perf_counter()
                done += await move(n)
                latencies.append(time.perf_counter() - t0)
            return done

        started = time.perf_counter()
        ops = sum(await asyncio.gather(*(worker(n) for n in range(agents))))
        return ops, time.perf_counter() - started, latencies

    return measured


@dataclass(frozen=True)
class MarkerMemory:
    """What the markers of ``markers`` transitions occupy on the server."""

    markers: int
    used_delta_with: int  # used_memory delta over the transitions with a marker
    used_delta_without: int  # ... and over as many without one
    usec_with: int  # server time (INFO commandstats EVALSHA usec) of those with a marker
    usec_without: int  # ... and of those without one
    sampled: int  # marker keys whose MEMORY USAGE was read
    usage_mean: float  # their mean MEMORY USAGE, bytes
    value_mean: float  # their mean value length (STRLEN), bytes
    key_len: int  # length of a marker key's name
    prefix: str  # a marker key's name up to the op id
    op_id_len: int
    ttl_s: float  # REDIS_OP_MARKER_TTL

    @property
    def per_marker(self) -> float:
        """used_memory bytes per marker: with minus without, over ``markers``."""
        return (self.used_delta_with - self.used_delta_without) / self.markers

    @staticmethod
    def per_million_mb(per: float) -> float:
        """MB (1e6 bytes) that 1M markers of ``per`` bytes each hold."""
        return per * 1_000_000 / 1e6

    def steady_gb(self, per: float, rate: float) -> float:
        """Memory held by markers at ``rate`` writes/s, each kept ``ttl_s``: GB (1e9)."""
        return rate * self.ttl_s * per / 1e9

    @property
    def server_us(self) -> tuple[float, float]:
        """Server microseconds per transition: (without a marker, with one)."""
        return self.usec_without / self.markers, self.usec_with / self.markers

    def markdown(self) -> str:
        per, usage = self.per_marker, self.usage_mean
        without_us, with_us = self.server_us
        rate = 1000.0
        kept = rate * self.ttl_s
        return "\n".join(
            [
                "### Marker memory",
                "",
                "| figure | value |",
                "|---|---:|",
                f"| transitions written with a marker (and as many without) | {self.markers:,} |",
                f"| used_memory delta with markers | {self.used_delta_with:,} B |",
                f"| used_memory delta without markers | {self.used_delta_without:,} B |",
                f"| **used_memory per marker** (difference / {self.markers:,}) | "
                f"**{per:,.1f} B** |",
                f"| MEMORY USAGE per marker key (mean of {self.sampled:,} sampled) | "
                f"{usage:,.1f} B |",
                f"| marker value (cjson reply, STRLEN mean) | {self.value_mean:,.1f} B |",
                f"| marker key name: `{self.prefix}<op id>` | {self.key_len} chars "
                f"({len(self.prefix)} prefix + {self.op_id_len} hex) |",
                f"| per 1M writes (used_memory figure) | {self.per_million_mb(per):,.1f} MB |",
                f"| per 1M writes (MEMORY USAGE figure) | {self.per_million_mb(usage):,.1f} MB |",
                f"| REDIS_OP_MARKER_TTL | {self.ttl_s:,.0f} s |",
                f"| server time per transition (EVALSHA usec, pipelined): without / with "
                f"a marker | {without_us:.2f} / {with_us:.2f} us "
                f"(+{100 * (with_us / without_us - 1):.0f}%) |",
                f"| steady state, 1000 agents x 1 transition/s x {self.ttl_s:,.0f} s = "
                f"{kept / 1e6:,.1f}M markers | {self.steady_gb(per, rate):,.2f} GB |",
                "",
                "Markers expire after REDIS_OP_MARKER_TTL, so the memory they hold in steady "
                "state is write rate x TTL x bytes per marker. MEMORY USAGE counts the key "
                "name, the value and the main dict entry; used_memory also counts the "
                "expires-dict entry (every marker has a TTL) and both dicts' bucket arrays, "
                "which double as the key count grows (amortised into the figure above).",
                "",
            ]
        )


class Bench:
    """The scenarios of one run, on one open zen and a raw client of the same server."""

    def __init__(
        self, zen: Zen, raw: dict[str, Redis], scripts: ScriptRegistry, sizes: Sizes
    ) -> None:
        self.zen = zen
        self.sizes = sizes
        self.state = zen.redis.keyspace("state")
        self.conversations = zen.redis.keyspace("conversations")
        self.raw = raw["state"]
        self.raw_conversations = raw["conversations"]
        self.scripts = scripts
        self.agents = zen.agents
        self.long_lease = AgentStateManager(
            zen.redis, zen.events, ports=zen.ports, lease_ttl=float(LEASE_S), metrics=zen.metrics
        )
        self.turns = ConversationStore(zen.redis, tenant=zen.tenant, max_turns=MAX_TURNS)
        self.sources = {s.value: "," + ",".join(sources_of(s)) + "," for s in LifecycleState}
        self.op_ttl_ms = int(zen.redis.settings.redis_op_marker_ttl * 1000)

    # --- naming, as zen_async names an agent's keys ----------------------------------------
    def prefix(self, agent_id: str) -> str:
        return self.state.key(shard_tag(agent_shard(agent_id, self.agents.shards))) + ":"

    def hint_args(self, agent_id: str) -> list[str | int]:
        events = self.zen.events
        shard = agent_shard(agent_id, self.agents.shards)
        return [events.audit_max_len, events.agent_channel, shard_stream_name(shard)]

    def sha(self, name: str) -> str:
        return self.scripts[name].sha

    # --- set-up ----------------------------------------------------------------------------
    async def setup(self) -> None:
        c = self.sizes.concurrency
        self.plain = Fleet(self, "plain", c)
        self.marked = Fleet(self, "marked", c)
        self.zen_fleet = Fleet(self, "zen", c)
        self.mem_plain = Fleet(self, "memplain", c)
        self.mem_marked = Fleet(self, "memmarked", c)
        ids = [
            a
            for f in (self.plain, self.marked, self.zen_fleet, self.mem_plain, self.mem_marked)
            for a in f.ids
        ]
        await self.long_lease.create_agents(
            [AgentSpec(agent_type=AGENT_TYPE, agent_id=a) for a in ids]
        )
        moved = await self.long_lease.transition_many([(a, "ready", None) for a in ids])
        assert all(not isinstance(r, Exception) for r in moved), moved[:3]
        for name in RAW_SCRIPTS:  # the raw baselines run them by EVALSHA, maybe before zen
            await self.raw.script_load(self.scripts[name].source)  # one cache per server
        made = await asyncio.gather(
            *(self.turns.create_thread("bench", {"n": i}) for i in range(3 * c))
        )
        self.threads = {
            "plain": made[:c],
            "marked": made[c : 2 * c],
            "zen": made[2 * c :],
        }
        self.turn_body = self.zen.redis.codec.encode(
            {
                "role": "assistant",
                "content": "x" * 200,
                "files": [],
                "images": [],
                "tool_name": None,
                "model_provider": None,
                "model_name": None,
                "model_metadata": {},
            }
        )

    # --- transitions -----------------------------------------------------------------------
    def raw_transition(self, fleet: Fleet, *, marker: bool) -> Call:
        raw, sha, sources, ttl = (
            self.raw,
            self.sha("agent_transition"),
            self.sources,
            self.op_ttl_ms,
        )

        async def call(n: int) -> int:
            to = fleet.step(n)
            p = fleet.prefixes[n]
            args = [p, fleet.ids[n], to, sources[to], "", "", *fleet.hints[n]]
            if marker:
                await raw.evalsha(sha, 2, fleet.keys[n], f"{p}op:{uuid.uuid4().hex}", *args, ttl)
            else:
                await raw.evalsha(sha, 1, fleet.keys[n], *args)
            return 1

        return call

    def zen_transition(self, fleet: Fleet) -> Call:
        transition = self.agents.transition

        async def call(n: int) -> int:
            await transition(fleet.ids[n], fleet.step(n))
            return 1

        return call

    # --- heartbeats ------------------------------------------------------------------------
    def zen_heartbeats(self, fleet: Fleet) -> Call:
        heartbeats = self.long_lease.heartbeats

        async def call(_: int) -> int:
            return len(await heartbeats(fleet.ids))

        return call

    def raw_heartbeats(self, fleet: Fleet) -> Call:
        sha, lease_ms = self.sha("agent_heartbeat"), LEASE_S * 1000
        by_shard: dict[int, list[str]] = {}
        for agent_id in fleet.ids:
            by_shard.setdefault(agent_shard(agent_id, self.agents.shards), []).append(agent_id)
        commands = []
        for shard, ids in by_shard.items():
            for start in range(0, len(ids), BATCH):
                chunk = ids[start : start + BATCH]
                p = self.prefix(chunk[0])
                keys = [p + "agent:" + a for a in chunk]
                hosts = self.zen.ports.hosts_prefix(shard)
                commands.append(
                    ("EVALSHA", sha, len(keys), *keys, p, lease_ms, "", "", "", hosts, *chunk)
                )

        async def call(_: int) -> int:
            await self._pipelined(commands)
            return len(fleet.ids)

        return call

    async def _pipelined(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        replies: list[Any] = []
        for start in range(0, len(commands), BATCH):
            pipe = self.raw.pipeline(transaction=False)
            for command in commands[start : start + BATCH]:
                pipe.execute_command(*command)
            replies.extend(await pipe.execute())
        return replies

    # --- conversation turns ----------------------------------------------------------------
    def raw_turn(self, threads: Sequence[str], *, dedupe: bool) -> Call:
        raw, sha, body = self.raw_conversations, self.sha("conversation_add_turn"), self.turn_body
        metas = [self.conversations.key("thread", f"{{{t}}}") for t in threads]  # as zen's

        async def call(n: int) -> int:
            meta, tid = metas[n], threads[n]
            args = (tid, MAX_TURNS, TURN_TTL_MS, body)
            if dedupe:
                op = f"{meta}:op:{uuid.uuid4().hex}"
                await raw.evalsha(sha, 3, meta, f"{meta}:turns", op, *args)
            else:
                await raw.evalsha(sha, 2, meta, f"{meta}:turns", *args)
            return 1

        return call

    def zen_turn(self, threads: Sequence[str]) -> Call:
        add_turn = self.turns.add_turn

        async def call(n: int) -> int:
            await add_turn(threads[n], "assistant", "x" * 200)
            return 1

        return call

    # --- marker memory ---------------------------------------------------------------------
    async def used_memory(self) -> int:
        return int((await self.raw.info("memory"))["used_memory"])

    async def script_usec(self) -> int:
        """Server microseconds spent in EVALSHA so far (INFO commandstats)."""
        stats = await self.raw.info("commandstats")
        return int(stats["cmdstat_evalsha"]["usec"]) if "cmdstat_evalsha" in stats else 0

    async def _memory_delta(self, fleet: Fleet, count: int, *, marker: bool) -> tuple[int, int]:
        """``count`` transitions of ``fleet`` (pipelined, no pub/sub hint): used_memory after
        minus before, and the server microseconds they took."""
        sha, sources, ttl = self.sha("agent_transition"), self.sources, self.op_ttl_ms
        commands: list[tuple[Any, ...]] = []
        for i in range(count):
            n = i % len(fleet.ids)
            to = fleet.step(n)
            p = fleet.prefixes[n]
            audit_max_len, _, stream = fleet.hints[n]
            args = (p, fleet.ids[n], to, sources[to], "", "", audit_max_len, "", stream)
            if marker:
                op = f"{p}op:{uuid.uuid4().hex}"
                commands.append(("EVALSHA", sha, 2, fleet.keys[n], op, *args, ttl))
            else:
                commands.append(("EVALSHA", sha, 1, fleet.keys[n], *args))
        usec = await self.script_usec()
        before = await self.used_memory()
        replies = await self._pipelined(commands)
        after = await self.used_memory()
        assert all(isinstance(r, list) for r in replies), replies[:3]
        return after - before, await self.script_usec() - usec

    async def marker_memory(self) -> MarkerMemory:
        n = self.sizes.markers
        without = with_ = usec_without = usec_with = 0
        for part in range(PARTS):
            count = n // PARTS + (1 if part < n % PARTS else 0)
            memory, usec = await self._memory_delta(self.mem_plain, count, marker=False)
            without, usec_without = without + memory, usec_without + usec
            memory, usec = await self._memory_delta(self.mem_marked, count, marker=True)
            with_, usec_with = with_ + memory, usec_with + usec
        pattern = self.state.key("{z*}", "op", "*")
        keys: list[bytes] = []
        async for key in self.raw.scan_iter(match=pattern, count=1000):
            keys.append(key)
            if len(keys) >= self.sizes.sample:
                break
        pipe = self.raw.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("MEMORY", "USAGE", key)
            pipe.strlen(key)
        replies = await pipe.execute()
        sample = keys[0].decode()
        prefix, op_id = sample.rsplit(":", 1)  # zen:t:<tenant>:{z<shard>}:op, <32 hex>
        return MarkerMemory(
            markers=n,
            used_delta_with=with_,
            used_delta_without=without,
            usec_with=usec_with,
            usec_without=usec_without,
            sampled=len(keys),
            usage_mean=statistics.fmean(int(r) for r in replies[0::2]),
            value_mean=statistics.fmean(int(r) for r in replies[1::2]),
            key_len=len(sample),
            prefix=prefix + ":",
            op_id_len=len(op_id),
            ttl_s=self.zen.redis.settings.redis_op_marker_ttl,
        )


# --- the run ---------------------------------------------------------------------------------
def _settings(url: str, tenant: str) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=url,
        redis_embedded="false",
        redis_pipeline_batch_size=BATCH,
        redis_max_connections=POOL,
        redis_namespace=tenant,
    )


@contextlib.asynccontextmanager
async def _opened(url: str, sizes: Sizes) -> AsyncIterator[Bench]:
    """An open zen on a tenant of its own, a raw client on its state DB, the fixtures set
    up; every key of the tenant removed on exit."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    scripts = await anyio.to_thread.run_sync(ScriptRegistry.load)
    raw: dict[str, Redis] = {}
    try:
        async with open_zen(_settings(url, tenant)) as zen:
            for name in ("state", "conversations"):
                raw[name] = raw_client(url, db=zen.redis.keyspace(name).db, max_connections=POOL)
            bench = Bench(zen, raw, scripts, sizes)
            await bench.setup()
            yield bench
            dbs = {zen.redis.keyspace(name).db for name in KEYSPACES}
        await drop_tenant(url, tenant, dbs)
    finally:
        for client in raw.values():
            await client.aclose(close_connection_pool=True)


@dataclass
class OpIds:
    """What the module measured: the comparisons and targets, and the marker memory."""

    outcome: Outcome
    memory: MarkerMemory
    ratio: float

    @property
    def comparisons(self) -> list[Comparison]:
        return self.outcome.comparisons

    def markdown(self) -> str:
        head, sep, rest = self.outcome.markdown().partition("### Targets\n")
        return head + self.memory.markdown() + "\n" + sep + rest

    def extra(self) -> dict[str, Any]:
        m = self.memory
        return {
            "batch": BATCH,
            **self.outcome.extra(),
            "marker_memory": {
                **asdict(m),
                "used_memory_per_marker": m.per_marker,
                "mb_per_million_writes": m.per_million_mb(m.per_marker),
                "memory_usage_mb_per_million_writes": m.per_million_mb(m.usage_mean),
                "server_us_per_transition": dict(
                    zip(("without", "with"), m.server_us, strict=True)
                ),
            },
            "ratio_with_marker_over_without": self.ratio,
        }


async def run(url: str, *, quick: bool) -> OpIds:
    """Measure every group in alternating rounds, then the marker memory."""
    sizes = QUICK if quick else FULL
    n = names(sizes)
    rounds, c = sizes.rounds, sizes.concurrency
    outcome = Outcome("op_ids: what an operation id's marker costs (same server, same run)")
    before = os.getloadavg()
    async with _opened(url, sizes) as b:
        watch = CpuWatch(await server_pid(url, lambda: b.raw.info("server")))
        attempts = 1 if quick else 3

        async def settled(
            label: str, measure: Callable[[], Awaitable[list[Comparison]]]
        ) -> list[Comparison]:
            return await outcome.settled(label, measure, watch=watch, attempts=attempts)

        async def transitions() -> list[Comparison]:
            plain, marked, zen = await measure_rounds(
                [
                    (n["plain"], fleet_round(b.raw_transition(b.plain, marker=False), c, k)),
                    (n["marked"], fleet_round(b.raw_transition(b.marked, marker=True), c, k)),
                    (n["zen"], fleet_round(b.zen_transition(b.zen_fleet), c, k)),
                ],
                rounds=rounds,
            )
            return [Comparison(marked, plain), Comparison(zen, plain), Comparison(zen, marked)]

        k = sizes.per_agent
        t = await settled(GROUPS[0], transitions)
        outcome.sections.append(
            (
                f"Transitions: {c} agents, one coroutine each, {k} transitions in a row per "
                "round (ops = transitions; p50/p99 of one transition)",
                t,
            )
        )
        hb = await settled(
            GROUPS[1],
            lambda: compare_all(
                (n["hb"], b.zen_heartbeats(b.zen_fleet)),
                [(n["hb_raw"], b.raw_heartbeats(b.zen_fleet))],
                rounds=rounds,
                calls=sizes.heartbeat_calls,
            ),
        )
        outcome.sections.append(
            ("Heartbeats: no marker (ops = heartbeats; p50/p99 of one call)", hb)
        )

        async def turns() -> list[Comparison]:
            per = sizes.per_thread
            plain, marked, zen = await measure_rounds(
                [
                    (
                        n["turn_plain"],
                        fleet_round(b.raw_turn(b.threads["plain"], dedupe=False), c, per),
                    ),
                    (
                        n["turn_marked"],
                        fleet_round(b.raw_turn(b.threads["marked"], dedupe=True), c, per),
                    ),
                    (n["turn_zen"], fleet_round(b.zen_turn(b.threads["zen"]), c, per)),
                ],
                rounds=rounds,
            )
            return [Comparison(marked, plain), Comparison(zen, plain), Comparison(zen, marked)]

        tu = await settled(GROUPS[2], turns)
        outcome.sections.append(
            (
                f"Conversation turns: {c} threads, one coroutine each, {sizes.per_thread} turns "
                "in a row per round (ops = turns; p50/p99 of one turn)",
                tu,
            )
        )
        memory = await b.marker_memory()
    outcome.loadavg = (before, os.getloadavg())
    ratio = t[0].ratio
    outcome.checks = [
        Check(
            "transition throughput with an op-id marker >= 0.90x without "
            f"(same agent_transition.lua by raw EVALSHA, {c} agents)",
            ratio,
            TARGET_RATIO,
            "x",
            "min",
            f"{t[0].scenario.ops_per_s:,.0f} vs {t[0].baseline.ops_per_s:,.0f} ops/s; p99 "
            f"{t[0].scenario.p99_ms:.3f} vs {t[0].baseline.p99_ms:.3f} ms",
        )
    ]
    outcome.notes += [
        f"Cost of the marker: with/without = {ratio:.3f}x transition throughput (raw EVALSHA, "
        f"same script); zen agents.transition (always a marker) runs at {t[2].ratio:.3f}x the "
        f"raw call with a marker and {t[1].ratio:.3f}x the raw call without. The marker adds "
        "a GET and a SET PX inside the script and one key (~"
        f"{memory.key_len} chars) to the request. On the server alone (pipelined, "
        "INFO commandstats) a transition takes "
        f"{memory.server_us[0]:.2f} us without a marker and {memory.server_us[1]:.2f} us with "
        f"one; at {c} concurrent agents a transition takes "
        f"{1e6 / t[0].baseline.ops_per_s:,.0f} us of wall time (1/throughput): the client, not "
        "the server, sets the pace, so the marker's server time is mostly hidden and the "
        "throughput ratio moves by a few percent from run to run either way.",
        f"Latency at {c} agents is mostly waiting for one of the {POOL} pooled connections: "
        f"{c} calls in flight at {t[0].baseline.ops_per_s:,.0f} ops/s make a mean of "
        f"{1000 * c / t[0].baseline.ops_per_s:,.0f} ms (Little's law), spread unevenly over "
        "the coroutines (a connection goes to whichever waiter wakes first), hence p99 far "
        "above p50 on every row alike; compare p99 between rows of this run, not with a "
        "target.",
        "Heartbeats carry no op id and no marker: agent_heartbeat.lua sets the lease expiry "
        "and the gauges to absolute values, so applying one twice has the effect of once; "
        "issue 13 left their cost unchanged (the row above is for reference, zen's bulk call "
        "against the same script by raw pipelined EVALSHA; heartbeat() is heartbeats() of one "
        "agent).",
        f"Conversation turns: with/without the dedupe key = {tu[0].ratio:.3f}x; zen's add_turn "
        "also sends a second command (the thread index's ZADD), hence its gap to the raw call.",
        f"Marker memory: {memory.per_marker:,.1f} B per marker (used_memory), "
        f"{memory.usage_mean:,.1f} B (MEMORY USAGE); "
        f"{memory.per_million_mb(memory.per_marker):,.1f} MB per 1M writes, held for "
        f"REDIS_OP_MARKER_TTL = {memory.ttl_s:,.0f} s.",
    ]
    return OpIds(outcome, memory, ratio)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few operations: a smoke run")
    parser.add_argument("--url", help="measure against this server instead of a private one")
    args = parser.parse_args(argv)
    with server_url(args.url) as url:
        made = asyncio.run(run(url, quick=args.quick))
    report = made.markdown()
    if not args.quick:
        save("op_ids", made.comparisons, {"loop": "asyncio", **made.extra()})
        save_markdown("op_ids", report)
    print(report)
    for check in made.outcome.checks:
        print(check.line())
    return report


if __name__ == "__main__":
    main()
