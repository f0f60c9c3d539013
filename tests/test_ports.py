"""Port leases on real servers: allocate, renew, release, exhaustion, expiry and reclaim,
fencing, per-agent operations, overlapping ranges, validation, one allocator per host shared
by every tenant (and no tenant touching another's leases), the move of leases from the
per-tenant keys of earlier versions, the bounded outage reserves, and two processes
allocating 5000 ports at once without a duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from mcp import Client
from mcp.types import TextContent

from zen_async import CapacityError, ConflictError, ValidationError, Zen, open_zen
from zen_async.agents import AgentCapabilities
from zen_async.agents.port_reserve import ReservingPortAllocator, reserve_limit
from zen_async.agents.ports import PortAllocator, PortLease
from zen_async.degraded import JournalEntry
from zen_async.mcp_server import build_server
from zen_async.testing import free_port
from zen_async.testing.deployments import Target
from zen_async.testing.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def allocate_when_free(
    alloc: PortAllocator, agent_id: str, port_range: tuple[int, int], *, deadline: float = 10.0
) -> PortLease:
    """Allocate, retrying while the range is exhausted (its leases have not expired yet)."""
    until = time.monotonic() + deadline
    while True:
        try:
            return await alloc.allocate(agent_id, port_range=port_range)
        except CapacityError:
            if time.monotonic() > until:
                raise
            await asyncio.sleep(0.02)


@pytest.fixture
async def szen(standalone: Target) -> AsyncIterator[Zen]:
    """An open Zen on the Redis standalone server."""
    async with open_zen(standalone.settings()) as opened:
        yield opened


# --- every topology -----------------------------------------------------------------------


async def test_allocate_renew_release(zen: Zen) -> None:
    alloc = PortAllocator(zen.redis, host="node-a")
    lease = await alloc.allocate("agent-1")
    assert lease.host == "node-a"
    assert lease.agent_id == "agent-1"
    assert 3284 <= lease.port < 10000, "the default range comes from the settings"
    assert lease.token >= 1
    assert await alloc.leases("agent-1") == [lease]

    renewed = await alloc.renew(lease)
    assert renewed.expires_at >= lease.expires_at
    assert (renewed.port, renewed.token) == (lease.port, lease.token), "renewal keeps the lease"

    second = await alloc.allocate("agent-1")
    assert second.port != lease.port
    assert second.token > lease.token
    stats = await alloc.stats()
    assert (stats.in_use, stats.free, stats.total) == (2, 6714, 6716)

    assert await alloc.release(renewed) is True
    assert await alloc.release(renewed) is False, "a second release finds nothing to release"
    assert await alloc.leases("agent-1") == [second]
    third = await alloc.allocate("agent-2")
    assert third.port == lease.port, "a released port is handed out again (lowest first)"
    assert third.token > second.token


async def test_exhaustion_raises_capacity_error_with_range_and_count(zen: Zen) -> None:
    alloc = PortAllocator(zen.redis, host="node-a")
    ports = {(await alloc.allocate(f"a{i}", port_range=(4000, 4003))).port for i in range(3)}
    assert ports == {4000, 4001, 4002}
    with pytest.raises(
        CapacityError, match=r"4000-4003 .* 3 of 3 ports in use \(none held in outage reserves"
    ):
        await alloc.allocate("a3", port_range=(4000, 4003))
    stats = await alloc.stats(port_range=(4000, 4003))
    assert (stats.in_use, stats.free) == (3, 0)


async def test_a_refused_allocation_keeps_the_host_of_a_lease_the_agent_holds(zen: Zen) -> None:
    """A CapacityError takes back the host the allocation noted, unless the agent still holds
    a lease there: release_agent must find that lease afterwards."""
    alloc = PortAllocator(zen.redis, host="node-a")
    held = await alloc.allocate("a0", port_range=(4100, 4101))
    with pytest.raises(CapacityError):
        await alloc.allocate("a0", port_range=(4100, 4101))
    with pytest.raises(CapacityError):
        await alloc.allocate("a1", port_range=(4100, 4101))
    assert await alloc.leases("a1") == []
    assert await alloc.leases("a0") == [held]
    assert await alloc.release_agent("a0") == 1


async def test_fencing_tokens_strictly_increase_per_host(zen: Zen) -> None:
    first = PortAllocator(zen.redis, host="node-a")
    second = PortAllocator(zen.redis, host="node-a")
    tokens: list[int] = []
    for i in range(6):
        alloc = first if i % 2 else second
        lease = await alloc.allocate(f"agent-{i}", port_range=(5000 + 5 * (i % 3), 5020))
        tokens.append(lease.token)
        if i % 2:
            await alloc.release(lease)  # a reused port still gets a new, larger token
    assert tokens == sorted(set(tokens)), f"tokens must strictly increase: {tokens}"
    other = await first.allocate("agent-x", host="node-b", port_range=(5000, 5020))
    assert other.token == 1, "each host has its own token sequence"


async def test_expired_lease_is_reissued_and_its_owner_is_fenced(zen: Zen) -> None:
    short = PortAllocator(zen.redis, host="node-a", lease_ttl=0.2)
    other = PortAllocator(zen.redis, host="node-a")
    stale = await short.allocate("frozen", port_range=(6000, 6001))
    fresh = await allocate_when_free(other, "newcomer", (6000, 6001))
    assert fresh.port == stale.port == 6000
    assert fresh.token > stale.token

    with pytest.raises(ConflictError, match=r"port 6000 on host node-a was reissued"):
        await short.renew(stale)
    with pytest.raises(ConflictError, match=r"port 6000 on host node-a was reissued"):
        await short.release(stale)
    assert await short.renew_agent("frozen") == 0
    assert await short.leases("frozen") == []
    assert await other.leases("newcomer") == [fresh], "the new owner's lease is untouched"
    assert (await other.renew(fresh)).token == fresh.token


async def test_reclaim_expired_returns_ports_to_the_free_set(zen: Zen) -> None:
    alloc = PortAllocator(zen.redis, host="node-a", lease_ttl=0.2)
    leases = [await alloc.allocate(f"a{i}", port_range=(7000, 7003)) for i in range(3)]
    reclaimed = 0

    async def all_reclaimed() -> bool:
        nonlocal reclaimed
        reclaimed += await alloc.reclaim_expired()
        return reclaimed == 3

    await wait_for(all_reclaimed, what="the three expired leases reclaimed")
    stats = await alloc.stats(port_range=(7000, 7003))
    assert (stats.in_use, stats.free, stats.host_in_use) == (0, 3, 0)
    for lease in leases:
        assert await alloc.leases(lease.agent_id) == []
        with pytest.raises(ConflictError, match=rf"port {lease.port} .* no longer leased"):
            await alloc.renew(lease)
        assert await alloc.release(lease) is False


async def test_renew_agent_and_release_agent_cover_every_host(zen: Zen) -> None:
    alloc = PortAllocator(zen.redis, host="node-a")
    mine = [
        await alloc.allocate("worker", port_range=(8000, 8100)),
        await alloc.allocate("worker", port_range=(8000, 8100)),
        await alloc.allocate("worker", host="node-b", port_range=(8000, 8100)),
    ]
    theirs = await alloc.allocate("worker-2", port_range=(8000, 8100))
    assert sorted(await alloc.leases("worker"), key=lambda x: (x.host, x.port)) == mine

    assert await alloc.renew_agent("worker") == 3
    after = await alloc.leases("worker")
    assert [(x.host, x.port, x.token) for x in after] == [(x.host, x.port, x.token) for x in mine]
    assert all(a.expires_at >= b.expires_at for a, b in zip(after, mine, strict=True))

    assert await alloc.release_agent("worker") == 3
    assert await alloc.leases("worker") == []
    assert await alloc.renew_agent("worker") == 0
    assert await alloc.release_agent("worker") == 0
    assert await alloc.leases("worker-2") == [theirs], "another agent's lease is untouched"


async def test_renew_agents_renews_many_agents_on_every_host_in_few_calls(zen: Zen) -> None:
    # Two allocators of the same ports: one leasing for 5 s, one renewing for 10 minutes.
    short = PortAllocator(zen.redis, host="bulk-a", lease_ttl=5.0)
    long = PortAllocator(zen.redis, host="bulk-a", lease_ttl=600.0)
    holders = [f"bulk-{i}" for i in range(40)]
    before: dict[tuple[str, int], PortLease] = {}
    for i, agent_id in enumerate(holders):
        for host in ["bulk-a", "bulk-b"][: 1 + i % 2]:
            lease = await short.allocate(agent_id, host=host, port_range=(9000, 9200))
            before[(host, lease.port)] = lease
    released = await short.allocate("bulk-gone", port_range=(9000, 9200))
    await short.release(released)
    counts = await long.renew_agents([*holders, "bulk-gone", "bulk-none", holders[0]])
    assert counts == [1 + i % 2 for i in range(40)] + [0, 0, 1]
    for agent_id in holders:
        for lease in await short.leases(agent_id):
            assert lease.expires_at > before[(lease.host, lease.port)].expires_at
    with pytest.raises(ValidationError):
        await long.renew_agents(["fine", "bad/id"])


async def test_not_bindable_port_is_quarantined_not_handed_out(target: Target) -> None:
    # The ports the kernel hands out are ephemeral ones: the configured range must hold them.
    settings = target.settings(redis_port_range_start=1024, redis_port_range_end=65535)
    async with open_zen(settings) as zen:
        await not_bindable_port_is_quarantined(zen)


async def not_bindable_port_is_quarantined(zen: Zen) -> None:
    alloc = PortAllocator(zen.redis, check_bindable=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port: int = busy.getsockname()[1]
        with pytest.raises(CapacityError, match=r"1 quarantined"):
            await alloc.allocate("agent-1", port_range=(port, port + 1))
    stats = await alloc.stats(port_range=(port, port + 1))
    assert (stats.in_use, stats.quarantined) == (1, 1)
    assert await alloc.leases("agent-1") == []
    bindable = free_port()
    lease = await alloc.allocate("agent-1", port_range=(bindable, bindable + 1))
    assert lease.port == bindable, "a bindable port is handed out after the check"


# --- standalone only ------------------------------------------------------------------------


async def test_overlapping_ranges_on_one_host_never_share_a_port(szen: Zen) -> None:
    alloc = PortAllocator(szen.redis, host="node-a")
    low, high = (5000, 5010), (5005, 5015)
    owners: dict[int, str] = {}
    # high takes 5005-5009, then low must skip them, then high finds the rest above low.
    for i, port_range in enumerate([high] * 5 + [low] * 5 + [high] * 5):
        lease = await alloc.allocate(f"a{i}", port_range=port_range)
        assert lease.port not in owners, f"port {lease.port} was handed out twice"
        owners[lease.port] = lease.agent_id
    assert set(owners) == set(range(5000, 5015))
    for port_range in (low, high):
        with pytest.raises(CapacityError):
            await alloc.allocate("late", port_range=port_range)
        assert (await alloc.stats(port_range=port_range)).in_use == 10
    assert await alloc.release_port(owners[5007], 5007) is True
    assert (await alloc.allocate("late", port_range=low)).port == 5007


async def test_random_allocations_and_releases_match_a_model(standalone: Target) -> None:
    """The free intervals behave like a set of free ports: every allocation takes the lowest
    free port of its range, a release gives it back, and a lost free structure is rebuilt
    from the used ports."""
    settings = standalone.settings(redis_port_range_start=1, redis_port_range_end=65535)
    async with open_zen(settings) as zen:
        await allocations_match_a_model(zen)


async def allocations_match_a_model(szen: Zen) -> None:
    alloc = PortAllocator(szen.redis, host="node-a")
    ks = szen.redis.keyspace("state")
    free_key = "zen:hosts:{node-a}:free"
    rng = random.Random(3284)
    free = set(range(100, 140))
    held: dict[int, PortLease] = {}
    for step in range(400):
        roll = rng.random()
        if roll < 0.55:
            start = rng.randrange(100, 140)
            port_range = (start, rng.randrange(start + 1, 141))
            expected = min((p for p in free if port_range[0] <= p < port_range[1]), default=None)
            if expected is None:
                with pytest.raises(CapacityError):
                    await alloc.allocate(f"a{step}", port_range=port_range)
                continue
            lease = await alloc.allocate(f"a{step}", port_range=port_range)
            assert lease.port == expected, f"step {step}: lowest free port of {port_range}"
            free.discard(lease.port)
            held[lease.port] = lease
        elif roll < 0.95 and held:
            lease = held.pop(rng.choice(sorted(held)))
            assert await alloc.release(lease) is True
            free.add(lease.port)
        else:
            await ks.delete(free_key)  # rebuilt on next use
    for low, high in ((100, 140), (100, 110), (120, 121), (133, 140)):
        stats = await alloc.stats(port_range=(low, high))
        assert stats.free == len([p for p in free if low <= p < high])
    # the last step may have dropped the free intervals: this allocation rebuilds them
    assert (await alloc.allocate("edge", port_range=(65534, 65535))).port == 65534
    intervals = [
        tuple(int(x) for x in m.split(b":")) for m in await ks.execute("ZRANGE", free_key, 0, -1)
    ]
    covered = {p for s, e in intervals for p in range(max(s, 100), min(e, 140))}
    assert covered == free
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(intervals)), (
        f"free intervals must stay merged (at most one per gap between leases): {intervals}"
    )
    assert (intervals[0][0], intervals[-1]) == (1, (65535, 65536))


async def test_expired_lease_cannot_be_renewed_even_before_it_is_reissued(szen: Zen) -> None:
    alloc = PortAllocator(szen.redis, host="node-a", lease_ttl=0.2)
    lease = await alloc.allocate("sleepy", port_range=(7100, 7101))

    async def expired() -> bool:
        return (await alloc.stats(port_range=(7100, 7101))).host_expired == 1

    await wait_for(expired, what="the lease past its expiry")
    with pytest.raises(ConflictError, match=r"port 7100 on host node-a: .* expired .* ago"):
        await alloc.renew(lease)
    assert await alloc.renew_agent("sleepy") == 0, "an expired lease is not revived"
    assert await alloc.leases("sleepy") == []
    assert await alloc.reclaim_expired("node-a") == 1
    assert (await alloc.stats(port_range=(7100, 7101))).in_use == 0


async def test_seed_allocate_port_and_release_port(szen: Zen) -> None:
    alloc = PortAllocator(szen.redis)
    port = await alloc.allocate_port("agent-1")
    assert 3284 <= port < 10000
    assert await alloc.allocate_port("agent-2", port_range=(9000, 9001)) == 9000
    assert await alloc.release_port("agent-2", port) is False, "not agent-2's port"
    assert await alloc.release_port("agent-1", port) is True
    assert await alloc.release_port("agent-1", port) is False


async def test_seed_allocate_port_without_a_range_uses_the_configured_range(
    standalone: Target,
) -> None:
    """RedisManager.allocate_port(agent) leases from REDIS_PORT_RANGE_START/END, not from the
    seed's literal (3284, 10000); an explicit range still wins."""
    settings = standalone.settings(redis_port_range_start=20000, redis_port_range_end=20100)
    async with open_zen(settings) as zen:
        assert await zen.redis.allocate_port("agent-1") == 20000
        assert await zen.redis.allocate_port("agent-2", None) == 20001
        assert await zen.redis.allocate_port("agent-3", (20050, 20051)) == 20050
        with pytest.raises(ValidationError, match=r"REDIS_PORT_RANGE_START"):
            await zen.redis.allocate_port("agent-4", (9000, 9001))
        assert await zen.redis.release_port("agent-1", 20000) is True


