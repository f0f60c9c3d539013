"""Distributed port leases: unique per host across tenants, processes and instances, fenced,
expiring.

A port is a resource of a machine, not of a tenant: each host has one allocator shared by
every tenant (and every namespace) of the deployment, so no two tenants are ever handed the
same port of a host. A lease belongs to one tenant's agent: its record holds
``<tenant>/<agent>``, and a tenant can neither see (:meth:`PortAllocator.leases`), renew,
transfer nor release another tenant's lease; such a call fails as for any lease that is not
the caller's (``ConflictError``, or ``False`` from the unfenced seed calls), and its message
names no agent id or token of the other tenant. Occupancy (:meth:`PortAllocator.stats`,
a ``CapacityError``) counts the ports of every tenant: they are taken, whoever holds them.
An ACL user therefore needs ``~zen:hosts:*`` besides its tenant's keys; the scripts, not the
ACL, keep the tenants' leases apart.

Each lease has a fencing token (strictly increasing per host: a later lease of any port on
that host always carries a larger token) and an expiry on the Redis server clock. A lease
lives until it is released or its TTL passes without a renewal; an expired lease is never
revived: it is reclaimed by the next allocation on its host (of any tenant), or by
:meth:`PortAllocator.reclaim_expired`. An owner that was frozen past its TTL therefore cannot
renew, and once its port is reissued it cannot release either: both are refused with
:class:`~zen_async.errors.ConflictError` naming the port. Every check of holder and token
happens inside the script that acts on it.

Key layout. The host's keys are tenant-independent, in the DB of the ``state`` keyspace
(``databases`` layout) or DB 0 (``prefixed``), all with the hash tag ``{<host>}``, so each
operation is one Lua script on one Cluster slot::

    zen:hosts:{<host>}:free     ZSET  free intervals "<start>:<end>" (end exclusive) by start
    zen:hosts:{<host>}:used     ZSET  port -> port, every port leased or quarantined
    zen:hosts:{<host>}:exp      ZSET  port -> expiry (server ms)
    zen:hosts:{<host>}:owner    HASH  port -> "<token>:<tenant>/<agent>" ("<token>:" while
                                      quarantined)
    zen:hosts:{<host>}:byagent  ZSET  "<tenant>/<agent>|<port:05d>" (score 0): the per-holder
                                      index
    zen:hosts:{<host>}:quar     ZSET  port -> port, quarantined ports (not bindable)
    zen:hosts:{<host>}:resv     ZSET  port -> port, ports leased to outage reserves
                                      (see :mod:`zen_async.agents.port_reserve`)
    zen:hosts:{<host>}:seq      STRING the host's fencing-token counter
    zen:hosts:{<host>}:op:<id>  STRING one allocation's reply, kept a minute so a resend after
                                      a lost reply returns the same lease

Per tenant (keyspace ``state``)::

    ports:agent:{z<shard>}:<agent>:hosts  ZSET host -> deadline: hosts where the agent may
                                   hold leases; in its agent shard's hash tag, so the
                                   heartbeats of a shard's agents find theirs in one call

Migration. Earlier versions kept a host's keys per tenant (``zen:t:<tenant>:[state:]
ports:{<host>}:...``, holders without a tenant), so two tenants could lease the same port.
Their leases are moved, not left to run out: an allocator moves its tenant's leases on a
host into the shared keys (``port_migrate.lua``: same port, token, expiry and agent; the
host's token counter raised past the old one; then the old keys deleted) the first time it
touches that host, before anything else it does there, and
:meth:`PortAllocator.migrate_tenant_leases` does it on demand. This is one atomic script per
tenant and host (the old and new keys share the hash tag ``{<host>}``), costs one call per
allocator and host once everything is moved, and needs no step from the operator. Leaving
the old leases to expire would not do: a heartbeat renews only the shared keys, so a live
agent's old lease would lapse and its port be handed out again while the agent still uses
it. Until a tenant touches a host (its next allocation, renewal or heartbeat there), the
other tenants do not see its old leases on it, as before; a port leased under both (the old
double booking) stays with the lease already in the shared keys, and the old one is
reported (``port_migration_refused``) and dropped. Stop every process of the earlier
version first: it would go on writing the old keys.

Port ranges: the free intervals of a host cover its whole port space (1-65535) and are
created lazily as the complement of the used ports; a ``port_range`` is only a window onto
them, and an allocation's explicit range must lie within REDIS_PORT_RANGE_START..END. Any
number of ranges, overlapping or not, can be used on one host: a port is free or used once
per host, never once per range, so two ranges can never hand out the same port.

Complexity: an allocation reclaims the expired leases it finds (each at most once, so
amortised O(1) per lease), then takes the lowest free port of the range with two
``ZRANGEBYSCORE ... LIMIT 0 1`` lookups and at most three interval updates: O(log n) in the
number of leases of the host, independent of the size of the range. A release merges the
port back with its neighbouring intervals, also O(log n). Counting a range's ports in use is a
``ZCOUNT``, O(log n).
"""

