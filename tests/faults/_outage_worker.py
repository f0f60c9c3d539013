"""One worker process of the randomized outage checker (``test_outage_checker.py``).

Run from the checkout, by module or by path::

    python -m tests.faults._outage_worker CONFIG SLOT INCARNATION
    python tests/faults/_outage_worker.py CONFIG SLOT INCARNATION

``CONFIG`` is the JSON file the checker writes (settings, entities, seed, where the ledger and
the log go); ``SLOT`` names the worker (its outage journal is ``journal-<SLOT>``, kept across
restarts, so an incarnation started after a SIGKILL adopts and replays what the dead one
left); ``INCARNATION`` counts its starts. It opens zen, prints ``ready`` on stdout, and runs
``coroutines`` clients that each loop: pick a random write on the shared entities, give it a
fresh op id, write an ``invoke`` line to the ledger, perform it (retrying a BackendError with
the op id it names, a bounded number of times), write a ``complete`` line. On SIGTERM (or
after ``duration`` seconds) the clients finish their current operation, the worker waits
until its outage journal is replayed, writes a ``drained`` line and exits 0 (3 when the
replay stopped making progress, the journal not empty).

The ledger (``ledger-<SLOT>.<INCARNATION>.jsonl``): JSON lines, flushed one by one (not
fsync'd: a SIGKILLed process loses nothing it wrote, only the kernel's death would)::

    {"ev": "start", "slot": 0, "inc": 1, "pid": 123, "t": 5.1}
    {"ev": "invoke", "op": "s7w0i1c2n15", "kind": "transition", "entity": "oc-a1",
     "args": {...}, "slot": 0, "inc": 1, "coro": 2, "t": 7.25}
    {"ev": "complete", "op": "s7w0i1c2n15", "outcome": "ok-offline", "result": {...},
     "errors": [...], "t": 7.31}
    {"ev": "drained", "depth": 0, "active": false, "resolutions": 1, ..., "t": 15.0}

Outcomes: ``ok-online`` / ``ok-offline`` (a provisional, journaled acknowledgement) / ``ok``
(a cache set: its result does not say which) / ``refused`` (a typed ZenError that is not a
BackendError, with no earlier attempt that may have applied) / ``failed`` (every attempt
raised a BackendError saying it was not applied) / ``unknown`` (an attempt may have applied
it, and none was acknowledged). An ``invoke`` without its ``complete`` (the worker died) is
unknown too. An exception outside the ZenError tree (a library bug) is recorded with
``"untyped": true`` and retried like a BackendError that may have applied the write.
Times are ``time.monotonic()``, which every process of the machine shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, Final

import orjson

from zen_async import (
    AgentRecord,
    BackendError,
    DegradedError,
    Settings,
    TransitionResult,
    Zen,
    ZenError,
    open_zen,
)
from zen_async.logs import configure_logging

KINDS: Final = ("transition", "update", "turn", "publish", "cache", "read")
WEIGHTS: Final = (30, 14, 4, 20, 20, 12)
TARGETS: Final = ("ready", "running", "paused")
ATTEMPTS: Final = (1, 3, 10)
"""How many times one operation is tried; 1 leaves many timeouts as unknown outcomes."""
ATTEMPT_WEIGHTS: Final = (15, 35, 50)
HEARTBEAT_EVERY: Final = 2.0
DRAIN_POLL: Final = 0.05


class Ledger:
    """The worker's ledger file: one JSON object a line, flushed per line."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = path.open("ab")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


Call = Callable[[str], Awaitable[Any]]


