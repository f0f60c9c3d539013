"""What a :class:`~zen_async.cache.Cache` keeps in process memory for its keys, and when it
stops trusting it (invalidation hints are described in :mod:`zen_async.cache`).

Two things are kept locally: last-known values (held by ``DegradedMode``, served stale while
Redis is unreachable; indexed here so that all of a cache's can be dropped at once) and, when
it is on, the near cache. Both are dropped for a key when it changes (another instance's hint,
a write of this process), and entirely when hints may have been lost (the listener starts,
reconnects or stops).

A read or write in flight holds a :class:`Ticket` of its key; a change of the key meanwhile
spoils it: what it read or wrote may be older than the stored value, so nothing of it is kept.

Near cache (opt-in, ``REDIS_NEAR_CACHE_SIZE``): the last values read, at most that many
(least recently used evicted first), each served from memory for at most
``REDIS_NEAR_CACHE_TTL`` seconds and never past its Redis TTL. It serves only while the
listener is subscribed and the circuit is closed. Another instance's write reaches it when
its hint arrives (normally within milliseconds); when a hint is lost, a read may return the
older value until the entry expires. Writes of this process drop their key at once.
"""

from __future__ import annotations

from collections import OrderedDict

from zen_async.degraded import DegradedMode

__all__ = ["LocalCacheState", "NearCache", "Ticket"]


class Ticket:
    """One read or write of a key in flight. It is spoiled when the key changes meanwhile
    (another instance's hint, a write of this process, a reconnect): what it read or wrote
    may then be older than the stored value, so it is not kept locally."""

    __slots__ = ("spoiled",)

    def __init__(self) -> None:
        self.spoiled = False


class NearCache:
    """Raw values recently read, each until its deadline (event-loop clock), at most ``size``
    of them (the least recently used evicted first)."""

    __slots__ = ("_entries", "size", "ttl")

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, raw: bytes, deadline: float) -> None:
        self._entries[key] = (raw, deadline)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


class LocalCacheState:
    """The tickets, last-known keys and near cache of one cache (one tenant).

    Args:
        degraded: where the last-known values are held (``redis.degraded``).
        tenant: the cache's tenant (part of each last-known value's key).
        known_size: how many last-known values ``degraded`` holds at most
            (``REDIS_LAST_KNOWN_SIZE``).
        near_size: how many values the near cache holds at most (0: off).
        near_ttl: the longest a value is served from the near cache, in seconds.
    """

    __slots__ = ("_degraded", "_known", "_known_size", "_tenant", "listening", "near", "tickets")

    def __init__(
        self,
        degraded: DegradedMode,
        tenant: str,
        *,
        known_size: int,
        near_size: int,
        near_ttl: float,
    ) -> None:
        self._degraded = degraded
        self._tenant = tenant
        self.listening = False  # whether hints are heard (the near cache serves only then)
        self.tickets: dict[str, set[Ticket]] = {}
        self._known: OrderedDict[str, None] = OrderedDict()  # keys remembered as last-known
        self._known_size = known_size
        self.near = NearCache(near_size, near_ttl) if near_size else None

    def near_size(self) -> int:
        """How many values the near cache holds right now (0 when it is off)."""
        return 0 if self.near is None else len(self.near)

    def near_usable(self) -> NearCache | None:
        """The near cache, when it may serve: on, hints heard, circuit closed."""
        near = self.near
        if near is None or not self.listening or self._degraded.active:
            return None
        return near

    def known_key(self, key: str) -> tuple[str, str, str]:
        """The key of ``key``'s last-known value in ``DegradedMode``."""
        return ("cache", self._tenant, key)

    # --- tickets ----------------------------------------------------------------------------
    def open(self, key: str) -> Ticket:
        """A ticket for a read or write of ``key`` starting; :meth:`close` it when it ends."""
        ticket = Ticket()
        self.tickets.setdefault(key, set()).add(ticket)
        return ticket

    def close(self, key: str, ticket: Ticket) -> None:
        tickets = self.tickets.get(key)
        if tickets is not None:
            tickets.discard(ticket)
            if not tickets:
                del self.tickets[key]

    def read_ended(self, key: str, ticket: Ticket, *, fresh: bool) -> None:
        """A read of ``key`` returned (its ticket closed): keep nothing of it if the key
        changed meanwhile, else index the last-known value it left when ``fresh`` (read from
        Redis, not served stale)."""
        if ticket.spoiled:  # the key changed while we read: what we read may be older
            self._forget(key)
        elif fresh:
            self._note_known(key)

    def write_ended(self, key: str, ticket: Ticket, known: object | None) -> None:
        """A write of ``key`` ended: close its ticket and note the change; keep ``known`` as
        the last-known value, unless it is None (the write failed, perhaps applied) or
        another change overlapped the write."""
        self.close(key, ticket)
        self.changed(key)
        if known is not None and not ticket.spoiled:
            self._degraded.remember(self.known_key(key), known)
            self._note_known(key)
        else:  # failed (perhaps applied), or overlapped by another change
            self._forget(key)

    # --- changes ----------------------------------------------------------------------------
    def changed(self, key: str) -> None:
        """``key`` changed: spoil the reads and writes of it in flight, drop its near entry."""
        for ticket in self.tickets.get(key, ()):
            ticket.spoiled = True
        if self.near is not None:
            self.near.drop(key)

    def invalidate(self, key: str) -> None:
        """``key`` changed to a value this process does not know: keep nothing of it."""
        self.changed(key)
        self._forget(key)

    def drop_all(self) -> None:
        """Hints may have been missed: keep nothing local from before."""
        for tickets in self.tickets.values():
            for ticket in tickets:
                ticket.spoiled = True
        if self.near is not None:
            self.near.clear()
        for key in self._known:
            self._degraded.forget(self.known_key(key))
        self._known.clear()

    # --- last-known keys --------------------------------------------------------------------
    def _note_known(self, key: str) -> None:
        # The degraded store holds at most as many values as this index: every cache key
        # it holds is here, so a reconnect can drop each of them.
        known = self._known
        known[key] = None
        known.move_to_end(key)
        if len(known) > self._known_size:
            known.popitem(last=False)

    def _forget(self, key: str) -> None:
        self._degraded.forget(self.known_key(key))
        self._known.pop(key, None)