from __future__ import annotations

import math
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import structlog

from zen_async.agents._shards import shard_chunks, shard_of
from zen_async.errors import CapacityError, ValidationError
from zen_async.store import Arg, Keyspace, RedisManager
from zen_async.store.health import PORT_ALLOCATION_FAILURE

__all__ = ["LeaseStep", "PortAllocator", "PortEventHook", "PortLease", "PortStats"]

log = structlog.get_logger(__name__)

PortEventHook = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""``await hook(event_type, agent_id, data)`` after a lease of the allocator's tenant is
allocated, released or reclaimed (event types ``port_allocated``, ``port_released``,
``port_reclaimed``). A lease of another tenant that an allocation reclaims on the way is
logged only: its agent id stays out of this tenant's events."""

MAX_PORT: Final = 65535
QUARANTINE_SECONDS: Final = 10.0
"""How long a port found not bindable is kept out of circulation."""
RESERVE_OWNER_PREFIX: Final = "zen-reserve."
"""Agent ids of the outage reserves' owners start with it (one owner per process)."""

_AGENT_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_HOST: Final = re.compile(r"[A-Za-z0-9_.:-]{1,253}")
_TENANT: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOSTS_PREFIX: Final = "zen:hosts:"
_LEASE_KEYS: Final = ("free", "used", "exp", "owner", "byagent", "quar", "resv")
_OLD_KEYS: Final = ("free", "used", "exp", "owner", "byagent", "quar", "seq")  # per tenant
_RECLAIM_ON_ALLOCATE: Final = 128  # expired leases an allocation reclaims before it looks
_RECLAIM_BATCH: Final = 1000  # per script call of reclaim_expired (bounds script run time)
_OP_TTL_MS: Final = 60_000  # longer than any retry sequence of one call
_HOSTS_GRACE_MS: Final = 60_000  # clock skew between Cluster nodes
_BIND_ATTEMPTS: Final = 32


@dataclass(frozen=True, slots=True)
class PortLease:
    """One port leased to one agent on one host.

    Attributes:
        port: the port.
        host: the machine the port belongs to.
        agent_id: the owner (an agent of the allocator's tenant).
        token: the fencing token: strictly increasing per host over all leases.
        expires_at: when the lease ends unless renewed (server clock, UTC).
    """

    port: int
    host: str
    agent_id: str
    token: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class LeaseStep:
    """What a script that leases a port as one part of a larger atomic step needs (the
    one-step task claim, ``task_claim_lease.lua``): from :meth:`PortAllocator.lease_step`.

    Attributes:
        agent_id: the owner-to-be.
        host: the machine (the allocator's).
        port_range: ``(start, end)``, end exclusive: the configured range.
        db: the DB of the state keyspace, where the host's keys live.
        keys: the host's lease keys (``free used exp owner byagent quar resv``), its
            fencing-token counter and the agent's host index, in that order.
        args: the holder, the range's start and end, the lease TTL in ms, how many expired
            leases to reclaim first, the host, and the host index's grace in ms.
    """

    agent_id: str
    host: str
    port_range: tuple[int, int]
    db: int
    keys: tuple[str, ...]
    args: tuple[Arg, ...]


@dataclass(frozen=True, slots=True)
class PortStats:
    """Occupancy of one port range on one host, over every tenant.

    Attributes:
        host: the machine.
        port_range: ``(start, end)``, end exclusive.
        total: ports in the range.
        in_use: ports of the range leased (by any tenant, outage reserves included) or
            quarantined, including leases past their expiry that no one has reclaimed yet.
        quarantined: ports of the range held back as not bindable.
        free: ports of the range that an allocation can hand out now.
        host_in_use: ports of the host in use, over every range.
        host_expired: leases of the host past their expiry, awaiting reclaim.
        reserved: ports of the range (among ``in_use``) held in the outage reserves of
            running processes (REDIS_PORT_RESERVE).
    """

    host: str
    port_range: tuple[int, int]
    total: int
    in_use: int
    quarantined: int
    free: int
    host_in_use: int
    host_expired: int
    reserved: int = 0