async def test_validation_errors_write_nothing(szen: Zen) -> None:
    alloc = PortAllocator(szen.redis, host="node-a")
    lease = PortLease(4000, "node-a", "ok", 1, datetime.now(UTC))
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: alloc.allocate(""),
        lambda: alloc.allocate("a" * 129),
        lambda: alloc.allocate("has space"),
        lambda: alloc.allocate("brace{tag}"),
        lambda: alloc.allocate("ok", host="bad host"),
        lambda: alloc.allocate("ok", host="{x}"),
        lambda: alloc.allocate("ok", port_range=(0, 10)),
        lambda: alloc.allocate("ok", port_range=(10, 10)),
        lambda: alloc.allocate("ok", port_range=(10, 5)),
        lambda: alloc.allocate("ok", port_range=(1, 70000)),
        lambda: alloc.allocate("ok", port_range=(True, 5)),
        lambda: alloc.allocate("ok", port_range=(1, 2)),  # outside REDIS_PORT_RANGE: expected
        lambda: alloc.allocate("ok", port_range=(3284, 10001)),
        lambda: alloc.allocate_port("ok", (3283, 3290)),
        lambda: alloc.release_port("ok", 0),
        lambda: alloc.release_port("ok", 65536),
        lambda: alloc.renew_agent("bad/id"),
        lambda: alloc.release_agent(""),
        lambda: alloc.leases("x" * 200),
        lambda: alloc.renew(PortLease(4000, "bad host", "ok", 1, lease.expires_at)),
        lambda: alloc.release(PortLease(0, "node-a", "ok", 1, lease.expires_at)),
        lambda: alloc.reclaim_expired("{x}"),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match=r"expected"):
            await call()
    with pytest.raises(ValidationError, match=r"lease_ttl=0: expected a positive number"):
        PortAllocator(szen.redis, lease_ttl=0)
    with pytest.raises(ValidationError, match=r"host='a b'"):
        PortAllocator(szen.redis, host="a b")
    ks = szen.redis.keyspace("state")
    assert await ks.execute("DBSIZE") == 0, "a refused call must not write anything"