class Worker:
    """One incarnation of worker ``slot``."""

    def __init__(self, config: dict[str, Any], slot: int, incarnation: int) -> None:
        self.config = config
        self.slot = slot
        self.inc = incarnation
        self.run_dir = Path(config["run_dir"])
        self.stop = asyncio.Event()
        self.ledger = Ledger(self.run_dir / f"ledger-{slot}.{incarnation}.jsonl")

    def settings(self) -> Settings:
        values = dict(self.config["settings"])
        values["redis_outage_journal"] = str(self.run_dir / f"journal-{self.slot}")
        return Settings(_env_file=None, **values)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        self.ledger.write(
            {"ev": "start", "slot": self.slot, "inc": self.inc, "pid": os.getpid(), "t": now()}
        )
        try:
            async with open_zen(self.settings()) as zen:
                await self._learn(zen)
                sys.stdout.write("ready\n")
                sys.stdout.flush()
                await self._load(zen)
                drained = await self._drain(zen)
        finally:
            self.ledger.close()
        return 0 if drained else 3

    async def _learn(self, zen: Zen) -> None:
        """Read the agents once: the last-known records offline checks are made against."""
        # The server may be down (a restart during an outage): then later reads learn them.
        with contextlib.suppress(ZenError):
            await zen.agents.get_agents(self.config["agents"])

    async def _load(self, zen: Zen) -> None:
        async def deadline() -> None:
            await asyncio.sleep(float(self.config["duration"]))
            self.stop.set()

        async with asyncio.TaskGroup() as tg:
            timer = tg.create_task(deadline())
            clients = [
                tg.create_task(self._client(zen, coro)) for coro in range(self.config["coroutines"])
            ]
            tg.create_task(self._heartbeats(zen))
            await asyncio.gather(*clients)
            timer.cancel()

    async def _heartbeats(self, zen: Zen) -> None:
        """Keep the agents' leases (the reaper would move them to ``error``)."""
        while not self.stop.is_set():
            with contextlib.suppress(ZenError):  # refused while degraded: the next one renews
                await zen.agents.heartbeats(self.config["agents"])
            try:
                await asyncio.wait_for(self.stop.wait(), HEARTBEAT_EVERY)
            except TimeoutError:
                continue

    async def _client(self, zen: Zen, coro: int) -> None:
        rng = random.Random(f"{self.config['seed']}/{self.slot}/{self.inc}/{coro}")
        n = 0
        while not self.stop.is_set():
            kind = rng.choices(KINDS, WEIGHTS)[0]
            if kind == "read":
                with contextlib.suppress(ZenError):  # refused while degraded: not recorded
                    await zen.agents.get_agent(rng.choice(self.config["agents"]))
            else:
                n += 1
                op_id = f"s{self.config['seed']}w{self.slot}i{self.inc}c{coro}n{n}"
                await self._operation(zen, kind, op_id, coro, rng)
            await asyncio.sleep(rng.uniform(*self.config["think"]))

    async def _operation(
        self, zen: Zen, kind: str, op_id: str, coro: int, rng: random.Random
    ) -> None:
        entity, args, call = self._plan(zen, kind, op_id, rng)
        self.ledger.write(
            {
                "ev": "invoke",
                "op": op_id,
                "kind": kind,
                "entity": entity,
                "args": args,
                "slot": self.slot,
                "inc": self.inc,
                "coro": coro,
                "t": now(),
            }
        )
        attempts = rng.choices(ATTEMPTS, ATTEMPT_WEIGHTS)[0]
        outcome, result, errors = await perform(kind, op_id, call, attempts)
        self.ledger.write(
            {
                "ev": "complete",
                "op": op_id,
                "outcome": outcome,
                "result": result,
                "errors": errors,
                "t": now(),
            }
        )

    def _plan(
        self, zen: Zen, kind: str, op_id: str, rng: random.Random
    ) -> tuple[str, dict[str, Any], Call]:
        """The entity, the ledger's args and the call (given the op id to use) of one op."""
        config = self.config
        if kind == "transition":
            agent, target = rng.choice(config["agents"]), rng.choice(TARGETS)

            async def transition(op: str) -> Any:
                return await zen.agents.transition(agent, target, reason=op_id, op_id=op)

            return agent, {"to": target}, transition
        if kind == "update":
            agent = rng.choice(config["agents"])
            metadata = {"op": op_id, "w": self.slot}

            async def update(op: str) -> Any:
                return await zen.agents.update_agent(agent, metadata=metadata, op_id=op)

            return agent, {"metadata": metadata}, update
        if kind == "turn":
            thread, role = rng.choice(config["threads"]), rng.choice(("user", "assistant"))

            async def turn(op: str) -> Any:
                return await zen.conversations.add_turn(thread, role, f"op {op_id}", op_id=op)

            return thread, {"role": role}, turn
        if kind == "publish":
            stream = config["stream"]
            data = {"op": op_id, "w": self.slot}

            async def publish(op: str) -> Any:
                return await zen.events.publish(
                    stream, "tick", data, idempotency_key=op_id, op_id=op
                )

            return stream, {}, publish
        key = rng.choice(config["cache_keys"])
        value = {"op": op_id}

        async def cache_set(op: str) -> Any:
            await zen.cache.set(key, value, op_id=op)

        return key, {}, cache_set

    async def _drain(self, zen: Zen) -> bool:
        """Wait until this worker's outage journal is replayed and degraded mode is over, or
        until the replay makes no progress for ``stall_seconds`` (the server is back by then:
        a stalled journal is a replayer that stopped); write the ``drained`` line."""
        degraded = zen.redis.degraded
        stall = float(self.config["stall_seconds"])
        depth, progress = degraded.journal.depth, time.monotonic()
        while degraded.journal.depth > 0 or degraded.active:
            if degraded.journal.depth < depth:
                depth, progress = degraded.journal.depth, time.monotonic()
            if time.monotonic() - progress > stall:
                break
            await asyncio.sleep(DRAIN_POLL)
        status = degraded.status()
        drained = status["journal_depth"] == 0 and not status["active"]
        self.ledger.write(
            {
                "ev": "drained",
                "ok": drained,
                "depth": status["journal_depth"],
                "active": status["active"],
                "resolutions": status["resolutions"],
                "journaled": status["journaled_total"],
                "replayed": status["replayed_total"],
                "t": now(),
            }
        )
        return drained


