"""Keyspace handles: the only way domain code talks to Redis.

A :class:`Keyspace` names keys (``zen:t:<tenant>:`` then, in the prefixed layout, the keyspace
name) and runs commands, pipelined batches and Lua scripts through one :class:`CommandRunner`,
which owns the circuit breaker, the retry policy and the mapping of redis-py errors.

With ``REDIS_DURABILITY=replicated`` every write (a command that is not a read, a script
that calls a write command, a batch holding one) is sent in one pipeline with
``WAIT <replicas> <timeout>`` behind it, on the same connection: the master answers WAIT once
enough replicas hold everything that connection wrote. On Cluster the write and its WAIT are
pinned to the node that owns the key's slot. Too few acknowledgements raise
:class:`~zen_async.errors.DurabilityError`; reads never wait.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from zen_async.errors import BackendError, DegradedError, DurabilityError, ZenError
from zen_async.store._errors import RedisFailure, is_outage, map_error, raise_if_cancelling
from zen_async.store.breaker import CircuitBreaker
from zen_async.store.mux import ClusterMux, NodeMux, Waited
from zen_async.store.scripts import ScriptRegistry

__all__ = ["Arg", "CommandRunner", "Durability", "Keyspace"]

Arg = str | bytes | int | float
"""One argument of a Redis command."""

Route = NodeMux | ClusterMux
"""The multiplexed path of a keyspace (REDIS_TRANSPORT=multiplexed)."""

T = TypeVar("T")

# Commands safe to send again after a lost reply: they read, or they overwrite to the same end
# state with the same reply. Anything else is retried only when the caller says so.
_IDEMPOTENT: Final = frozenset(
    {
        "GET",
        "MGET",
        "EXISTS",
        "TTL",
        "PTTL",
        "TYPE",
        "STRLEN",
        "GETRANGE",
        "HGET",
        "HGETALL",
        "HMGET",
        "HLEN",
        "HEXISTS",
        "HKEYS",
        "HVALS",
        "HSCAN",
        "SMEMBERS",
        "SISMEMBER",
        "SMISMEMBER",
        "SCARD",
        "SSCAN",
        "SRANDMEMBER",
        "ZRANGE",
        "ZRANGEBYSCORE",
        "ZREVRANGE",
        "ZREVRANGEBYSCORE",
        "ZRANGEBYLEX",
        "ZSCORE",
        "ZMSCORE",
        "ZCARD",
        "ZCOUNT",
        "ZRANK",
        "ZREVRANK",
        "ZSCAN",
        "LRANGE",
        "LLEN",
        "LINDEX",
        "XRANGE",
        "XREVRANGE",
        "XLEN",
        "XINFO",
        "XPENDING",
        "PING",
        "INFO",
        "TIME",
        "DBSIZE",
        "ECHO",
        "CLUSTER",
        "ROLE",
        "MEMORY",
        "OBJECT",
        "SCRIPT",
        "PUBSUB",
    }
)
# Commands after which a replicated deployment does not WAIT. Reads change nothing; a PUBLISH
# is a hint, not data; and what XREADGROUP (a pending entry) or BLPOP on a cache wake list
# (a wake token) change is a delivery marker: losing one in a failover means a redelivery or
# a waiter looking again, never a lost acknowledged write. They also block for up to most of
# the socket timeout, which a WAIT behind them could push past it.
_NO_WAIT: Final = _IDEMPOTENT | {
    "PUBLISH",
    "SPUBLISH",
    "XREAD",
    "XREADGROUP",
    "BLPOP",
    "SCAN",
    "WAIT",
    "WAITAOF",
}
_SCRIPT_CALL = re.compile(r"""redis\.p?call\(\s*(?:(["'])([A-Za-z]+)\1)?""")
_MAX_REDIRECTS: Final = 5  # MOVED/ASK rounds for a pinned write before giving up
_SCRIPT_MIN_KEYS: Final = 8
"""Fewest keys of one hash slot that set_many writes with one Lua call rather than SETs."""
_RETRY_BASE: Final = 0.05
_RETRY_CAP: Final = 1.0


@dataclass(frozen=True, slots=True)
class Durability:
    """What ``REDIS_DURABILITY=replicated`` asks of every write.

    Attributes:
        replicas: how many replicas must confirm a write (WAIT's numreplicas).
        timeout_ms: how long the master waits for them (WAIT's timeout; never 0).
    """

    replicas: int
    timeout_ms: int


class CommandRunner:
    """Runs one redis-py call with breaker admission, error mapping and safe retries.

    Args:
        breaker: the deployment's circuit breaker.
        retry_attempts: extra attempts for idempotent calls that failed retryably.
        user: the ACL user, named in authentication errors.
        bound: a semaphore limiting concurrent calls (Cluster), or None.
        durability: what every write waits for (``REDIS_DURABILITY=replicated``), or None.
        server: where the deployment is, named in outage errors (``Settings.server_label``).
    """

    __slots__ = ("_bound", "_counted", "_retries", "_server", "_user", "breaker", "durability")

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        retry_attempts: int,
        user: str | None,
        bound: asyncio.Semaphore | None,
        durability: Durability | None = None,
        server: str | None = None,
    ) -> None:
        self.breaker = breaker
        self._server = server
        self._retries = retry_attempts
        self._user = user
        self._bound = bound
        self.durability = durability
        self._counted: BaseException | None = None

    def map(self, exc: Exception) -> ZenError:
        """The ZenError for a redis-py exception found in a reply list."""
        return map_error(exc, user=self._user, server=self._server)

    def _admit(self, sent: BackendError | None) -> bool:
        """The breaker's admission of an attempt (True: the half-open probe).

        Raises:
            DegradedError: the circuit is open, and no earlier attempt was sent.
            BackendError: ``sent``, when the circuit opened after an earlier attempt was sent:
                its outcome is unknown, and "refused without reaching the server" would let a
                caller journal the write again or check it against a stale view.
        """
        try:
            return self.breaker.before_call()
        except DegradedError:
            if sent is not None:
                raise sent from None
            raise

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        on_noscript: Callable[[], Awaitable[T]] | None = None,
        bounded: bool = True,
    ) -> T:
        """Await ``fn()`` under the breaker, retrying retryable failures if ``idempotent``.

        ``bounded=False`` skips the Cluster concurrency bound (the multiplexed path has
        its own). One exception shared by many calls (a multiplexed connection lost with
        its commands in flight) counts as one breaker failure.

        Raises:
            DegradedError: the circuit is open.
            ZenError: the mapped redis-py error.
        """
        attempt = 0
        sent: BackendError | None = None  # the failure of an attempt that reached the wire
        while True:
            probe = self._admit(sent)
            try:
                if self._bound is None or not bounded:
                    result = await fn()
                else:
                    async with self._bound:
                        result = await fn()
            except rx.NoScriptError:
                if on_noscript is None:
                    raise
                fn, on_noscript = on_noscript, None
                self.breaker.record_success(probe=probe)
                continue
            except RedisFailure as exc:
                raise_if_cancelling()
                error = map_error(exc, user=self._user, server=self._server)
                if is_outage(exc) and (exc is not self._counted or probe):
                    self._counted = exc
                    self.breaker.record_failure(probe=probe, error=str(error))
                elif probe:
                    self.breaker.release_probe()
                if (
                    idempotent
                    and isinstance(error, BackendError)
                    and error.retryable
                    and attempt < self._retries
                ):
                    sent = error
                    await asyncio.sleep(_backoff(attempt))
                    attempt += 1
                    continue
                raise error from exc
            except BaseException:
                if probe:
                    self.breaker.release_probe()
                raise
            self.breaker.record_success(probe=probe)
            return result


def _reply_options(args: Sequence[Arg]) -> dict[str, bool]:
    """Options redis-py's reply parsers need to read some command forms correctly."""
    name = str(args[0]).upper()
    if name == "XPENDING" and len(args) > 3:  # the extended form: one row per entry
        return {"parse_detail": True}
    if name in ("XCLAIM", "XAUTOCLAIM") and any(str(a).upper() == "JUSTID" for a in args):
        return {"parse_justid": True}
    return {}


def _backoff(attempt: int) -> float:
    ceiling: float = min(_RETRY_CAP, _RETRY_BASE * 2.0**attempt)
    jitter: float = random.uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


class Keyspace:
    """A handle on one logical keyspace of one tenant.

    Attributes:
        name: the keyspace (``state``, ``memory``, ...).
        db: the DB index it writes to.
        prefix: the prefix of every key it names.
        cluster: True on Redis Cluster (multi-key commands must stay within one hash slot).
    """

    __slots__ = (
        "_client",
        "_route",
        "_runner",
        "_scripts",
        "_settings",
        "cluster",
        "db",
        "name",
        "prefix",
        "tenant",
    )

    def __init__(
        self,
        name: str,
        *,
        tenant: str,
        db: int,
        prefixed: bool,
        client: Redis | RedisCluster,
        runner: CommandRunner,
        scripts: ScriptRegistry,
        pipelining: bool,
        batch_size: int,
        route: Route | None = None,
    ) -> None:
        self.name = name
        self.tenant = tenant
        self.db = db
        self.prefix = f"zen:t:{tenant}:{name}:" if prefixed else f"zen:t:{tenant}:"
        self.cluster = isinstance(client, RedisCluster)
        self._client = client
        self._route = route
        self._runner = runner
        self._scripts = scripts
        self._settings = (pipelining, batch_size, prefixed)

    def for_tenant(self, tenant: str) -> Keyspace:
        """The same keyspace bound to another tenant, sharing pools and breaker."""
        pipelining, batch_size, prefixed = self._settings
        return Keyspace(
            self.name,
            tenant=tenant,
            db=self.db,
            prefixed=prefixed,
            client=self._client,
            runner=self._runner,
            scripts=self._scripts,
            pipelining=pipelining,
            batch_size=batch_size,
            route=self._route,
        )

    def key(self, *parts: str | int) -> str:
        """The full key name for ``parts`` joined by ``:`` (put a ``{tag}`` in a part to pin
        related keys to one cluster slot)."""
        return self.prefix + ":".join(str(p) for p in parts)

    def slot(self, key: str) -> int:
        """The cluster hash slot of a full key name."""
        return key_slot(key.encode())

    @property
    def batch_size(self) -> int:
        """REDIS_PIPELINE_BATCH_SIZE: commands per pipelined chunk, and keys (or records) per
        bulk Lua call."""
        return self._settings[1]

    # --- single commands ----------------------------------------------------------------
    async def execute(self, *args: Arg, idempotent: bool | None = None) -> Any:
        """Run one command. Keys in ``args`` must be full names (see :meth:`key`).

        Args:
            args: the command and its arguments.
            idempotent: whether the call may be sent again after a lost reply; by default
                only read-only commands are.

        Raises:
            DegradedError: the circuit is open.
            BackendError: the server could not serve it.
            AuthError, ValidationError, ...: the mapped error reply.
        """
        name = str(args[0]).upper()
        if idempotent is None:
            idempotent = name in _IDEMPOTENT
        durability = self._runner.durability
        if durability is not None and name not in _NO_WAIT:
            return await self._durable_call(args, None, idempotent=idempotent, what=name)
        route = self._route
        slot = None if route is None else route.slot(args)
        if route is not None and slot is not None:
            mux_options = _reply_options(args) or None
            return await self._runner.call(
                lambda: route.call(args, mux_options, slot), idempotent=idempotent, bounded=False
            )
        client = self._client
        options = _reply_options(args)
        return await self._runner.call(
            lambda: client.execute_command(*args, **options), idempotent=idempotent
        )

    async def get(self, key: str) -> bytes | None:
        """GET ``key``."""
        value: bytes | None = await self.execute("GET", key)
        return value

    async def set(self, key: str, value: Arg, *, ttl_ms: int | None = None) -> None:
        """SET ``key`` (with PX ``ttl_ms`` when given)."""
        if ttl_ms is None:
            await self.execute("SET", key, value, idempotent=True)
        else:
            await self.execute("SET", key, value, "PX", ttl_ms, idempotent=True)

    async def delete(self, *keys: str) -> int:
        """DEL ``keys`` (grouped by slot on Cluster); returns how many existed."""
        if not keys:
            return 0
        groups = self._by_slot(keys)
        counts = await self.batch([("DEL", *group) for group in groups.values()])
        return sum(int(c) for c in counts)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """GET many keys in one round trip per slot group (per batch-size chunk)."""
        if not keys:
            return []
        groups = self._by_slot(keys)
        commands: list[tuple[Arg, ...]] = []
        order: list[list[str]] = []
        _, batch_size, _ = self._settings
        for group in groups.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                commands.append(("MGET", *chunk))
                order.append(chunk)
        replies = await self.batch(commands, idempotent=True)
        found: dict[str, bytes | None] = {}
        for chunk, values in zip(order, replies, strict=True):
            found.update(zip(chunk, values, strict=True))
        return [found[k] for k in keys]

    async def set_many(self, items: Mapping[str, Arg], *, ttl_ms: int | None = None) -> None:
        """SET many keys (with PX ``ttl_ms`` when given), in few round trips.

        Keys are grouped by hash slot (one group on standalone and Sentinel) and each group
        is written in chunks of REDIS_PIPELINE_BATCH_SIZE keys: one MSET per chunk without a
        TTL, one ``kv_set_many`` Lua call per chunk with one. A slot holding fewer than
        ``_SCRIPT_MIN_KEYS`` of the keys (typical on Cluster, where keys spread over 16384
        slots) gets plain pipelined SETs instead, since a script call per key would cost
        more. Not atomic across chunks; every command is idempotent and may be resent.
        """
        if not items:
            return
        batch_size = self.batch_size
        scripted: list[tuple[Sequence[str], Sequence[Arg]]] = []
        commands: list[tuple[Arg, ...]] = []
        for group in self._by_slot(items).values():
            if ttl_ms is not None and len(group) < _SCRIPT_MIN_KEYS:
                commands += [("SET", k, items[k], "PX", ttl_ms) for k in group]
                continue
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                if ttl_ms is None:
                    commands.append(("MSET", *(a for k in chunk for a in (k, items[k]))))
                else:
                    scripted.append((chunk, [ttl_ms, *(items[k] for k in chunk)]))
        if scripted:
            await self.run_script_many("kv_set_many", scripted, idempotent=True)
        if commands:
            await self.batch(commands, idempotent=True)

    # --- batches ------------------------------------------------------------------------
    async def batch(
        self,
        commands: Sequence[Sequence[Arg]],
        *,
        idempotent: bool = False,
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Run many commands, pipelined in chunks of REDIS_PIPELINE_BATCH_SIZE when
        REDIS_ENABLE_PIPELINING is on (one request per cluster node per chunk on Cluster),
        else as concurrent single commands. Not atomic: use a Lua script for that.

        Args:
            commands: each a command and its arguments.
            idempotent: whether a chunk may be resent after a lost reply.
            raise_on_error: raise the first failed command's error (after all ran); when
                False, failed commands come back as ZenError instances in their place.

        Returns:
            The replies, in the order of ``commands``.
        """
        pipelining, batch_size, _ = self._settings
        results: list[Any] = []
        for start in range(0, len(commands), batch_size):
            chunk = commands[start : start + batch_size]
            if pipelining:
                results.extend(await self._pipeline(chunk, idempotent=idempotent))
            else:
                results.extend(await asyncio.gather(*(self._single(c, idempotent) for c in chunk)))
        if raise_on_error:
            for reply in results:
                if isinstance(reply, ZenError):
                    raise reply
        return results

    async def _single(self, command: Sequence[Arg], idempotent: bool) -> Any:
        try:
            return await self.execute(*command, idempotent=idempotent)
        except ZenError as exc:
            return exc

    async def _pipeline(self, chunk: Sequence[Sequence[Arg]], *, idempotent: bool) -> list[Any]:
        client = self._client
        if self._runner.durability is not None:
            writes = [str(c[0]).upper() not in _NO_WAIT for c in chunk]
            if any(writes):
                return await self._durable_pipeline(chunk, writes, idempotent=idempotent)
        slots = self._routes(chunk)
        replies = await self._runner.call(
            lambda: self._send_pipeline(client, chunk, slots),
            idempotent=idempotent,
            bounded=slots is None,
        )
        return [self._runner.map(r) if isinstance(r, RedisFailure) else r for r in replies]

    def _by_slot(self, keys: Iterable[str]) -> dict[int, list[str]]:
        if not self.cluster:
            return {0: list(keys)}
        groups: defaultdict[int, list[str]] = defaultdict(list)
        for key in keys:
            groups[self.slot(key)].append(key)
        return groups

    # --- scripts ------------------------------------------------------------------------
    async def run_script(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Arg] = (),
        *,
        idempotent: bool | None = None,
    ) -> Any:
        """Run the Lua operation ``name`` by EVALSHA (EVAL after a NOSCRIPT reply).

        Keys must be full names; on Cluster they must share a hash slot.

        Args:
            name: the script's file stem.
            keys: its KEYS.
            args: its ARGV.
            idempotent: override the script's own declaration for this call (e.g. a publish
                that carries an idempotency key may be resent).

        Raises:
            ConflictError, NotFoundError, ...: the script's typed error reply.
            BackendError: the server could not run it.
        """
        script = self._scripts[name]
        client = self._client
        n = len(keys)
        if idempotent is None:
            idempotent = script.idempotent
        if self._runner.durability is not None and _script_writes(script.source):
            return await self._durable_call(
                ("EVALSHA", script.sha, n, *keys, *args),
                ("EVAL", script.source, n, *keys, *args),
                idempotent=idempotent,
                what=f"script {name}",
            )
        route = self._route
        evalsha = ("EVALSHA", script.sha, n, *keys, *args)
        slot = None if route is None else route.script_slot(keys)
        if route is not None and slot is not None:
            return await self._runner.call(
                lambda: route.call(evalsha, None, slot),
                idempotent=idempotent,
                on_noscript=lambda: route.call(
                    ("EVAL", script.source, n, *keys, *args), None, slot
                ),
                bounded=False,
            )
        return await self._runner.call(
            lambda: client.execute_command("EVALSHA", script.sha, n, *keys, *args),
            idempotent=idempotent,
            on_noscript=lambda: client.execute_command("EVAL", script.source, n, *keys, *args),
        )

    async def run_script_many(
        self,
        name: str,
        calls: Sequence[tuple[Sequence[str], Sequence[Arg]]],
        *,
        raise_on_error: bool = True,
        idempotent: bool = False,
    ) -> list[Any]:
        """Run the Lua operation ``name`` once per ``(keys, args)``, pipelined in batches
        (slot-aware on Cluster). Each call is atomic on its own; the batch is not.

        Args:
            name: the script's file stem.
            calls: each call's KEYS (one hash slot on Cluster) and ARGV.
            raise_on_error: see below.
            idempotent: whether a chunk may be resent after a lost reply (pass True only
                for a script declared idempotent).

        Returns:
            The replies in order; with ``raise_on_error=False`` a failed call's place holds
            its ZenError.
        """
        script = self._scripts[name]
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        client = self._client
        pipelining, batch_size, _ = self._settings
        replies: list[Any] = []
        for start in range(0, len(commands), batch_size):
            chunk = commands[start : start + batch_size]
            if not pipelining:
                replies.extend(
                    await asyncio.gather(
                        *(
                            self._script_call(name, keys, args, idempotent or None)
                            for keys, args in calls[start : start + batch_size]
                        )
                    )
                )
                continue
            if self._runner.durability is not None and _script_writes(script.source):
                raw = await self._durable_pipeline(
                    chunk, [True] * len(chunk), idempotent=idempotent, keep_noscript=True
                )
            else:
                slots = self._routes(chunk)
                raw = await self._runner.call(
                    functools.partial(self._send_pipeline, client, chunk, slots),
                    idempotent=idempotent,
                    bounded=slots is None,
                )
            for i, outcome in enumerate(raw):
                if isinstance(outcome, rx.NoScriptError):  # this node lacks the script: EVAL
                    keys, args = calls[start + i]
                    replies.append(await self._script_call(name, keys, args, idempotent or None))
                elif isinstance(outcome, RedisFailure):
                    replies.append(self._runner.map(outcome))
                else:
                    replies.append(outcome)  # a reply, or a ZenError from the durable path
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, ZenError):
                    raise reply
        return replies

    async def _script_call(
        self, name: str, keys: Sequence[str], args: Sequence[Arg], idempotent: bool | None
    ) -> Any:
        try:
            return await self.run_script(name, keys, args, idempotent=idempotent)
        except ZenError as exc:
            return exc

    def _routes(self, commands: Sequence[Sequence[Arg]]) -> list[int] | None:
        """Each command's slot on the multiplexed path, or None when one of them keeps
        redis-py's path (the batch then goes there whole)."""
        route = self._route
        if route is None:
            return None
        slots: list[int] = []
        for command in commands:
            slot = route.slot(command)
            if slot is None:
                return None
            slots.append(slot)
        return slots

    async def _send_pipeline(
        self,
        client: Redis | RedisCluster,
        commands: Sequence[Sequence[Arg]],
        slots: list[int] | None,
    ) -> list[Any]:
        """Send ``commands`` in one request: their replies, an exception in a failed one's
        place (multiplexed when the path carries every one, ``slots`` from :meth:`_routes`;
        else a redis-py pipeline)."""
        if slots is not None:
            assert self._route is not None
            options = [_reply_options(c) or None for c in commands]
            return await self._route.call_many(commands, options, slots)
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_reply_options(command))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    # --- durability (REDIS_DURABILITY=replicated) ----------------------------------------
    async def _durable_call(
        self,
        command: Sequence[Arg],
        fallback: Sequence[Arg] | None,
        *,
        idempotent: bool,
        what: str,
    ) -> Any:
        """Run one write and WAIT behind it on the same connection; ``fallback`` (EVAL) is
        sent instead after a NOSCRIPT reply.

        Raises:
            DurabilityError: the write was applied but too few replicas confirmed it.
            ZenError: the mapped error of the write (or of WAIT, e.g. an ACL denial).
        """
        durability = self._runner.durability
        assert durability is not None
        client = self._client

        slots = self._routes([command])  # the fallback (EVAL) has the same keys

        async def send(cmd: Sequence[Arg]) -> tuple[Any, int]:
            replies, acks = await self._send_and_wait(client, [cmd], [True], durability, slots)
            reply, ack = replies[0], acks[0]
            if isinstance(reply, Exception):
                raise reply  # the runner maps it (and answers NOSCRIPT with the fallback)
            if isinstance(ack, Exception):
                raise ack
            return reply, ack

        reply, acked = await self._runner.call(
            lambda: send(command),
            idempotent=idempotent,
            on_noscript=None if fallback is None else (lambda: send(fallback)),
            bounded=slots is None,
        )
        if acked < durability.replicas:
            raise DurabilityError(
                acknowledged=acked,
                required=durability.replicas,
                timeout_ms=durability.timeout_ms,
                what=what,
            )
        return reply

    async def _durable_pipeline(
        self,
        chunk: Sequence[Sequence[Arg]],
        writes: Sequence[bool],
        *,
        idempotent: bool,
        keep_noscript: bool = False,
    ) -> list[Any]:
        """A pipelined chunk with a WAIT behind the writes (one per node on Cluster).

        Returns the replies in order; a failed command's place holds its ZenError, and a
        write whose WAIT fell short holds a DurabilityError (it was applied nonetheless).
        With ``keep_noscript`` a NOSCRIPT reply stays a redis-py error for the caller.
        """
        durability = self._runner.durability
        assert durability is not None
        client = self._client
        slots = self._routes(chunk)
        replies, acks = await self._runner.call(
            lambda: self._send_and_wait(client, chunk, writes, durability, slots),
            idempotent=idempotent,
            bounded=slots is None,
        )
        out: list[Any] = []
        for command, reply, ack, write in zip(chunk, replies, acks, writes, strict=True):
            if isinstance(reply, rx.NoScriptError) and keep_noscript:
                out.append(reply)
            elif isinstance(reply, RedisFailure):
                out.append(self._runner.map(reply))
            elif not write:
                out.append(reply)
            elif isinstance(ack, RedisFailure):
                out.append(self._runner.map(ack))
            elif ack < durability.replicas:
                out.append(
                    DurabilityError(
                        acknowledged=ack,
                        required=durability.replicas,
                        timeout_ms=durability.timeout_ms,
                        what=f"{str(command[0]).upper()} in a batch of {len(chunk)}",
                    )
                )
            else:
                out.append(reply)
        return out

    async def _send_and_wait(
        self,
        client: Redis | RedisCluster,
        commands: Sequence[Sequence[Arg]],
        writes: Sequence[bool],
        durability: Durability,
        slots: list[int] | None,
    ) -> tuple[list[Any], list[Any]]:
        """:func:`_send_and_wait`, on the multiplexed path when it carries every command
        (``slots`` from :meth:`_routes`): there the commands go on a connection for durable
        writes, and one WAIT behind each write to the socket covers them and the other
        callers' writes sent with them."""
        if slots is None:
            return await _send_and_wait(client, commands, writes, durability)
        assert self._route is not None
        options = [_reply_options(c) or None for c in commands]
        waited = await self._route.call_many(commands, options, slots, durable=True)
        replies: list[Any] = []
        acks: list[Any] = []
        for outcome in waited:
            if isinstance(outcome, Waited):
                replies.append(outcome.reply)
                acks.append(outcome.acks)
            else:  # not answered: the connection was lost, or the command redirected
                replies.append(outcome)
                acks.append(0)
        return replies, acks