async def test_capacity_failure_counts_as_a_health_event(standalone: Target) -> None:
    settings = standalone.settings(redis_alert_port_failures_per_minute=0)
    async with open_zen(settings) as zen:
        alloc = PortAllocator(zen.redis, host="node-a")
        await alloc.allocate("a", port_range=(4000, 4001))
        with pytest.raises(CapacityError):
            await alloc.allocate("b", port_range=(4000, 4001))
        status = await zen.redis.check_health()
        assert "port_allocation_failures" in [a["name"] for a in status["alerts"]]


async def test_on_event_is_awaited_after_allocate_release_and_reclaim(szen: Zen) -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []

    async def record(event_type: str, agent_id: str, data: dict[str, Any]) -> None:
        events.append((event_type, agent_id, data))

    alloc = PortAllocator(szen.redis, host="node-a", lease_ttl=0.2, on_event=record)
    kept = await alloc.allocate("a", port_range=(4000, 4010))
    assert events == [("port_allocated", "a", {"port": 4000, "host": "node-a", "fencing_token": 1})]
    assert await alloc.release(kept)
    assert events[-1] == (
        "port_released",
        "a",
        {"port": 4000, "host": "node-a", "fencing_token": 1},
    )
    await alloc.allocate("b", port_range=(4000, 4010))

    async def reclaimed() -> bool:
        await alloc.reclaim_expired()
        return events[-1][0] == "port_reclaimed"

    await wait_for(reclaimed, what="the expired lease reclaimed")
    assert events[-1] == (
        "port_reclaimed",
        "b",
        {"port": 4000, "host": "node-a", "fencing_token": 2},
    )

    async def broken(event_type: str, agent_id: str, data: dict[str, Any]) -> None:
        raise RuntimeError("audit sink down")

    failing = PortAllocator(szen.redis, host="node-a", on_event=broken)
    lease = await failing.allocate("c", port_range=(4000, 4010))
    assert await failing.leases("c") == [lease], "a failing hook does not undo the allocation"


