"""The arq side of ``benchmarks/tasks.py``: runs in ``benchmarks/.arq-venv`` (arq pins
``redis<6``, zen_async needs ``redis>=8.1``, so arq cannot share the project's environment),
imports nothing of the project, and is driven over stdin/stdout, one JSON line each way.

    .arq-venv/bin/python benchmarks/_arq_side.py --url redis://127.0.0.1:PORT --db 8

Each ``{"cmd": "round", "tasks": N, "max_jobs": C, "poll_delay": S}`` line: a new queue and
an arq pool, then the clock starts: N jobs are enqueued one by one with ``enqueue_job``,
then an arq ``Worker`` on the same pool (``max_jobs=C``, ``poll_delay=S``, ``burst=True``,
default result keeping) executes them (a no-op coroutine) until the queue is empty; the
round ends when the last job has finished (its result stored). The reply: the tasks done,
the seconds it took, and each job's latency from the start of its ``enqueue_job`` call to
the end of its execution (``after_job_end``), in microseconds. ``{"cmd": "cleanup"}`` deletes every
``arq:*`` key of the DB; ``{"cmd": "quit"}`` (or end of input) exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from arq import create_pool  # type: ignore[import-not-found, unused-ignore]
from arq.connections import RedisSettings  # type: ignore[import-not-found, unused-ignore]
from arq.worker import Worker  # type: ignore[import-not-found, unused-ignore]


async def noop(ctx: dict[str, Any], i: int) -> int:
    """The job: does nothing, returns its argument (stored as the job's result)."""
    return i


async def one_round(settings: Any, tasks: int, max_jobs: int, poll_delay: float) -> dict[str, Any]:
    queue = f"arq:queue:bench-{uuid.uuid4().hex[:8]}"
    pool = await create_pool(settings, default_queue_name=queue)
    done: dict[str, float] = {}

    async def after_job_end(ctx: dict[str, Any]) -> None:
        done[ctx["job_id"]] = time.perf_counter()

    worker = Worker(
        functions=[noop],
        redis_pool=pool,
        queue_name=queue,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        burst=True,
        handle_signals=False,
        after_job_end=after_job_end,
    )
    sent: dict[str, float] = {}
    try:
        started = time.perf_counter()
        for i in range(tasks):
            t0 = time.perf_counter()
            job = await pool.enqueue_job("noop", i)
            sent[job.job_id] = t0
        await worker.main()  # burst: returns once the queue is empty and every job finished
        elapsed = max(done.values()) - started
    finally:
        await worker.close()  # closes the pool too
    return {
        "ops": len(done),
        "elapsed": elapsed,
        "lat_us": [round((done[j] - sent[j]) * 1e6) for j in sent if j in done],
    }


async def cleanup(settings: Any) -> int:
    pool = await create_pool(settings)
    try:
        keys = [k async for k in pool.scan_iter(match="arq:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await pool.unlink(*keys[i : i + 1000])
        return len(keys)
    finally:
        await pool.aclose()


async def serve(url: str, db: int) -> None:
    parts = urlsplit(url)
    settings = RedisSettings(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        database=db,
        username=parts.username,
        password=parts.password,
    )
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        if command["cmd"] == "cleanup":
            reply: dict[str, Any] = {"deleted": await cleanup(settings)}
        else:
            reply = await one_round(
                settings, command["tasks"], command["max_jobs"], command["poll_delay"]
            )
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", type=int, default=8)
    args = parser.parse_args(argv)
    import logging  # noqa: PLC0415 - arq logs each job at INFO: keep stderr quiet

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.url, args.db))


if __name__ == "__main__":
    main()
