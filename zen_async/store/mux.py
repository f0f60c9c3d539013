"""The multiplexed, auto-pipelined command path (``REDIS_TRANSPORT=multiplexed``).

Per server node and DB, a few long-lived connections (``REDIS_MUX_CONNECTIONS``). A command
is queued on one of them and its caller awaits a future; every command queued during one
event-loop iteration leaves in one socket write (the flush is scheduled with ``call_soon``
when the first one is queued). One reader task per connection feeds what arrives to a hiredis
reader and resolves the futures in the order the commands were sent: Redis answers each
connection in order.

redis-py still does what it does well: a connection is made and set up by redis-py's own
connection class (AUTH/HELLO, SELECT, client name, TLS, on Sentinel asking the sentinels for
the master), replies get redis-py's response callbacks, and error replies become redis-py's
exceptions, so the :class:`~zen_async.store.keyspace.CommandRunner` maps them as before.
Blocking commands, pub/sub and WATCH/MULTI never come here (:data:`CONNECTION_BOUND`).

Faults:

- a cancelled caller's reply is still read and dropped (a command not yet written when its
  caller is cancelled is not sent at all): the reply stream never slips;
- a lost connection, or one whose oldest unanswered command is older than
  REDIS_SOCKET_TIMEOUT (a frozen server), fails every command in flight on it with one shared
  exception: the runner counts one breaker failure for it, not one per command. The next
  command reconnects; after failed connects, later ones wait a growing backoff, meanwhile
  failing at once with the last connect error;
- back-pressure: at most REDIS_MUX_MAX_IN_FLIGHT commands queued or unanswered per connection;
  further callers wait for room instead of growing memory.

With ``REDIS_DURABILITY=replicated`` durable writes go through separate connections, and
each write of theirs that leaves with a batch is covered by one ``WAIT`` sent behind the
batch (group commit); reads and other callers never queue behind a WAIT.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import hiredis
from redis import exceptions as rx
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

__all__ = ["CONNECTION_BOUND", "ClusterMux", "NodeMux", "Waited", "slot_of"]

Arg = str | bytes | int | float

CONNECTION_BOUND: Final = frozenset(
    {
        # they block the connection, or wait on it
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "XREAD",
        "XREADGROUP",
        "WAIT",
        "WAITAOF",
        # they change or depend on the connection's state
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "WATCH",
        "UNWATCH",
        "MULTI",
        "EXEC",
        "DISCARD",
        "SELECT",
        "AUTH",
        "HELLO",
        "CLIENT",
        "RESET",
        "QUIT",
        "MONITOR",
        "SYNC",
        "PSYNC",
        "ASKING",
        "READONLY",
        "READWRITE",
        "SHUTDOWN",
        "DEBUG",
    }
)
"""Commands that keep a dedicated connection from redis-py's pools."""

_MORE: Final = object()  # hiredis: not enough data for a whole reply yet
_READ_SIZE: Final = 65536
_MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = (rx.MovedError, rx.AskError, rx.TryAgainError)
"""Cluster replies that say the command was not applied and where (or when) to send it."""
_BACKOFF_BASE: Final = 0.05
_BACKOFF_CAP: Final = 2.0
_CLOSED_BY_SERVER: Final = "Connection closed by server."
_DEMOTED: Final = "The previous master is now a slave"
_PUSH: Final = getattr(hiredis, "PushNotification", None)

# Entry kinds: what a reply resolves.
_PLAIN: Final = 0  # the caller's reply
_DURABLE: Final = 1  # a write that a WAIT behind its batch must also answer
_WAIT: Final = 2  # the WAIT closing a batch of durable writes (internal)
_ASKING: Final = 3  # ASKING before a command sent to the node an ASK named (internal)


class Waited:
    """The reply of a durable write and the replica count of the WAIT that covered it."""

    __slots__ = ("acks", "reply")

    def __init__(self, reply: Any, acks: Any) -> None:
        self.reply = reply
        self.acks = acks  # an int, or the exception WAIT answered with


def slot_of(args: Sequence[Arg]) -> int | None:
    """The cluster hash slot of a command's first key, or None when it names no key this
    path knows how to find (such commands keep redis-py's routing)."""
    name = str(args[0]).upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"):
        if len(args) < 4 or int(args[2]) < 1:
            return None
        return _slot(args[3])
    if name in _KEY_FIRST and len(args) > 1:
        return _slot(args[1])
    return None