async def test_a_resent_allocation_returns_the_same_lease(szen: Zen) -> None:
    """The allocation script is declared idempotent: a resend after a lost reply (same
    operation id) must not lease a second port."""
    ks = szen.redis.keyspace("state")
    names = ("free", "used", "exp", "owner", "byagent", "quar", "resv", "seq", "op:same-id")
    keys = [f"zen:hosts:{{node-a}}:{name}" for name in names]
    args: list[str | int] = ["default/a", 4000, 4010, 30_000, 128, "node-a", 60_000, ""]
    first = await ks.run_script("port_allocate", keys, args)
    again = await ks.run_script("port_allocate", keys, args)
    assert first[:3] == again[:3]
    assert (
        await PortAllocator(szen.redis, host="node-a").stats(port_range=(4000, 4010))
    ).in_use == 1


# --- one allocator per host, shared by every tenant ------------------------------------------


async def test_two_tenants_on_one_host_never_get_the_same_port(zen: Zen) -> None:
    """A port is the host's: tenants a and b, with the same agent ids, draw from one
    allocator, so together they fill a range once, with one token sequence."""
    a, b = zen.for_tenant("a").ports, zen.for_tenant("b").ports
    window = (4000, 4006)
    leases = [await (a if i % 2 else b).allocate("worker", port_range=window) for i in range(6)]
    assert sorted(lease.port for lease in leases) == list(range(4000, 4006)), (
        f"a port was leased to both tenants: {[lease.port for lease in leases]}"
    )
    tokens = [lease.token for lease in leases]
    assert tokens == sorted(set(tokens)), "one fencing sequence per host, across tenants"
    for ports in (a, b):
        with pytest.raises(CapacityError, match=r"6 of 6 ports in use"):
            await ports.allocate("late", port_range=window)
        assert (await ports.stats(port_range=window)).in_use == 6, "occupancy counts every tenant"
    assert await a.leases("worker") == [lease for i, lease in enumerate(leases) if i % 2]
    assert await b.leases("worker") == [lease for i, lease in enumerate(leases) if not i % 2]
    assert await b.release_agent("worker") == 3
    assert await a.leases("worker") == [lease for i, lease in enumerate(leases) if i % 2]


