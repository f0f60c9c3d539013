"""Bulk operations by shard: every key of one agent shard shares the hash tag ``{z<shard>}``,
so one Lua call can act on many agents of a shard, on one Cluster slot, atomically.

:func:`run_chunks` sends the calls of one bulk operation concurrently (a call per chunk of
agents of one shard), building each call's arguments just before it is sent and handling its
reply as soon as it arrives: the client's work on one chunk (packing its arguments, decoding
its reply) overlaps the server's work on the others, where one pipelined round trip would do
all the client's work before and after all the server's.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio

from zen_async.errors import ZenError
from zen_async.store import Arg, Keyspace

__all__ = ["MAX_CHUNK", "Chunk", "run_chunks", "shard_chunks", "shard_of"]

MAX_CHUNK: Final = 1000
"""Most agents per bulk Lua call, whatever REDIS_PIPELINE_BATCH_SIZE says: it bounds how
long one call holds the server, and the arguments a script unpacks at once."""

Chunk = tuple[int, list[int]]
"""A shard and positions (into the caller's list of agents) of agents of that shard."""


def shard_of(agent_id: str, shards: int) -> int:
    """The shard of an agent: the CRC32 of its id modulo the shard count. The same as
    ``zen_async.events.envelope.agent_shard`` (a test checks), repeated here so that the
    port allocator does not import the events package."""
    return zlib.crc32(agent_id.encode()) % shards


def shard_chunks(agent_ids: Sequence[str], shards: int, size: int) -> list[Chunk]:
    """The positions of ``agent_ids`` grouped by shard, in chunks of at most ``size`` (and
    :data:`MAX_CHUNK`), each chunk in input order; the chunks of one shard are in order too."""
    size = max(1, min(size, MAX_CHUNK))
    groups: dict[int, list[int]] = {}
    for position, agent_id in enumerate(agent_ids):
        shard = shard_of(agent_id, shards)
        group = groups.get(shard)
        if group is None:
            groups[shard] = [position]
        else:
            group.append(position)
    return [
        (shard, group[i : i + size])
        for shard, group in groups.items()
        for i in range(0, len(group), size)
    ]


async def run_chunks(
    ks: Keyspace,
    script: str,
    chunks: Sequence[Chunk],
    build: Callable[[Chunk], tuple[Sequence[str], Sequence[Arg]]],
    on_reply: Callable[[Chunk, Any], None],
) -> None:
    """Run ``script`` once per chunk: ``build(chunk)`` gives the call's KEYS and ARGV, and
    ``on_reply(chunk, reply)`` gets its reply, or the ZenError of a call that failed.

    Shards run concurrently; the chunks of one shard run one after another, in order (so two
    operations on one agent in one bulk call happen in the order given).
    """
    by_shard: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_shard.setdefault(chunk[0], []).append(chunk)

    async def run_shard(queue: list[Chunk]) -> None:
        for chunk in queue:
            keys, args = build(chunk)
            try:
                reply = await ks.run_script(script, keys, args)
            except ZenError as exc:
                reply = exc
            on_reply(chunk, reply)

    if len(by_shard) == 1:  # one shard (a single agent, say): no task group needed
        await run_shard(next(iter(by_shard.values())))
        return
    async with anyio.create_task_group() as tasks:
        for queue in by_shard.values():
            tasks.start_soon(run_shard, queue)