def _slot(key: Arg) -> int:
    return key_slot(key if isinstance(key, bytes) else str(key).encode())


# Commands whose first argument is a key (every key of a command routed here must share its
# slot, as zen's keyspaces guarantee on Cluster).
_KEY_FIRST: Final = frozenset(
    {
        "GET", "SET", "SETNX", "SETEX", "PSETEX", "GETSET", "GETDEL", "GETEX", "APPEND",
        "INCR", "INCRBY", "INCRBYFLOAT", "DECR", "DECRBY", "STRLEN", "GETRANGE", "SETRANGE",
        "MGET", "MSET", "MSETNX", "DEL", "UNLINK", "EXISTS", "EXPIRE", "PEXPIRE", "EXPIREAT",
        "PEXPIREAT", "PERSIST", "TTL", "PTTL", "TYPE", "TOUCH",
        "HGET", "HSET", "HSETNX", "HMSET", "HMGET", "HGETALL", "HDEL", "HLEN", "HEXISTS",
        "HKEYS", "HVALS", "HINCRBY", "HINCRBYFLOAT", "HSCAN", "HSTRLEN",
        "SADD", "SREM", "SMEMBERS", "SISMEMBER", "SMISMEMBER", "SCARD", "SPOP", "SRANDMEMBER",
        "SSCAN",
        "ZADD", "ZREM", "ZRANGE", "ZRANGEBYSCORE", "ZREVRANGE", "ZREVRANGEBYSCORE",
        "ZRANGEBYLEX", "ZSCORE", "ZMSCORE", "ZCARD", "ZCOUNT", "ZRANK", "ZREVRANK", "ZINCRBY",
        "ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "ZPOPMIN", "ZPOPMAX", "ZSCAN",
        "LPUSH", "RPUSH", "LPOP", "RPOP", "LRANGE", "LLEN", "LINDEX", "LREM", "LTRIM", "LSET",
        "XADD", "XRANGE", "XREVRANGE", "XLEN", "XACK", "XDEL", "XTRIM", "XCLAIM",
        "XAUTOCLAIM", "XPENDING", "XSETID",
        "PFADD", "PFCOUNT", "BITCOUNT", "SETBIT", "GETBIT",
    }
)  # fmt: skip
# XGROUP and XINFO name a subcommand first: on Cluster they keep redis-py's routing.


def _packer(slow: Callable[..., list[bytes]]) -> Callable[..., list[bytes]]:
    """hiredis's packer on the arguments as they are, else redis-py's (``slow``).

    redis-py encodes each argument in Python before handing them to hiredis, which takes
    str, bytes, int and float itself and encodes them alike (floats by repr). Anything else
    (a bool, None, a dict: redis-py's DataError; a memoryview) and a first argument holding a
    space (redis-py splits "SCRIPT LOAD" in two) take redis-py's path.
    """
    fast = hiredis.pack_command

    def pack(*args: Any) -> list[bytes]:
        first = args[0]
        if first.__class__ is str and " " not in first:
            try:
                return [fast(args)]
            except TypeError:
                pass
        return slow(*args)

    return pack


