"""Keyspace handles: the only way domain code talks to Redis.

A :class:`Keyspace` names keys (``zen:t:<tenant>:`` then, in the prefixed layout, the keyspace
name) and runs commands, pipelined batches and Lua scripts through one :class:`CommandRunner`,
which owns the circuit breaker, the retry policy and the mapping of redis-py errors.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from zen_async.errors import BackendError, ZenError
from zen_async.store._errors import RedisFailure, is_outage, map_error, raise_if_cancelling
from zen_async.store.breaker import CircuitBreaker
from zen_async.store.scripts import ScriptRegistry

__all__ = ["Arg", "CommandRunner", "Keyspace"]

Arg = str | bytes | int | float
"""One argument of a Redis command."""

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
_RETRY_BASE: Final = 0.05
_RETRY_CAP: Final = 1.0


class CommandRunner:
    """Runs one redis-py call with breaker admission, error mapping and safe retries.

    Args:
        breaker: the deployment's circuit breaker.
        retry_attempts: extra attempts for idempotent calls that failed retryably.
        user: the ACL user, named in authentication errors.
        bound: a semaphore limiting concurrent calls (Cluster), or None.
    """

    __slots__ = ("_bound", "_retries", "_user", "breaker")

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        retry_attempts: int,
        user: str | None,
        bound: asyncio.Semaphore | None,
    ) -> None:
        self.breaker = breaker
        self._retries = retry_attempts
        self._user = user
        self._bound = bound

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        on_noscript: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Await ``fn()`` under the breaker, retrying retryable failures if ``idempotent``.

        Raises:
            DegradedError: the circuit is open.
            ZenError: the mapped redis-py error.
        """
        attempt = 0
        while True:
            probe = self.breaker.before_call()
            try:
                if self._bound is None:
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
                error = map_error(exc, user=self._user)
                if is_outage(exc):
                    self.breaker.record_failure(probe=probe)
                elif probe:
                    self.breaker.release_probe()
                if (
                    idempotent
                    and isinstance(error, BackendError)
                    and error.retryable
                    and attempt < self._retries
                ):
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
    ) -> None:
        self.name = name
        self.tenant = tenant
        self.db = db
        self.prefix = f"zen:t:{tenant}:{name}:" if prefixed else f"zen:t:{tenant}:"
        self.cluster = isinstance(client, RedisCluster)
        self._client = client
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
        )

    def key(self, *parts: str | int) -> str:
        """The full key name for ``parts`` joined by ``:`` (put a ``{tag}`` in a part to pin
        related keys to one cluster slot)."""
        return self.prefix + ":".join(str(p) for p in parts)

    def slot(self, key: str) -> int:
        """The cluster hash slot of a full key name."""
        return key_slot(key.encode())

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
        if idempotent is None:
            idempotent = str(args[0]).upper() in _IDEMPOTENT
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
        """SET many keys, pipelined in batches (slot-aware on Cluster)."""
        if ttl_ms is None:
            commands: list[tuple[Arg, ...]] = [("SET", k, v) for k, v in items.items()]
        else:
            commands = [("SET", k, v, "PX", ttl_ms) for k, v in items.items()]
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
        replies = await self._runner.call(
            lambda: self._send_pipeline(client, chunk), idempotent=idempotent
        )
        return [map_error(r) if isinstance(r, RedisFailure) else r for r in replies]

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
        return await self._runner.call(
            lambda: client.execute_command("EVALSHA", script.sha, n, *keys, *args),
            idempotent=script.idempotent if idempotent is None else idempotent,
            on_noscript=lambda: client.execute_command("EVAL", script.source, n, *keys, *args),
        )

    async def run_script_many(
        self,
        name: str,
        calls: Sequence[tuple[Sequence[str], Sequence[Arg]]],
        *,
        raise_on_error: bool = True,
    ) -> list[Any]:
        """Run the Lua operation ``name`` once per ``(keys, args)``, pipelined in batches
        (slot-aware on Cluster). Each call is atomic on its own; the batch is not.

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
                            self._script_call(name, keys, args)
                            for keys, args in calls[start : start + batch_size]
                        )
                    )
                )
                continue
            raw = await self._runner.call(
                functools.partial(self._send_pipeline, client, chunk), idempotent=False
            )
            for i, outcome in enumerate(raw):
                if isinstance(outcome, rx.NoScriptError):  # this node lacks the script: EVAL
                    keys, args = calls[start + i]
                    replies.append(await self._script_call(name, keys, args))
                elif isinstance(outcome, RedisFailure):
                    replies.append(map_error(outcome))
                else:
                    replies.append(outcome)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, ZenError):
                    raise reply
        return replies

    async def _script_call(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self.run_script(name, keys, args)
        except ZenError as exc:
            return exc

    @staticmethod
    async def _send_pipeline(
        client: Redis | RedisCluster, commands: Sequence[Sequence[Arg]]
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_reply_options(command))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