@functools.cache
def _script_writes(source: str) -> bool:
    """Whether a Lua script may write: it calls a command that is not a read (or one whose
    name is not a literal, which counts as a write)."""
    for match in _SCRIPT_CALL.finditer(source):
        name = match.group(2)
        if name is None or name.upper() not in _NO_WAIT:
            return True
    return False


async def _send_and_wait(
    client: Redis | RedisCluster,
    commands: Sequence[Sequence[Arg]],
    writes: Sequence[bool],
    durability: Durability,
) -> tuple[list[Any], list[Any]]:
    """Send ``commands`` with ``WAIT`` behind the writes, on the connection that ran them.

    Returns:
        Each command's reply (an exception instance when it failed) and, per command, the
        number of replicas its WAIT counted (an exception instance when WAIT failed).
    """
    wait = ("WAIT", durability.replicas, durability.timeout_ms)
    if isinstance(client, Redis):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_reply_options(command))
        pipe.execute_command(*wait)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies[:-1], [replies[-1]] * len(commands)
    return await _cluster_send_and_wait(client, commands, writes, wait)


async def _cluster_send_and_wait(
    cluster: RedisCluster,
    commands: Sequence[Sequence[Arg]],
    writes: Sequence[bool],
    wait: tuple[str, int, int],
) -> tuple[list[Any], list[Any]]:
    """The Cluster form of :func:`_send_and_wait`.

    A WAIT counts the replicas of the node it runs on, for the writes of its connection; so
    every command is pinned (``target_nodes``) to the master of its slot, and each node's
    commands and its WAIT go out in one request on one connection. A MOVED or ASK reply
    means the command was not applied: the slot map is patched (or ASKING prefixed) and only
    those commands are sent again, with a WAIT of their own.
    """
    await cluster.initialize()
    replies: list[Any] = [None] * len(commands)
    acks: list[Any] = [0] * len(commands)
    asking: dict[int, ClusterNode] = {}
    pending = list(range(len(commands)))
    for _ in range(_MAX_REDIRECTS):
        pipe = cluster.pipeline(transaction=False)
        plan = await _queue_pinned(
            cluster,
            pipe,
            commands=commands,
            writes=writes,
            pending=pending,
            asking=asking,
            wait=wait,
        )
        try:
            results = await pipe.execute(raise_on_error=False, allow_redirections=False)
        except (rx.ConnectionError, rx.TimeoutError):
            # redis-py refreshes its slot map after a connection error on its single-command
            # path only; flag it as that path does so the next call finds the new master.
            cluster._initialize = True
            raise
        asking = {}
        pending = []
        for (kind, members), result in zip(plan, results, strict=True):
            if kind == "wait":
                for i in members:
                    acks[i] = result
            elif kind == "command":
                replies[members[0]] = result
                if await _redirect(cluster, members[0], result, asking):
                    pending.append(members[0])
        if not pending:
            break
    return replies, acks


