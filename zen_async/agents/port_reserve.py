"""Ports during an outage: each instance keeps a small block of pre-leased ports on its own
host (``REDIS_PORT_RESERVE``, default 8), so that allocations go on without collisions while
Redis is unreachable.

The block is an ordinary set of leases owned by the instance's reserve owner
(``zen-reserve.<id>``) with a long TTL (``REDIS_PORT_RESERVE_TTL``, 600 s), renewed and
refilled in the background while Redis answers. An allocation that cannot reach Redis takes a
port of the block, journals ``ports.assign`` and returns a lease with the reserve's fencing
token; replaying it hands the lease to the agent in one script (``port_transfer``: owner and
token checked). Beyond the block, or for another host, allocation raises DegradedError. An
outage longer than the reserve TTL can let another instance reclaim a reserved port: the
replay then refuses the hand-over and records it (``journal_write_refused``).

Bounded and visible: the reserves take at most a quarter of the configured range
(REDIS_PORT_RANGE_START..END), all processes on a host together, and a range of fewer
than :data:`RESERVE_MIN_RANGE` ports has none (:func:`reserve_limit`): a block is
``min(REDIS_PORT_RESERVE, reserve_limit(range))`` ports, and a refill stops (without a health
event) once the blocks of all processes hold the limit. The allocation script checks that
limit against the host's ``resv`` set, atomically, so processes starting together cannot
overshoot it. :attr:`PortStats.reserved <zen_async.agents.ports.PortStats>` counts the
reserved ports of a range, and a ``CapacityError`` names them apart: "20 of 20 ports in use
(5 held in outage reserves by 1 process, see REDIS_PORT_RESERVE; 0 quarantined ...)".
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Final

import anyio
import structlog

from zen_async.agents.ports import (
    RESERVE_OWNER_PREFIX,
    PortAllocator,
    PortEventHook,
    PortLease,
    _check_agent,
    _check_host,
)
from zen_async.degraded import OFFLINE, JournalEntry
from zen_async.errors import ConflictError, DegradedError, ZenError
from zen_async.store.manager import RedisManager

__all__ = ["RESERVE_MIN_RANGE", "ReservingPortAllocator", "reserve_limit"]

log = structlog.get_logger(__name__)

RESERVE_MIN_RANGE: Final = 16
"""Ranges with fewer ports have no outage reserve: every port is for the agents."""

_UPKEEP_INTERVAL = 5.0  # seconds between refills of the block (renewals: a third of its TTL)


def reserve_limit(range_size: int) -> int:
    """The most ports of a range of ``range_size`` ports that the outage reserves of all
    processes together may hold: a quarter of it, none below :data:`RESERVE_MIN_RANGE`."""
    return 0 if range_size < RESERVE_MIN_RANGE else range_size // 4


class ReservingPortAllocator(PortAllocator):
    """A :class:`PortAllocator` that keeps a pre-leased block for outages (see the module).

    Args:
        redis: the core.
        reserve: ports asked for the block (0: none; every offline allocation is refused);
            the block gets at most :func:`reserve_limit` of the configured range.
        reserve_ttl: seconds a reserved lease lives without renewal.
        tenant, host, lease_ttl, check_bindable, on_event: as :class:`PortAllocator`.

    Attributes:
        reserve_size: ports in the block once full: ``reserve``, bounded.
        reserve_limit: the most ports of the configured range the blocks of all processes
            may hold together.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        reserve: int,
        reserve_ttl: float,
        tenant: str | None = None,
        host: str | None = None,
        lease_ttl: float = 30.0,
        check_bindable: bool = False,
        on_event: PortEventHook | None = None,
    ) -> None:
        super().__init__(
            redis,
            tenant=tenant,
            host=host,
            lease_ttl=lease_ttl,
            check_bindable=check_bindable,
            on_event=on_event,
        )
        self._degraded = redis.degraded
        first, last = self.default_range
        self.reserve_limit = reserve_limit(last - first)
        self.reserve_size = min(reserve, self.reserve_limit)
        if self.reserve_size < reserve:
            log.info(
                "port_reserve_bounded",
                requested=reserve,
                size=self.reserve_size,
                limit=self.reserve_limit,
                start=first,
                end=last,
            )
        self.reserve_owner = f"{RESERVE_OWNER_PREFIX}{uuid.uuid4().hex[:16]}"
        self._reserver = PortAllocator(redis, tenant=tenant, host=self.host, lease_ttl=reserve_ttl)
        self._renew_every = reserve_ttl / 3
        self._reserve: list[PortLease] = []

    @property
    def reserved(self) -> list[PortLease]:
        """The block's leases not yet handed out."""
        return list(self._reserve)

    async def allocate(
        self,
        agent_id: str,
        *,
        host: str | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> PortLease:
        """:meth:`PortAllocator.allocate`; while Redis is unreachable, a port of the block.

        Raises:
            DegradedError: Redis is unreachable and the block has no port for this host and
                range (the message says which).
            ValidationError, CapacityError: as :meth:`PortAllocator.allocate`.
        """
        lease = await self._degraded.attempt(
            lambda: super(ReservingPortAllocator, self).allocate(
                agent_id, host=host, port_range=port_range
            )
        )
        if lease is not OFFLINE:
            return lease
        return await self._allocate_offline(agent_id, host, port_range)

    async def _allocate_offline(
        self, agent_id: str, host: str | None, port_range: tuple[int, int] | None
    ) -> PortLease:
        _check_agent(agent_id)
        host = self.host if host is None else _check_host(host)
        first, last = self.window(port_range)
        if host != self.host:
            raise DegradedError(
                f"Redis is unreachable: ports of host {host} cannot be leased now; this "
                f"instance's pre-leased block holds ports of {self.host} only"
            )
        found = next((i for i, r in enumerate(self._reserve) if first <= r.port < last), None)
        if found is None:
            raise DegradedError(
                f"Redis is unreachable and this instance's pre-leased block has no port left "
                f"in range {first}-{last} ({self.reserve_size} ports, REDIS_PORT_RESERVE); "
                "allocate again once Redis is back"
            )
        lease = self._reserve.pop(found)
        args: dict[str, Any] = {
            "agent_id": agent_id,
            "host": host,
            "port": lease.port,
            "fencing_token": lease.token,  # not "token": a name event data would redact
            "reserve": lease.agent_id,
        }
        try:
            await self._degraded.accept("ports.assign", self._ks.tenant, args)
        except ZenError:
            self._reserve.insert(found, lease)
            raise
        log.info("port_allocated_from_reserve", port=lease.port, agent_id=agent_id)
        return PortLease(lease.port, host, agent_id, lease.token, lease.expires_at)

    async def replay_journaled(self, entry: JournalEntry) -> None:
        """Hand a reserved lease to the agent it was given to offline (same port, same
        token; idempotent).

        Raises:
            ConflictError: the reserved lease expired or was reissued meanwhile.
        """
        a = entry.args
        token = a["fencing_token"]
        await self._ready(a["host"])
        await self._ks.run_script(
            "port_transfer",
            self._lease_keys(a["host"]),
            [
                self._holder(a["reserve"]),
                a["port"],
                token,
                self._holder(a["agent_id"]),
                self._ttl_ms,
                a["host"],
            ],
        )
        await self._note_hosts(a["agent_id"], [a["host"]])
        await self._emit(
            "port_allocated",
            a["agent_id"],
            {
                "port": a["port"],
                "host": a["host"],
                "fencing_token": token,
                "pre_leased": True,
            },
        )

    # --- upkeep -------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the block full and renewed while Redis answers; release it on exit."""
        if self.reserve_size == 0:
            return
        renewed_at = -math.inf
        try:
            while True:
                if not self._degraded.active:
                    try:
                        if anyio.current_time() - renewed_at >= self._renew_every:
                            await self._renew()
                            renewed_at = anyio.current_time()
                        await self._refill()
                    except ZenError as exc:
                        log.debug("port_reserve_upkeep_failed", error=str(exc))
                await anyio.sleep(min(_UPKEEP_INTERVAL, self._renew_every))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                for lease in self._reserve:
                    try:
                        await self._reserver.release(lease)
                    except ZenError:
                        break  # unreachable: the leases expire on their own
                self._reserve.clear()

    async def _refill(self) -> None:
        while len(self._reserve) < self.reserve_size:
            lease = await self._reserver.lease_for_reserve(self.reserve_owner, self.reserve_limit)
            if lease is None:  # the reserves hold their limit, or the range is full
                return
            self._reserve.append(lease)

    async def _renew(self) -> None:
        kept: list[PortLease] = []
        for lease in self._reserve:
            try:
                kept.append(await self._reserver.renew(lease))
            except ConflictError:  # lost (expired during an outage): refilled below
                log.warning("port_reserve_lease_lost", port=lease.port)
        self._reserve = kept