async def test_a_tenant_can_neither_see_renew_release_nor_take_over_anothers_lease(
    zen: Zen,
) -> None:
    a, b = zen.for_tenant("a").ports, zen.for_tenant("b").ports
    lease = await a.allocate("secret-agent", port_range=(4000, 4001))
    assert await b.leases("secret-agent") == [], "b sees no lease of a's agent"
    assert await b.renew_agent("secret-agent") == 0
    assert await b.release_agent("secret-agent") == 0
    assert await b.release_port("secret-agent", lease.port) is False
    forged = replace(lease, agent_id="intruder")
    for call in (b.renew, b.release):
        for claimed in (lease, forged):
            with pytest.raises(ConflictError, match=r"port 4000 .* held by another tenant$") as e:
                await call(claimed)
            if claimed is forged:
                assert "secret-agent" not in str(e.value), "no agent id of a reaches b"
    handover = JournalEntry(
        op_id="op-1",
        seq=1,
        kind="ports.assign",
        tenant="b",
        args={
            "agent_id": "intruder",
            "host": lease.host,
            "port": lease.port,
            "fencing_token": lease.token,
            "reserve": "secret-agent",
        },
        at=0.0,
    )
    with pytest.raises(ConflictError, match=r"it is held by another tenant, so it cannot"):
        await b.replay_journaled(handover)
    assert await a.leases("secret-agent") == [lease], "a's lease is untouched"
    assert (await a.renew(lease)).token == lease.token
    assert await a.release(lease) is True