async def _queue_pinned(
    cluster: RedisCluster,
    pipe: Any,
    *,
    commands: Sequence[Sequence[Arg]],
    writes: Sequence[bool],
    pending: Sequence[int],
    asking: Mapping[int, ClusterNode],
    wait: tuple[str, int, int],
) -> list[tuple[str, list[int]]]:
    """Queue the ``pending`` commands on ``pipe``, each pinned to its slot's master (or to
    the node an ASK named, behind ASKING) in their order, with a WAIT after each node's
    writes. A read without a key (nothing to pin by, no WAIT needed) is routed by redis-py.

    Returns what each queued entry is: ``("command", [i])``, ``("asking", [i])`` or
    ``("wait", [the command indexes it covers])``.
    """
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    plan: list[tuple[str, list[int]]] = []
    for i in pending:
        try:
            node = asking[i] if i in asking else await _master_for(cluster, commands[i])
        except rx.RedisClusterException:
            if writes[i]:
                raise
            pipe.execute_command(*commands[i], **_reply_options(commands[i]))
            plan.append(("command", [i]))
            continue
        groups.setdefault(node.name, (node, []))[1].append(i)
    for node, members in groups.values():
        for i in members:
            if i in asking:
                pipe.execute_command("ASKING", target_nodes=node)
                plan.append(("asking", [i]))
            pipe.execute_command(*commands[i], target_nodes=node, **_reply_options(commands[i]))
            plan.append(("command", [i]))
        if any(writes[i] for i in members):
            pipe.execute_command(*wait, target_nodes=node)
            plan.append(("wait", members))
    return plan


async def _master_for(cluster: RedisCluster, command: Sequence[Arg]) -> ClusterNode:
    """The master that owns the slot of ``command``'s keys (as redis-py would route it)."""
    nodes: list[ClusterNode] = await cluster.get_nodes_from_slot(str(command[0]), *command[1:])
    return nodes[0]


async def _redirect(
    cluster: RedisCluster, index: int, result: Any, asking: dict[int, ClusterNode]
) -> bool:
    """Whether command ``index`` was redirected (so not applied) and must be sent again:
    MOVED patches the slot map, ASK records the node to ask."""
    if isinstance(result, rx.MovedError):
        await cluster.nodes_manager.move_slot(result)
        return True
    if isinstance(result, rx.AskError):
        target = cluster.get_node(host=result.host, port=result.port)
        if target is not None:
            asking[index] = target
            return True
    return False