def _backoff(failures: int) -> float:
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class _Pipe:
    """One multiplexed connection: queue, one write per loop iteration, FIFO replies."""

    __slots__ = (
        "_callbacks",
        "_conn",
        "_connecting",
        "_flush_scheduled",
        "_flushes",
        "_loop",
        "_mux",
        "_outbox",
        "_read_count",
        "_reader",
        "_reader_task",
        "_sent_count",
        "_timer",
        "_waiting",
        "_writer",
        "address",
        "durable",
        "load",
    )

    def __init__(self, mux: NodeMux, *, durable: bool) -> None:
        self._mux = mux
        self.durable = durable
        self._loop = asyncio.get_running_loop()
        self._conn: AbstractConnection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: Any = None  # the hiredis reader of the current connection
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._callbacks: Mapping[Any, Callable[..., Any]] = mux.callbacks
        self._outbox: list[list[Any]] = []  # queued this iteration, not yet written
        self._waiting: collections.deque[list[Any]] = collections.deque()  # written
        self._flushes: collections.deque[tuple[int, float]] = collections.deque()
        self._flush_scheduled = False
        self._sent_count = 0
        self._read_count = 0
        self._timer: asyncio.TimerHandle | None = None
        self.address: tuple[str, int] | None = None
        self.load = 0  # commands queued or unanswered

    # --- queueing -----------------------------------------------------------------------
    def submit(self, entries: list[list[Any]]) -> None:
        """Queue ``entries`` (kept adjacent) for the next write."""
        self._outbox.extend(entries)
        self.load += len(entries)
        if self._writer is None:
            if self._connecting is None:
                self._connecting = self._loop.create_task(self._connect())
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        writer = self._writer
        if writer is None or not self._outbox:
            return
        entries = self._outbox
        self._outbox = []
        send: list[list[Any]] = []
        packed: list[bytes] = []
        durable = False
        skipped = 0
        for i, entry in enumerate(entries):
            kind = entry[1]
            # The command behind an ASKING is the one that decides for both.
            caller = entries[i + 1] if kind == _ASKING else entry
            if caller[0].done():
                skipped += 1  # cancelled before it was written: it is not sent at all
                continue
            if kind == _DURABLE:
                durable = True
            send.append(entry)
            packed.extend(entry[4])
        self._release(skipped)
        if durable:
            wait = self._mux.wait_command
            assert wait is not None
            writes = [entry for entry in send if entry[1] == _DURABLE]
            send.append([None, _WAIT, None, None, wait, writes])
            packed.extend(self._mux.pack(*wait))
            self.load += 1
        if not send:
            return
        writer.write(b"".join(packed))
        self._waiting.extend(send)
        self._sent_count += len(send)
        now = time.monotonic()
        self._flushes.append((self._sent_count, now))
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._mux.timeout, self._watch)

    # --- replies ------------------------------------------------------------------------
    async def _read_loop(self, stream: asyncio.StreamReader, reader: Any) -> None:
        try:
            while True:
                self._feed(reader, await stream.read(_READ_SIZE))
        except asyncio.CancelledError:
            raise
        except rx.ConnectionError as exc:
            self._break(exc)
        except Exception as exc:  # a reset, a protocol error: the stream cannot be trusted
            self._break(rx.ConnectionError(f"Error while reading from {self._where()}: {exc}"))

    def _feed(self, reader: Any, data: bytes) -> None:
        """Parse what arrived and answer, in order, the commands it completes."""
        if not data:
            raise rx.ConnectionError(_CLOSED_BY_SERVER)
        reader.feed(data)
        waiting = self._waiting
        done = 0
        while True:
            reply = reader.gets()
            if reply is _MORE:
                break
            if _PUSH is not None and isinstance(reply, _PUSH):
                continue  # RESP3 push frames answer no command
            if not waiting:
                raise rx.InvalidResponse("a reply arrived with no command waiting")
            self.load -= 1
            self._read_count += 1
            self._resolve(waiting.popleft(), reply)
            done += 1
        if done:
            self._mux.room(done)

    def _resolve(self, entry: list[Any], reply: Any) -> None:
        """Answer the entry ``[future, kind, name, options, args, extra]`` with ``reply``."""
        kind = entry[1]
        if kind == _PLAIN:
            future = entry[0]
            if future.done():
                return  # its caller was cancelled: the reply is read and dropped
            reply = self._parse(entry, reply)
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        elif kind == _DURABLE:
            entry[5] = self._parse(entry, reply)  # kept until the batch's WAIT answers
        elif kind == _WAIT:
            for write in entry[5]:  # the batch's durable writes, answered now
                if not write[0].done():
                    write[0].set_result(Waited(write[5], reply))
        # _ASKING: its reply (OK) is dropped; the command behind it answers for itself

    def _parse(self, entry: list[Any], reply: Any) -> Any:
        """redis-py's reading of ``reply``: its exception, or its callback's result."""
        if isinstance(reply, Exception):
            if isinstance(reply, rx.ReadOnlyError) and self._mux.sentinel:
                return self._demoted()
            return reply
        callback = self._callbacks.get(entry[2])
        if callback is None:
            return reply
        options = entry[3]
        try:
            return callback(reply, **options) if options else callback(reply)
        except Exception as exc:  # a reply the callback could not read
            return exc

    def _demoted(self) -> rx.ConnectionError:
        """A READONLY reply from what the sentinels named master: it was demoted. The
        connection is closed so the next one asks the sentinels again."""
        error = rx.ConnectionError(_DEMOTED)
        self._loop.call_soon(self._break, error)
        return error

    def _release(self, n: int) -> None:
        if n:
            self.load -= n
            self._mux.room(n)

    def _watch(self) -> None:
        """The oldest unanswered batch must be answered within the socket timeout."""
        self._timer = None
        flushes = self._flushes
        while flushes and flushes[0][0] <= self._read_count:
            flushes.popleft()
        if not flushes:
            return
        deadline = flushes[0][1] + self._mux.timeout
        if deadline <= time.monotonic():
            self._break(rx.TimeoutError(f"Timeout reading from {self._where()}"))
            return
        self._timer = self._loop.call_at(deadline, self._watch)

    # --- the connection -----------------------------------------------------------------
    async def _connect(self) -> None:
        mux = self._mux
        try:
            error = mux.backoff_error()
            if error is not None:
                self._fail_all(error)
                return
            conn = mux.make_connection()
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                failure = (
                    exc
                    if isinstance(exc, rx.RedisError)
                    else rx.ConnectionError(f"Error connecting to {mux.name}: {exc}")
                )
                mux.connect_failed(failure)
                self._fail_all(failure)
                return
            mux.connected()
            self._conn = conn
            stream, writer = conn._reader, conn._writer
            assert stream is not None
            assert writer is not None
            host, port = getattr(conn, "host", None), getattr(conn, "port", None)
            self.address = (host, int(port)) if isinstance(host, str) and port else None
            parser = conn._parser
            self._reader = hiredis.Reader(
                protocolError=rx.InvalidResponse,
                replyError=parser.parse_error,
                notEnoughData=_MORE,
            )
            self._writer = writer
            self._reader_task = self._loop.create_task(self._read_loop(stream, self._reader))
        except Exception as exc:  # unforeseen: nobody may wait forever on this connection
            self._break(rx.ConnectionError(f"Error connecting to {mux.name}: {exc}"))
        finally:
            self._connecting = None
        if self._outbox:
            self._flush()

    def _fail_all(self, error: BaseException) -> None:
        """Fail everything queued or in flight with ``error`` (one shared instance)."""
        entries = [*self._waiting, *self._outbox]
        self._waiting.clear()
        self._outbox = []
        self._flushes.clear()
        self._read_count = self._sent_count  # the watchdog counts from the next write on
        for entry in entries:
            kind = entry[1]
            if kind in (_PLAIN, _DURABLE):
                if not entry[0].done():
                    entry[0].set_exception(error)
            elif kind == _WAIT:  # writes answered, but not yet their WAIT: outcome unknown
                for write in entry[5]:
                    if not write[0].done():
                        write[0].set_exception(error)
        self._release(len(entries))

    def _break(self, error: BaseException) -> None:
        """The connection is lost (or given up on): fail what is on it, close it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn, task = self._conn, self._reader_task
        self._conn = self._writer = self._reader = self._reader_task = None
        self.address = None
        self._fail_all(error)
        self._mux.room(len(self._mux._room_waiters))  # each waiter looks again
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if conn is not None:
            self._mux.dispose(conn)

    def _where(self) -> str:
        if self.address is None:
            return self._mux.name
        return f"{self.address[0]}:{self.address[1]}"

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        self._break(rx.ConnectionError("Connection closed by the client."))


class NodeMux:
    """The multiplexed connections to one server node and DB.

    Args:
        name: the node, for messages (``host:port``).
        make_connection: builds an unconnected redis-py connection (its pool's
            ``make_connection``; on Sentinel one that asks the sentinels where the master is).
        callbacks: redis-py's response callbacks (by command name).
        connections: plain connections (REDIS_MUX_CONNECTIONS).
        max_in_flight: commands queued or unanswered per connection before callers wait.
        timeout: REDIS_SOCKET_TIMEOUT, the longest a written command may wait for its reply.
        wait_command: ``WAIT <replicas> <timeout>`` behind each batch of durable writes
            (REDIS_DURABILITY=replicated), or None.
        sentinel: a READONLY reply means the master was demoted (reconnect via sentinels).
    """

    def __init__(
        self,
        name: str,
        make_connection: Callable[[], AbstractConnection],
        callbacks: Mapping[Any, Callable[..., Any]],
        *,
        connections: int,
        max_in_flight: int,
        timeout: float,
        wait_command: tuple[str, int, int] | None = None,
        sentinel: bool = False,
    ) -> None:
        self.name = name
        self.make_connection = make_connection
        self.pack = _packer(make_connection().pack_command)
        """Encodes a command as redis-py does, with its typed errors (see :func:`_packer`)."""
        self.callbacks = callbacks
        self.timeout = timeout
        self.wait_command = wait_command
        self.sentinel = sentinel
        self._size = connections
        self._max = max_in_flight
        self._pipes: list[_Pipe] = []
        self._durable: list[_Pipe] = []
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._connect_failures = 0
        self._retry_at = 0.0
        self._last_error: BaseException | None = None
        self._disposing: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- calls --------------------------------------------------------------------------
    def slot(self, args: Sequence[Arg]) -> int | None:
        """0 when this path may carry the command, None when it keeps a dedicated
        connection (:data:`CONNECTION_BOUND`)."""
        return None if str(args[0]).upper() in CONNECTION_BOUND else 0

    def script_slot(self, keys: Sequence[str]) -> int:
        """The slot routing a script call on ``keys`` (one node: 0)."""
        del keys
        return 0

    async def call(
        self,
        args: Sequence[Arg],
        options: Mapping[str, Any] | None,
        slot: int = 0,
        *,
        durable: bool = False,
    ) -> Any:
        """Send one command: its reply (after redis-py's callback), raising its exception;
        a durable write answers a :class:`Waited`."""
        del slot  # one node
        packed = self.pack(*args)  # bad arguments raise here, to their caller
        pipe = self._pick(durable) or await self._pipe(durable)
        future = pipe._loop.create_future()
        pipe.submit([[future, _DURABLE if durable else _PLAIN, args[0], options, packed, None]])
        return await future

    async def call_asking(
        self, args: Sequence[Arg], options: Mapping[str, Any] | None, *, durable: bool
    ) -> Any:
        """Send ``ASKING`` and the command right behind it (a Cluster ASK redirect)."""
        packed = self.pack(*args)  # bad arguments raise here, to their caller
        pipe = self._pick(durable) or await self._pipe(durable)
        future = pipe._loop.create_future()
        asking: list[Any] = [None, _ASKING, None, None, self.pack("ASKING"), None]
        pipe.submit(
            [asking, [future, _DURABLE if durable else _PLAIN, args[0], options, packed, None]]
        )
        return await future

    async def call_many(
        self,
        commands: Sequence[Sequence[Arg]],
        options: Sequence[Mapping[str, Any] | None],
        slots: Sequence[int] = (),
        *,
        durable: bool = False,
    ) -> list[Any]:
        """Send commands in one write: each one's reply, or its exception in its place
        (durable ones: a :class:`Waited` each, covered by one WAIT)."""
        del slots  # one node
        packs = [self.pack(*command) for command in commands]  # bad arguments raise here
        pipe = self._pick(durable) or await self._pipe(durable)
        loop = pipe._loop
        kind = _DURABLE if durable else _PLAIN
        futures = [loop.create_future() for _ in commands]
        pipe.submit(
            [
                [future, kind, command[0], option, packed, None]
                for future, command, option, packed in zip(
                    futures, commands, options, packs, strict=True
                )
            ]
        )
        return await _gather_outcomes(futures)

    async def _pipe(self, durable: bool) -> _Pipe:
        """The least loaded connection with room (opened on first use); waits for room."""
        pipe = self._pick(durable)
        while pipe is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.room(1)  # pass the room this caller no longer needs
                raise
            pipe = self._pick(durable)
        return pipe

    def _pick(self, durable: bool) -> _Pipe | None:
        """The least loaded connection, None when every one is full."""
        if self._closed:
            raise rx.ConnectionError("Connection closed by the client.")
        pipes = self._durable if durable else self._pipes
        if len(pipes) < self._size:
            pipe = _Pipe(self, durable=durable)
            pipes.append(pipe)
            return pipe
        best = pipes[0]
        for pipe in pipes:
            if pipe.load < best.load:
                best = pipe
        return best if best.load < self._max else None

    def room(self, n: int) -> None:
        """``n`` commands were answered or failed: wake as many callers waiting for room."""
        waiters = self._room_waiters
        while n > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    # --- connection bookkeeping -----------------------------------------------------------
    def backoff_error(self) -> BaseException | None:
        """While the backoff after a failed connect lasts, a new error like the last one
        (each caller refused meanwhile is a failure of its own for the breaker), else None."""
        last = self._last_error
        if last is None or time.monotonic() >= self._retry_at:
            return None
        try:
            error = type(last)(*last.args)
        except Exception:  # an error class built otherwise: the same one, counted once
            return last
        error.__cause__ = last.__cause__  # the OSError that says why (errno), for messages
        return error

    def connect_failed(self, error: BaseException) -> None:
        self._connect_failures += 1
        self._last_error = error
        self._retry_at = time.monotonic() + _backoff(self._connect_failures)

    def connected(self) -> None:
        self._connect_failures = 0
        self._last_error = None

    def dispose(self, conn: AbstractConnection) -> None:
        """Close a dropped connection in the background."""
        task = asyncio.get_running_loop().create_task(_disconnect(conn))
        self._disposing.add(task)
        task.add_done_callback(self._disposing.discard)

    def follow(self, master: tuple[str, int]) -> int:
        """Close every connection open to a server other than ``master`` (Sentinel: a
        former master); returns how many."""
        stale = [p for p in (*self._pipes, *self._durable) if p.address and p.address != master]
        for pipe in stale:
            pipe._break(rx.ConnectionError(_DEMOTED))
        return len(stale)

    def usage(self) -> dict[str, int]:
        """Open connections and commands queued or unanswered on them."""
        pipes = [*self._pipes, *self._durable]
        return {
            "connections": sum(1 for p in pipes if p._writer is not None),
            "in_flight": sum(p.load for p in pipes),
        }

    async def aclose(self) -> None:
        self._closed = True
        for pipe in (*self._pipes, *self._durable):
            await pipe.aclose()
        self._pipes.clear()
        self._durable.clear()
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._disposing:
            await asyncio.gather(*self._disposing, return_exceptions=True)


class ClusterMux:
    """The multiplexed path on Redis Cluster: one :class:`NodeMux` per master, a command
    routed by its first key's slot on redis-py's slot map. A MOVED reply (the command was not
    applied) patches the map and the command goes to the new owner; an ASK sends it behind
    ASKING to the node named; TRYAGAIN (a multi-key command during a migration) waits a
    moment. A lost connection asks redis-py for a topology refresh.

    Args:
        cluster: redis-py's cluster client (its nodes manager owns the slot map).
        settings: as :class:`NodeMux` (connections, max_in_flight, timeout, wait_command).
    """

    def __init__(
        self,
        cluster: RedisCluster,
        *,
        connections: int,
        max_in_flight: int,
        timeout: float,
        wait_command: tuple[str, int, int] | None,
    ) -> None:
        self._cluster = cluster
        self._options = {
            "connections": connections,
            "max_in_flight": max_in_flight,
            "timeout": timeout,
            "wait_command": wait_command,
        }
        self._nodes: dict[str, NodeMux] = {}

    def _mux(self, node: ClusterNode) -> NodeMux:
        mux = self._nodes.get(node.name)
        if mux is None:
            mux = self._nodes[node.name] = NodeMux(
                node.name,
                lambda: node.connection_class(**node.connection_kwargs),
                node.response_callbacks,
                **self._options,  # type: ignore[arg-type]
            )
        return mux

    def slot(self, args: Sequence[Arg]) -> int | None:
        """The slot that routes the command here, or None when it keeps redis-py's path (a
        dedicated connection, or no key this path knows how to find)."""
        if str(args[0]).upper() in CONNECTION_BOUND:
            return None
        return slot_of(args)

    def script_slot(self, keys: Sequence[str]) -> int | None:
        """The slot of a script call's first key (None without keys: redis-py routes it)."""
        return _slot(keys[0]) if keys else None

    async def _owner(self, slot: int) -> NodeMux:
        cluster = self._cluster
        if cluster._initialize:
            await cluster.initialize()
        return self._mux(cluster.nodes_manager.get_node_from_slot(slot))

    async def call(
        self,
        args: Sequence[Arg],
        options: Mapping[str, Any] | None,
        slot: int,
        *,
        durable: bool = False,
        asking: ClusterNode | None = None,
    ) -> Any:
        """One command on its slot's master (a :class:`Waited` when ``durable``), or first
        behind ASKING on ``asking``; redirects followed."""
        for attempt in range(_MAX_REDIRECTS):
            try:
                return await self._send(args, options, slot, durable=durable, asking=asking)
            except Exception as exc:
                asking = await self._redirect(exc, attempt)
        raise rx.ClusterError(f"{args[0]!r}: still redirected after {_MAX_REDIRECTS} attempts")

    async def _send(
        self,
        args: Sequence[Arg],
        options: Mapping[str, Any] | None,
        slot: int,
        *,
        durable: bool,
        asking: ClusterNode | None,
    ) -> Any:
        if asking is not None:
            reply = await self._mux(asking).call_asking(args, options, durable=durable)
        else:
            reply = await (await self._owner(slot)).call(args, options, durable=durable)
        if isinstance(reply, Waited) and isinstance(reply.reply, _REDIRECTS):
            raise reply.reply  # a durable write redirected: it was not applied
        return reply

    async def _redirect(self, exc: Exception, attempt: int) -> ClusterNode | None:
        """Where to send a redirected command next (a node for ASK, None for its slot's
        owner), or ``exc`` raised when it was not a redirect."""
        cluster = self._cluster
        if isinstance(exc, rx.MovedError):
            await cluster.nodes_manager.move_slot(exc)
            return None
        if isinstance(exc, rx.AskError):
            node = cluster.get_node(host=exc.host, port=exc.port)
            if node is None:
                cluster._initialize = True
                raise exc
            return node
        if isinstance(exc, rx.TryAgainError) and attempt < _MAX_REDIRECTS - 1:
            await asyncio.sleep(0.05 * (attempt + 1))
            return None
        if isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.ClusterDownError):
            cluster._initialize = True  # the next call refreshes the slot map first
        raise exc

    async def call_many(
        self,
        commands: Sequence[Sequence[Arg]],
        options: Sequence[Mapping[str, Any] | None],
        slots: Sequence[int],
        *,
        durable: bool = False,
    ) -> list[Any]:
        """Commands grouped by owner, one write per node; each one's reply or exception.
        A redirected command is sent again on its own."""
        groups: dict[str, tuple[NodeMux, list[int]]] = {}
        for i, slot in enumerate(slots):
            mux = await self._owner(slot)
            groups.setdefault(mux.name, (mux, []))[1].append(i)
        out: list[Any] = [None] * len(commands)

        async def run(mux: NodeMux, members: list[int]) -> None:
            batch = [commands[i] for i in members]
            opts = [options[i] for i in members]
            replies = await mux.call_many(batch, opts, durable=durable)
            for i, reply in zip(members, replies, strict=True):
                out[i] = reply

        await asyncio.gather(*(run(mux, members) for mux, members in groups.values()))
        for i, outcome in enumerate(out):
            reply = outcome.reply if isinstance(outcome, Waited) else outcome
            if isinstance(reply, _REDIRECTS):
                try:
                    asking = await self._redirect(reply, 0)
                    out[i] = await self.call(
                        commands[i], options[i], slots[i], durable=durable, asking=asking
                    )
                except Exception as exc:
                    out[i] = exc
            elif isinstance(reply, rx.ConnectionError | rx.TimeoutError):
                self._cluster._initialize = True
        return out

    def usage(self) -> dict[str, dict[str, int]]:
        return {name: mux.usage() for name, mux in self._nodes.items()}

    async def aclose(self) -> None:
        for mux in self._nodes.values():
            await mux.aclose()
        self._nodes.clear()


async def _disconnect(conn: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)


async def _gather_outcomes(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Each future's result, or its exception in its place (none is left unretrieved)."""
    out: list[Any] = []
    try:
        for future in futures:
            try:
                out.append(await future)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                out.append(exc)
    except asyncio.CancelledError:
        for future in futures:
            future.cancel()
        raise
    return out