async def perform(
    kind: str, op_id: str, call: Call, attempts: int
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """Call until acknowledged, retrying a BackendError with the op id it names, at most
    ``attempts`` times. Returns the outcome, the acknowledged result and the errors seen."""
    errors: list[dict[str, Any]] = []
    maybe = False
    op = op_id
    for attempt in range(attempts):
        try:
            reply = await call(op)
        except BackendError as exc:
            # A DegradedError never reached the server; any other failure of a sent write
            # may have applied it (what maybe_applied says; the checker verifies the claim).
            maybe = maybe or exc.maybe_applied
            errors.append(
                {
                    "type": type(exc).__name__,
                    "maybe": exc.maybe_applied,
                    "degraded": isinstance(exc, DegradedError),
                    "op_id": exc.op_id,
                    "message": str(exc)[:300],
                }
            )
            op = exc.op_id or op
            if attempt + 1 < attempts:
                await asyncio.sleep(min(0.4, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
            continue
        except ZenError as exc:
            errors.append({"type": type(exc).__name__, "message": str(exc)[:300]})
            return ("unknown" if maybe else "refused"), {}, errors
        except Exception as exc:  # outside the ZenError tree: recorded and checked
            # A library bug (every error it raises is a ZenError): the write may have been
            # sent, so it is retried with its own op id, as after a BackendError.
            maybe = True
            errors.append({"type": type(exc).__name__, "untyped": True, "message": repr(exc)})
            if attempt + 1 < attempts:
                await asyncio.sleep(min(0.4, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
            continue
        return (*acknowledged(kind, reply), errors)
    return ("unknown" if maybe else "failed"), {}, errors


def acknowledged(kind: str, reply: Any) -> tuple[str, dict[str, Any]]:
    """The outcome and the ledger's result of an acknowledged write."""
    if isinstance(reply, TransitionResult):
        outcome = "ok-offline" if reply.provisional else "ok-online"
        return outcome, {
            "from": reply.from_state.value,
            "to": reply.to_state.value,
            "version": reply.version,
            "event_id": reply.event_id,
        }
    if isinstance(reply, AgentRecord):
        outcome = "ok-offline" if reply.provisional else "ok-online"
        return outcome, {"version": reply.version, "stale": reply.stale}
    if kind == "turn":
        return ("ok-offline" if reply == 0 else "ok-online"), {"count": reply}
    if kind == "publish":
        offline = str(reply).startswith("journal:")
        return ("ok-offline" if offline else "ok-online"), {"event_id": reply}
    return "ok", {}


def now() -> float:
    return time.monotonic()


def main(argv: list[str]) -> int:
    config_path, slot, incarnation = argv[1], int(argv[2]), int(argv[3])
    config: dict[str, Any] = orjson.loads(Path(config_path).read_bytes())
    # The library's logs (JSON lines on stderr) go to this incarnation's log file.
    log = os.open(
        Path(config["run_dir"]) / f"worker-{slot}.{incarnation}.log",
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        0o600,
    )
    os.dup2(log, 2)
    os.close(log)
    configure_logging("warning")
    return asyncio.run(Worker(config, slot, incarnation).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