async def test_another_tenants_lease_reclaimed_on_the_way_is_not_reported_here(zen: Zen) -> None:
    """An allocation reclaims expired leases of every tenant; only its own tenant's become
    its events (another tenant's agent id must not enter this tenant's audit trail)."""
    seen: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}

    def recorder(tenant: str) -> Callable[[str, str, dict[str, Any]], Awaitable[None]]:
        async def record(event_type: str, agent_id: str, data: dict[str, Any]) -> None:
            seen[tenant].append((event_type, agent_id))

        return record

    a = PortAllocator(zen.redis, tenant="a", host="node-a", lease_ttl=0.2, on_event=recorder("a"))
    b = PortAllocator(zen.redis, tenant="b", host="node-a", on_event=recorder("b"))
    gone = await a.allocate("a-agent", port_range=(4000, 4001))
    taken = await allocate_when_free(b, "b-agent", (4000, 4001))
    assert taken.port == gone.port
    assert seen == {"a": [("port_allocated", "a-agent")], "b": [("port_allocated", "b-agent")]}


async def test_leases_under_the_old_per_tenant_keys_are_moved_on_first_touch(zen: Zen) -> None:
    """Leases an earlier version kept per tenant keep their port, token, expiry and agent:
    the first call of their tenant on the host moves them into the shared keys, so that a new
    allocation skips their ports and the agent's heartbeat renews them. A port both tenants
    held (the old double booking) stays with the lease moved first."""
    ks = zen.redis.keyspace("state")
    sec, usec = await ks.execute("TIME")
    now = int(sec) * 1000 + int(usec) // 1000
    old: dict[str, dict[int, tuple[int, str, int]]] = {  # tenant: port -> token, agent, expiry
        zen.tenant: {4000: (7, "old-1", now + 600_000), 4002: (9, "old-2", now - 1)},
        "acme": {4000: (3, "acme-1", now + 600_000), 4005: (5, "acme-2", now + 600_000)},
    }
    for tenant, leases in old.items():
        tks = zen.redis.keyspace("state", tenant=tenant)
        alloc = PortAllocator(zen.redis, tenant=tenant, host="node-m")
        key = functools.partial(tks.key, "ports", "{node-m}")
        commands: list[tuple[str | int, ...]] = [
            ("SET", key("seq"), max(t for t, _, _ in leases.values()))
        ]
        for port, (token, agent, expiry) in leases.items():
            commands += [
                ("ZADD", key("used"), port, port),
                ("ZADD", key("exp"), expiry, port),
                ("HSET", key("owner"), port, f"{token}:{agent}"),
                ("ZADD", key("byagent"), 0, f"{agent}|{port:05d}"),
                ("ZADD", alloc._hosts_key(agent), now + 600_000, "node-m"),
            ]
        await tks.batch(commands)

    ours = PortAllocator(zen.redis, host="node-m")
    fresh = await ours.allocate("new", port_range=(4000, 4010))
    assert fresh.port == 4001, "4000 is old-1's; 4002's old lease had expired"
    assert fresh.token == 10, "tokens go on above the old counter"
    assert await ours.leases("old-1") == [
        PortLease(4000, "node-m", "old-1", 7, at_ms(old[zen.tenant][4000][2]))
    ]
    assert await ours.leases("old-2") == []
    assert await ours.renew_agent("old-1") == 1, "the heartbeat renews a moved lease"
    default_old = [ks.key("ports", "{node-m}", name) for name in ("used", "exp", "owner", "seq")]
    assert await ks.execute("EXISTS", *default_old) == 0, "the old keys are gone"

    acme = PortAllocator(zen.redis, tenant="acme", host="node-m")
    assert await acme.migrate_tenant_leases() == 1, "acme-2 moved; acme-1's 4000 is taken"
    assert await acme.migrate_tenant_leases() == 0
    assert [lease.port for lease in await acme.leases("acme-2")] == [4005]
    assert await acme.leases("acme-1") == []
    assert (await acme.allocate("acme-3", port_range=(4000, 4010))).port == 4002
    stats = await ours.stats(port_range=(4000, 4010))
    assert stats.in_use == 4