class PortAllocator:
    """Leases ports to one tenant's agents; a port is unique per host across every tenant,
    process and instance sharing the deployment.

    Args:
        redis: the core.
        tenant: the tenant whose agents hold the leases (default: the configured namespace).
        host: the machine whose ports are leased by default (default: this machine's name).
        lease_ttl: seconds a lease lives without a renewal.
        check_bindable: test-bind each port before handing it out (on ``host`` only) and
            quarantine ports that are taken by something outside zen_async.
        on_event: awaited after each allocation, release and reclaim of a lease of this
            tenant; an exception it raises is logged, never raised: the lease change has
            already happened.

    Raises:
        ValidationError: a bad tenant, host name or lease TTL.
    """

    def __init__(
        self,
        redis: RedisManager,
        *,
        tenant: str | None = None,
        host: str | None = None,
        lease_ttl: float = 30.0,
        check_bindable: bool = False,
        on_event: PortEventHook | None = None,
    ) -> None:
        if not (isinstance(lease_ttl, int | float) and math.isfinite(lease_ttl) and lease_ttl > 0):
            raise ValidationError(f"lease_ttl={lease_ttl!r}: expected a positive number of seconds")
        self.host = _check_host(socket.gethostname() if host is None else host)
        self.lease_ttl = float(lease_ttl)
        self.check_bindable = check_bindable
        self.default_range = (
            redis.settings.redis_port_range_start,
            redis.settings.redis_port_range_end,
        )
        self._ttl_ms = max(1, math.ceil(lease_ttl * 1000))
        self._ks: Keyspace = redis.keyspace("state", tenant=tenant)
        self.tenant = self._ks.tenant
        if _TENANT.fullmatch(self.tenant) is None:  # "/" would break the holder names
            raise ValidationError(
                f"tenant={self.tenant!r}: expected 1-64 characters of A-Z a-z 0-9 _ . -"
            )
        self._shards = redis.settings.redis_agent_shards
        self._health = redis.health
        self._on_event = on_event
        self._migrated: set[str] = set()  # hosts whose old per-tenant leases were moved

    # --- allocation ---------------------------------------------------------------------
    async def allocate(
        self,
        agent_id: str,
        *,
        host: str | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> PortLease:
        """Lease the lowest free port of ``port_range`` on ``host`` to ``agent_id``.

        Args:
            agent_id: the owner (1-128 characters of ``A-Z a-z 0-9 _ . : -``).
            host: the machine (default: the allocator's).
            port_range: ``(start, end)``, end exclusive, within REDIS_PORT_RANGE_START..END
                (default: that whole range).

        Raises:
            ValidationError: a bad agent id, host or range (a range reaching outside
                REDIS_PORT_RANGE_START..END included); nothing was written.
            CapacityError: every port of the range is in use, by any tenant (the message
                gives the range and the counts, the ports held in outage reserves apart);
                counted as a ``port_allocation_failure`` health event.
        """
        _check_agent(agent_id)
        host = self.host if host is None else _check_host(host)
        first, last = self.window(port_range)
        await self._ready(host)
        await self._note_hosts(agent_id, [host])
        try:
            return await self._allocate_noted(agent_id, host, first, last)
        except CapacityError:
            await self._forget_host_if_unused(agent_id, host)
            raise

    def window(self, port_range: tuple[int, int] | None) -> tuple[int, int]:
        """The range an allocation may use: ``port_range``, checked, or the configured one.

        Raises:
            ValidationError: ``port_range`` is malformed or reaches outside
                REDIS_PORT_RANGE_START..END (the message names both).
        """
        if port_range is None:
            return self.default_range
        first, last = _check_range(port_range)
        low, high = self.default_range
        if not low <= first < last <= high:
            raise ValidationError(
                f"port_range=({first}, {last}): expected a range within the configured "
                f"REDIS_PORT_RANGE_START..END = ({low}, {high}), end exclusive"
            )
        return first, last

    async def _allocate_noted(self, agent_id: str, host: str, first: int, last: int) -> PortLease:
        checking = self.check_bindable and host == self.host
        for _ in range(_BIND_ATTEMPTS if checking else 1):
            try:
                lease = await self._allocate_once(agent_id, host, first, last)
            except CapacityError as exc:
                self._health.record_event(PORT_ALLOCATION_FAILURE)
                log.warning(
                    "port_range_exhausted", host=host, start=first, end=last, error=str(exc)
                )
                raise
            assert lease is not None  # None only for a reserve's allocation
            if not checking or await anyio.to_thread.run_sync(_bindable, lease.port):
                log.debug("port_allocated", port=lease.port, host=host, agent_id=agent_id)
                await self._emit(
                    "port_allocated",
                    agent_id,
                    {"port": lease.port, "host": host, "fencing_token": lease.token},
                )
                return lease
            await self._ks.run_script(
                "port_quarantine",
                self._lease_keys(host),
                [
                    self._holder(agent_id),
                    lease.port,
                    lease.token,
                    math.ceil(QUARANTINE_SECONDS * 1000),
                ],
            )
            log.warning("port_quarantined", port=lease.port, host=host, reason="not bindable")
        self._health.record_event(PORT_ALLOCATION_FAILURE)
        raise CapacityError(
            f"no bindable port in range {first}-{last} (end exclusive) on host {host}: "
            f"{_BIND_ATTEMPTS} ports in a row were taken outside zen_async and are quarantined "
            f"for {QUARANTINE_SECONDS:g} s"
        )

    async def _allocate_once(
        self,
        agent_id: str,
        host: str,
        first: int,
        last: int,
        *,
        reserve_cap: int | None = None,
    ) -> PortLease | None:
        """One allocation script; None when ``reserve_cap`` (a reserve's allocation) is
        reached."""
        keys = [
            *self._lease_keys(host),
            self._host_key(host, "seq"),
            self._host_key(host, "op", uuid.uuid4().hex),
        ]
        args: list[Arg] = [
            self._holder(agent_id),
            first,
            last,
            self._ttl_ms,
            _RECLAIM_ON_ALLOCATE,
            host,
            max(_OP_TTL_MS, self._ttl_ms),
            "" if reserve_cap is None else reserve_cap,
        ]
        reply = await self._ks.run_script("port_allocate", keys, args)
        port, token, expiry = int(reply[0]), int(reply[1]), int(reply[2])
        await self._reclaimed(host, reply[3:])
        return None if port == 0 else PortLease(port, host, agent_id, token, _at(expiry))

    async def lease_for_reserve(self, owner: str, cap: int) -> PortLease | None:
        """Lease a port of the configured range on the allocator's host to an outage
        reserve's ``owner``, unless the reserves of all processes already hold ``cap`` ports
        of the range (or none is free): then None, without a health event (see
        :mod:`zen_async.agents.port_reserve`)."""
        first, last = self.default_range
        await self._ready(self.host)
        try:
            return await self._allocate_once(owner, self.host, first, last, reserve_cap=cap)
        except CapacityError:
            return None

    async def allocate_port(self, agent_id: str, port_range: tuple[int, int] | None = None) -> int:
        """The seed's call: lease a port of ``port_range`` (None: the configured range,
        REDIS_PORT_RANGE_START to REDIS_PORT_RANGE_END) on this host; returns the port.

        Raises:
            ValidationError, CapacityError: as :meth:`allocate`.
        """
        return (await self.allocate(agent_id, port_range=port_range)).port

    # --- leases taken by another operation's script ------------------------------------
    @property
    def leases_in_scripts(self) -> bool:
        """Whether a lease may be taken inside another operation's script (see
        :meth:`lease_step`): not with ``check_bindable``, which test-binds each port here
        before it is handed out."""
        return not self.check_bindable

    async def lease_step(self, agent_id: str) -> LeaseStep:
        """The keys and arguments of a lease of the configured range on this allocator's
        host for ``agent_id``, taken inside another script with the steps of
        ``port_allocate.lua`` (``lib/port_lease.lua``), which also notes the host in the
        agent's host index. Report its outcome with :meth:`lease_taken` or
        :meth:`lease_refused`.

        Raises:
            ValidationError: a bad agent id.
        """
        _check_agent(agent_id)
        host = self.host
        first, last = self.default_range
        await self._ready(host)
        return LeaseStep(
            agent_id=agent_id,
            host=host,
            port_range=(first, last),
            db=self._ks.db,
            keys=(
                *self._lease_keys(host),
                self._host_key(host, "seq"),
                self._hosts_key(agent_id),
            ),
            args=(
                self._holder(agent_id),
                first,
                last,
                self._ttl_ms,
                _RECLAIM_ON_ALLOCATE,
                host,
                _HOSTS_GRACE_MS,
            ),
        )

    async def lease_taken(
        self, step: LeaseStep, port: int, token: int, reclaimed: Sequence[Any]
    ) -> None:
        """What :meth:`allocate` does after its script, for a lease another script took:
        the events of the leases reclaimed on the way (flat: port, token, holder) and of
        this one (``on_event``)."""
        host = step.host
        await self._reclaimed(host, reclaimed)
        log.debug("port_allocated", port=port, host=host, agent_id=step.agent_id)
        await self._emit(
            "port_allocated", step.agent_id, {"port": port, "host": host, "fencing_token": token}
        )

    async def lease_refused(
        self, step: LeaseStep, message: str, reclaimed: Sequence[Any]
    ) -> CapacityError:
        """What :meth:`allocate` does when no port of the range is free, for another
        script's refusal (``message``: the text of port_allocate.lua's ``CAPACITY`` error):
        the events of the leases reclaimed on the way, a ``port_allocation_failure`` health
        event and the log. Returns the error to raise."""
        await self._reclaimed(step.host, reclaimed)
        error = CapacityError(message)
        self._health.record_event(PORT_ALLOCATION_FAILURE)
        first, last = step.port_range
        log.warning("port_range_exhausted", host=step.host, start=first, end=last, error=str(error))
        return error

    # --- renewal ------------------------------------------------------------------------
    async def renew(self, lease: PortLease) -> PortLease:
        """Extend ``lease`` by the allocator's TTL, counted from now.

        Returns:
            The lease with its new expiry.

        Raises:
            ValidationError: a malformed lease.
            ConflictError: the lease ended: it expired (the port may have been reissued, which
                the message says, with the new token if the new holder is of this tenant) or
                was released; or it is not a lease of this tenant.
        """
        _check_agent(lease.agent_id)
        host = _check_host(lease.host)
        port = _check_port(lease.port)
        await self._ready(host)
        expiry = await self._ks.run_script(
            "port_renew",
            self._lease_keys(host),
            [self._holder(lease.agent_id), port, lease.token, self._ttl_ms, host],
        )
        await self._note_hosts(lease.agent_id, [host])
        return replace(lease, expires_at=_at(int(expiry)))

    async def renew_agent(self, agent_id: str) -> int:
        """Extend every live lease of ``agent_id``, on every host (the agent's heartbeat).

        Leases already past their expiry are not revived (allocation and the reaper reclaim
        them).

        Returns:
            How many leases were renewed.

        Raises:
            ValidationError: a bad agent id.
        """
        return (await self.renew_agents([agent_id]))[0]

    async def renew_agents(self, agent_ids: Sequence[str]) -> list[int]:
        """:meth:`renew_agent` for many agents: one call per chunk of agents of one shard
        finds their hosts, then :meth:`renew_holders`.

        Returns:
            How many leases were renewed, per agent, in order.

        Raises:
            ValidationError: a bad agent id (then nothing was renewed).
        """
        for agent_id in agent_ids:
            _check_agent(agent_id)
        hosts_of = await self._hosts_of_many(agent_ids)
        counts = await self.renew_holders(
            {agent_ids[i]: hosts for i, hosts in enumerate(hosts_of) if hosts}
        )
        return [counts.get(agent_id, 0) for agent_id in agent_ids]

    async def renew_holders(self, hosts_of: Mapping[str, Sequence[str]]) -> dict[str, int]:
        """Extend every live lease of each agent of ``hosts_of`` on the hosts given for it
        (as its host index lists them: the agents' heartbeats read them with the lease): one
        call per host and chunk of agents.

        Returns:
            How many leases were renewed, by agent (agents with none left out).
        """
        by_host: dict[str, list[str]] = {}
        for agent_id, hosts in hosts_of.items():
            for host in hosts:
                by_host.setdefault(host, []).append(agent_id)
        if not by_host:
            return {}
        size = self._ks.batch_size
        calls: list[tuple[list[str], list[Arg]]] = []
        chunks: list[tuple[str, list[str]]] = []
        for host, holders in by_host.items():
            await self._ready(host)
            for start in range(0, len(holders), size):
                chunk = holders[start : start + size]
                calls.append((self._lease_keys(host), [self._ttl_ms, *map(self._holder, chunk)]))
                chunks.append((host, chunk))
        replies = await self._ks.run_script_many("port_renew_agent", calls, idempotent=True)
        counts: dict[str, int] = {}
        renewed: dict[str, list[str]] = {}
        for (host, chunk), reply in zip(chunks, replies, strict=True):
            for agent_id, count in zip(chunk, reply[1:], strict=True):
                if count:
                    counts[agent_id] = counts.get(agent_id, 0) + int(count)
                    renewed.setdefault(agent_id, []).append(host)
        if renewed:
            await self._note_hosts_many(renewed)
        return counts

    def hosts_prefix(self, shard: int) -> str:
        """The prefix of the host indexes of the agents of ``shard``: an agent's index is
        ``hosts_prefix(shard) + agent_id + ":hosts"`` (in the shard's hash tag, so a script
        acting on the shard's agents may read it)."""
        return self._ks.key("ports", "agent", f"{{z{shard}}}") + ":"

    # --- release ------------------------------------------------------------------------
    async def release(self, lease: PortLease) -> bool:
        """End ``lease`` and return its port to the free set.

        Returns:
            True if it was released now; False if the port was no longer leased (already
            released, or expired and reclaimed, and not reissued).

        Raises:
            ValidationError: a malformed lease.
            ConflictError: the port was reissued under another token, or is not leased to
                this tenant's ``lease.agent_id``; nothing changed.
        """
        _check_agent(lease.agent_id)
        host = _check_host(lease.host)
        return await self._release(lease.agent_id, host, _check_port(lease.port), lease.token)

    async def release_port(self, agent_id: str, port: int) -> bool:
        """The seed's call: release whatever lease ``agent_id`` holds on ``port`` on this host.

        Unfenced (no token): prefer :meth:`release` with the lease.

        Returns:
            True if a lease was released; False if the port is not leased to ``agent_id``
            (of this tenant).

        Raises:
            ValidationError: a bad agent id or port.
        """
        _check_agent(agent_id)
        return await self._release(agent_id, self.host, _check_port(port), "")

    async def _release(self, agent_id: str, host: str, port: int, token: int | str) -> bool:
        await self._ready(host)
        released = int(
            await self._ks.run_script(
                "port_release", self._lease_keys(host), [self._holder(agent_id), port, token, host]
            )
        )
        if not released:
            return False
        log.debug("port_released", port=port, host=host, agent_id=agent_id)
        await self._emit(
            "port_released", agent_id, {"port": port, "host": host, "fencing_token": released}
        )
        return True

    async def release_agent(self, agent_id: str) -> int:
        """End every lease of ``agent_id``, on every host.

        Returns:
            How many leases were released.

        Raises:
            ValidationError: a bad agent id.
        """
        _check_agent(agent_id)
        total = 0
        for host in await self._hosts_of(agent_id):
            await self._ready(host)
            reply = await self._ks.run_script(
                "port_release_agent", self._lease_keys(host), [self._holder(agent_id)]
            )
            for i in range(0, len(reply), 2):
                total += 1
                await self._emit(
                    "port_released",
                    agent_id,
                    {"port": int(reply[i]), "host": host, "fencing_token": int(reply[i + 1])},
                )
        return total

    # --- expiry -------------------------------------------------------------------------
    async def reclaim_expired(self, host: str | None = None) -> int:
        """Return the ports of every expired lease (of any tenant) and ended quarantine of
        ``host`` (default: the allocator's) to the free set.

        Returns:
            How many ports went back to the free set.

        Raises:
            ValidationError: a bad host name.
        """
        host = self.host if host is None else _check_host(host)
        await self._ready(host)
        keys = self._lease_keys(host)
        total = 0
        while True:
            reply = await self._ks.run_script("port_reclaim", keys, [_RECLAIM_BATCH])
            await self._reclaimed(host, reply)
            total += len(reply) // 3
            if len(reply) < 3 * _RECLAIM_BATCH:
                return total

    async def _reclaimed(self, host: str, flat: Sequence[Any]) -> None:
        for i in range(0, len(flat), 3):
            port, token, holder = int(flat[i]), int(flat[i + 1]), _text(flat[i + 2])
            if not holder:  # an ended quarantine, not a lease
                continue
            tenant, _, agent = holder.rpartition("/")
            log.info(
                "port_reclaimed", port=port, host=host, tenant=tenant, agent_id=agent, token=token
            )
            if tenant == self.tenant:
                await self._emit(
                    "port_reclaimed", agent, {"port": port, "host": host, "fencing_token": token}
                )

    # --- migration ----------------------------------------------------------------------
    async def migrate_tenant_leases(self, host: str | None = None) -> int:
        """Move this tenant's leases on ``host`` (default: the allocator's) from the
        per-tenant keys of earlier versions into the host's shared keys (see the module's
        "Migration"). Done by itself the first time the allocator touches a host; safe to
        call any time, from any number of processes.

        Returns:
            How many live leases were moved (0 once there is nothing left to move).

        Raises:
            ValidationError: a bad host name.
        """
        host = self.host if host is None else _check_host(host)
        old = [self._ks.key("ports", f"{{{host}}}", name) for name in _OLD_KEYS]
        moved, refused = await self._ks.run_script(
            "port_migrate",
            [*self._lease_keys(host), self._host_key(host, "seq"), *old],
            [self.tenant, RESERVE_OWNER_PREFIX],
        )
        self._migrated.add(host)
        for i in range(0, len(refused), 3):
            log.warning(
                "port_migration_refused",
                port=int(refused[i]),
                host=host,
                agent_id=_text(refused[i + 2]),
                token=int(refused[i + 1]),
                reason="the port is leased in the host's shared keys",
            )
        agents = {_text(moved[i + 2]) for i in range(0, len(moved), 3)}
        if agents:
            await self._note_hosts_many({agent_id: [host] for agent_id in agents})
            log.info("port_leases_migrated", host=host, tenant=self.tenant, count=len(moved) // 3)
        return len(moved) // 3

    async def _ready(self, host: str) -> None:
        if host not in self._migrated:
            await self.migrate_tenant_leases(host)

    # --- reads --------------------------------------------------------------------------
    async def leases(self, agent_id: str) -> list[PortLease]:
        """The live leases of this tenant's ``agent_id`` on every host, by host and port.

        Raises:
            ValidationError: a bad agent id.
        """
        _check_agent(agent_id)
        found: list[PortLease] = []
        for host in sorted(await self._hosts_of(agent_id)):
            await self._ready(host)
            reply = await self._ks.run_script(
                "port_leases", self._lease_keys(host), [self._holder(agent_id)]
            )
            for i in range(0, len(reply), 3):
                found.append(
                    PortLease(
                        int(reply[i]), host, agent_id, int(reply[i + 1]), _at(int(reply[i + 2]))
                    )
                )
        return found

    async def stats(
        self, host: str | None = None, *, port_range: tuple[int, int] | None = None
    ) -> PortStats:
        """Occupancy of ``port_range`` (default: the configured one) on ``host``, over every
        tenant.

        Raises:
            ValidationError: a bad host or range.
        """
        host = self.host if host is None else _check_host(host)
        first, last = self.default_range if port_range is None else _check_range(port_range)
        await self._ready(host)
        in_use, quarantined, host_in_use, expired, reserved = await self._ks.run_script(
            "port_stats", self._lease_keys(host), [first, last]
        )
        return PortStats(
            host=host,
            port_range=(first, last),
            total=last - first,
            in_use=int(in_use),
            quarantined=int(quarantined),
            free=last - first - int(in_use),
            host_in_use=int(host_in_use),
            host_expired=int(expired),
            reserved=int(reserved),
        )

    # --- helpers ------------------------------------------------------------------------
    def _holder(self, agent_id: str) -> str:
        """The holder of a lease in the host's keys: tenant names have no "/"."""
        return f"{self.tenant}/{agent_id}"

    def _host_key(self, host: str, *parts: str) -> str:
        return _HOSTS_PREFIX + ":".join((f"{{{host}}}", *parts))

    def _lease_keys(self, host: str) -> list[str]:
        """KEYS[1..7] of every lease script: the host's keys but the counter."""
        return [self._host_key(host, name) for name in _LEASE_KEYS]

    def _hosts_key(self, agent_id: str) -> str:
        return self.hosts_prefix(shard_of(agent_id, self._shards)) + agent_id + ":hosts"

    async def _note_hosts(self, agent_id: str, hosts: Sequence[str]) -> None:
        await self._note_hosts_many({agent_id: hosts})

    async def _note_hosts_many(self, hosts_by_agent: Mapping[str, Sequence[str]]) -> None:
        agent_ids = list(hosts_by_agent)
        calls: list[tuple[list[str], list[Arg]]] = [
            (
                [self._hosts_key(agent_ids[i]) for i in chunk],
                [
                    self._ttl_ms,
                    _HOSTS_GRACE_MS,
                    *(",".join(hosts_by_agent[agent_ids[i]]) for i in chunk),
                ],
            )
            for _, chunk in shard_chunks(agent_ids, self._shards, self._ks.batch_size)
        ]
        await self._ks.run_script_many("port_agent_hosts", calls, idempotent=True)

    async def _forget_host_if_unused(self, agent_id: str, host: str) -> None:
        """Undo the note of a failed allocation, so that a refusal leaves no trace: remove
        ``host`` from the agent's host index if the agent holds no lease there and no other
        allocation noted it again meanwhile (that would have raised its deadline)."""
        hosts_key = self._hosts_key(agent_id)
        noted = await self._ks.execute("ZSCORE", hosts_key, host)
        if noted is None:
            return
        holder = self._holder(agent_id)
        held = await self._ks.execute(
            "ZRANGEBYLEX",
            self._host_key(host, "byagent"),
            f"[{holder}|",
            f"({holder}}}",
            "LIMIT",
            0,
            1,
        )
        if not held:
            await self._ks.run_script("port_forget_host", [hosts_key], [host, _text(noted)])

    async def _hosts_of(self, agent_id: str) -> list[str]:
        reply = await self._ks.execute("ZRANGE", self._hosts_key(agent_id), 0, -1)
        return [_text(h) for h in reply]

    async def _hosts_of_many(self, agent_ids: Sequence[str]) -> list[list[str]]:
        """The hosts of each agent, in order: one call per chunk of agents of one shard."""
        chunks = shard_chunks(agent_ids, self._shards, self._ks.batch_size)
        calls = [([self._hosts_key(agent_ids[i]) for i in chunk], ()) for _, chunk in chunks]
        replies = await self._ks.run_script_many("port_hosts_of", calls, idempotent=True)
        found: list[list[str]] = [[] for _ in agent_ids]
        for (_, chunk), reply in zip(chunks, replies, strict=True):
            for i, hosts in zip(chunk, reply, strict=True):
                if hosts:
                    found[i] = [_text(h) for h in hosts]
        return found

    async def _emit(self, event_type: str, agent_id: str, data: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            await self._on_event(event_type, agent_id, data)
        except Exception:  # the lease change is done; a failing audit hook must not undo it
            log.exception("port_event_hook_failed", event_type=event_type, agent_id=agent_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _check_agent(agent_id: object) -> str:
    if not isinstance(agent_id, str) or _AGENT_ID.fullmatch(agent_id) is None:
        raise ValidationError(
            f"agent_id={agent_id!r}: expected 1-128 characters of A-Z a-z 0-9 _ . : -"
        )
    return agent_id


def _check_host(host: object) -> str:
    if not isinstance(host, str) or _HOST.fullmatch(host) is None:
        raise ValidationError(
            f"host={host!r}: expected a host name of 1-253 characters of A-Z a-z 0-9 _ . : -"
        )
    return host


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise ValidationError(f"port={port!r}: expected an integer from 1 to {MAX_PORT}")
    return port


def _check_range(port_range: object) -> tuple[int, int]:
    accepted = f"(start, end) with 1 <= start < end <= {MAX_PORT + 1}, end exclusive"
    if not isinstance(port_range, tuple | list) or len(port_range) != 2:
        raise ValidationError(f"port_range={port_range!r}: expected {accepted}")
    first, last = port_range
    if (
        any(isinstance(v, bool) or not isinstance(v, int) for v in (first, last))
        or not 1 <= first < last <= MAX_PORT + 1
    ):
        raise ValidationError(f"port_range={port_range!r}: expected {accepted}")
    return first, last


def _bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` here now (blocking: run it in a thread)."""
    for address in ("127.0.0.1", "0.0.0.0"):  # a probe on both, closed at once
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True