# --- the outage reserves ----------------------------------------------------------------------


def test_the_reserve_limit_is_a_quarter_of_the_range_and_none_below_16_ports() -> None:
    assert [reserve_limit(n) for n in (1, 15, 16, 20, 40, 6716)] == [0, 0, 4, 5, 10, 1679]


async def test_reserves_of_three_instances_stay_within_a_quarter_of_the_range(
    standalone: Target,
) -> None:
    """REDIS_PORT_RESERVE=4 on a 40-port range: the instances' blocks hold 10 ports at most
    together (a third instance gets what is left of the quarter), the callers get the other
    30, and the next CapacityError counts the reserved ports apart."""
    settings = standalone.settings(
        redis_port_range_start=4000, redis_port_range_end=4040, redis_port_reserve=4
    )
    async with contextlib.AsyncExitStack() as stack:
        zens = [await stack.enter_async_context(open_zen(settings)) for _ in range(3)]
        reserves = [z.ports for z in zens]
        assert all(isinstance(r, ReservingPortAllocator) for r in reserves)
        assert [(r.reserve_size, r.reserve_limit) for r in reserves] == [(4, 10)] * 3

        async def reserves_full() -> bool:
            return sum(len(r.reserved) for r in reserves) == 10

        await wait_for(reserves_full, deadline=10, what="10 ports in the outage reserves")
        assert all(len(r.reserved) <= 4 for r in reserves)
        ports = zens[0].ports
        taken = [await ports.allocate(f"agent-{i}") for i in range(30)]
        assert not {lease.port for lease in taken} & {
            lease.port for r in reserves for lease in r.reserved
        }
        with pytest.raises(
            CapacityError,
            match=r"40 of 40 ports in use \(10 held in outage reserves by 3 processes, see "
            r"REDIS_PORT_RESERVE; 0 quarantined as not bindable\)",
        ):
            await ports.allocate("agent-30")
        stats = await ports.stats()
        assert (stats.in_use, stats.reserved, stats.free) == (40, 10, 0)


async def test_two_instances_on_a_20_port_range_leave_15_ports_to_the_callers(
    standalone: Target,
) -> None:
    """The default REDIS_PORT_RESERVE=8 on a 20-port range: each block is cut to 5, and both
    blocks together hold 5, not 16 (which left 4 ports for 40 callers)."""
    settings = standalone.settings(
        redis_port_range_start=4000, redis_port_range_end=4020, redis_port_reserve=8
    )
    async with open_zen(settings) as first, open_zen(settings) as second:
        reserves = [first.ports, second.ports]
        assert all(isinstance(r, ReservingPortAllocator) for r in reserves)
        assert [r.reserve_size for r in reserves] == [5, 5]

        async def reserves_full() -> bool:
            return sum(len(r.reserved) for r in reserves) == 5

        await wait_for(reserves_full, deadline=10, what="5 ports in the outage reserves")
        outcomes = await asyncio.gather(
            *((first if i % 2 else second).ports.allocate(f"caller-{i}") for i in range(40)),
            return_exceptions=True,
        )
        leased = [o for o in outcomes if isinstance(o, PortLease)]
        refused = [o for o in outcomes if not isinstance(o, PortLease)]
        assert len(leased) == 15
        assert all(isinstance(o, CapacityError) for o in refused)
        assert re.search(
            r"20 of 20 ports in use \(5 held in outage reserves by (1 process|2 processes), ",
            str(refused[0]),
        ), refused[0]


async def test_a_range_under_16_ports_has_no_reserve(standalone: Target) -> None:
    settings = standalone.settings(
        redis_port_range_start=4000, redis_port_range_end=4015, redis_port_reserve=8
    )
    async with open_zen(settings) as zen:
        ports = zen.ports
        assert isinstance(ports, ReservingPortAllocator)
        assert (ports.reserve_size, ports.reserve_limit) == (0, 0)
        taken = [await ports.allocate(f"a{i}") for i in range(15)]
        assert [lease.port for lease in taken] == list(range(4000, 4015))
        with pytest.raises(CapacityError, match=r"15 of 15 ports in use \(none held in outage"):
            await ports.allocate("a15")


# --- bad port input -----------------------------------------------------------------------------


async def test_port_allocate_tool_refuses_a_range_outside_the_configured_one_or_half_a_range(
    standalone: Target,
) -> None:
    async with Client(build_server(standalone.settings())) as client:
        for arguments, words in [
            (
                {"port_range_start": 1, "port_range_end": 2},
                ["port_range=(1, 2)", "REDIS_PORT_RANGE_START..END = (3284, 10000)"],
            ),
            ({"port_range_start": 9999, "port_range_end": 10001}, ["(3284, 10000)"]),
            ({"port_range_start": 4000}, ["port_range_start=4000, port_range_end=None"]),
            ({"port_range_end": 4001}, ["port_range_start=None, port_range_end=4001"]),
        ]:
            result = await client.call_tool("port_allocate", {"agent_id": "mcp-1", **arguments})
            assert result.is_error, f"{arguments} was accepted: {result.structured_content}"
            content = result.content[0]
            assert isinstance(content, TextContent)
            text = content.text
            assert "ValidationError: " in text, text
            assert all(word in text for word in words), text
        ok = await client.call_tool(
            "port_allocate", {"agent_id": "mcp-1", "port_range_start": 4000, "port_range_end": 4001}
        )
        assert not ok.is_error, ok.content
        assert ok.structured_content is not None
        assert ok.structured_content["port"] == 4000


@pytest.mark.parametrize("port_range", [(70000, -5), (0, 10), (10, 10), (10, 5), (1, 65537)])
def test_agent_capabilities_refuse_a_port_range_that_is_not_one(
    port_range: tuple[int, int],
) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"1 <= start < end <= 65536"):
        AgentCapabilities(port_range=port_range)


def test_agent_capabilities_take_ports_1_to_65535_end_exclusive() -> None:
    assert AgentCapabilities(port_range=(1, 65536)).port_range == (1, 65536)
    assert AgentCapabilities(port_range=(4000, 4001)).port_range == (4000, 4001)
    assert AgentCapabilities().port_range is None


CHILD = """
import asyncio, sys
import orjson
from zen_async import Settings, open_zen
from zen_async.agents.ports import PortAllocator
from zen_async.logs import configure_logging

async def main(url, prefix, count, first, last):
    configure_logging("warning")  # stderr: stdout carries the reply
    settings = Settings(
        _env_file=None,
        redis_url=url,
        redis_embedded="false",
        redis_socket_timeout=30.0,
        redis_connect_timeout=10.0,
    )
    async with open_zen(settings) as zen:
        alloc = PortAllocator(zen.redis, host="shared")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        leases = await asyncio.gather(
            *(alloc.allocate(f"{prefix}-{i}", port_range=(first, last)) for i in range(count))
        )
        print(orjson.dumps([lease.port for lease in leases]).decode(), flush=True)

url, prefix, count, first, last = sys.argv[1:]
asyncio.run(main(url, prefix, int(count), int(first), int(last)))
"""


async def test_two_processes_allocate_5000_ports_without_a_duplicate(standalone: Target) -> None:
    # 2500 concurrent callers per process on 2 cores: a reply, or the 50 connections the pool
    # opens at once, can wait on a busy event loop past the suite's 2 s socket and 1 s connect
    # timeouts (in the full suite the breaker then opened); this test is about uniqueness.
    settings = standalone.settings(redis_socket_timeout=30.0, redis_connect_timeout=10.0)
    async with open_zen(settings) as zen:
        await two_processes_allocate_5000_ports(zen)


async def two_processes_allocate_5000_ports(szen: Zen) -> None:
    first, last, each = 4000, 9000, 2500  # within REDIS_PORT_RANGE_START..END
    url = szen.settings.redis_url
    assert url is not None
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        url,
        "child",
        str(each),
        str(first),
        str(last),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        async with asyncio.timeout(60):
            assert await child.stdout.readline() == b"ready\n"
            alloc = PortAllocator(szen.redis, host="shared")
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            mine, theirs = await asyncio.gather(
                asyncio.gather(
                    *(alloc.allocate(f"parent-{i}", port_range=(first, last)) for i in range(each))
                ),
                child.stdout.readline(),
            )
            await child.communicate()
            assert child.returncode == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()  # reads stdout to its end, or wait() never returns
    ports = [lease.port for lease in mine] + orjson.loads(theirs)
    assert len(ports) == 5000
    assert len(set(ports)) == 5000, "two processes were handed the same port"
    assert set(ports) == set(range(first, last))
    tokens = sorted(lease.token for lease in mine)
    assert len(set(tokens)) == each, "fencing tokens are unique"
    with pytest.raises(CapacityError, match=r"5000 of 5000 ports in use"):
        await alloc.allocate("one-too-many", port_range=(first, last))
