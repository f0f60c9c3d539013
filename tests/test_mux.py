"""The multiplexed transport (``REDIS_TRANSPORT=multiplexed``, zen_async/store/mux.py): one
test per promise of docs/architecture.md ("How a command travels") and of the module's own
docstring, each against real servers, each able to fail were the promise false.

1. Every command queued in one event-loop iteration leaves in one socket write (counted on
   the connection's StreamWriter), and every caller gets its own reply.
2. Back-pressure: never more than REDIS_MUX_MAX_IN_FLIGHT commands queued or unanswered on a
   connection; the callers beyond it wait and are served.
3. A caller cancelled before the flush is not sent at all; one cancelled after its command was
   written has its reply read and dropped, and the callers behind it get their own.
4. A connection lost with 300 commands in flight counts as one breaker failure.
5. A frozen server fails every command in flight with a timeout (nothing hangs); after SIGCONT
   the same instance serves again.
6. REDIS_DURABILITY=replicated: group commit (one WAIT per written batch, not per write), reads
   never carry a WAIT nor queue behind one.
7. Bad arguments raise to their caller (a ValidationError) and disturb nobody else.
8. REDIS_TRANSPORT=pool still works.
9. Cluster: 1,000 concurrent commands over many slots, all correct, one write per master.

A durable write cancelled before the flush is not sent either, nor the ASKING in front of a
cancelled command (which would otherwise flag the next caller's command on that connection).

The tests use the core alone (``open_redis_manager``, the ``zen.redis`` of ``open_zen``) with
the health check's interval pushed out, so no background task puts a command of its own into a
counted write or a breaker count; the pool smoke test opens a whole zen.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import pytest
import redis

from zen_async import BackendError, DegradedError, ValidationError, open_zen
from zen_async.store.manager import RedisManager, open_redis_manager
from zen_async.store.mux import ClusterMux, NodeMux, _Pipe
from zen_async.testing import ServerProcess, Standalone
from zen_async.testing.deployments import Deployments, Target, masters, settings_for
from zen_async.testing.marks import UNCLOSED_BY_A_FAULT
from zen_async.testing.waiting import until_ok

pytestmark = [
    pytest.mark.timeout(60),
    *UNCLOSED_BY_A_FAULT,
]

T = TypeVar("T")

QUIET: dict[str, Any] = {"redis_health_check_interval": 3600.0}
"""No health check after the first one: nothing but the test's own commands on the wire."""

WAIT_FRAME = b"$4\r\nWAIT\r\n"
GET_FRAME = b"$3\r\nGET\r\n"
SET_FRAME = b"$3\r\nSET\r\n"


# --- helpers ----------------------------------------------------------------------------------
@asynccontextmanager
async def core_for(settings: Any) -> AsyncIterator[RedisManager]:
    async with open_redis_manager(settings) as core:
        yield core


def node_mux(core: RedisManager, keyspace: str = "state") -> NodeMux:
    route = core._backend.routes[keyspace]
    assert isinstance(route, NodeMux), f"not the multiplexed path on one server: {route!r}"
    return route


def only_pipe(mux: NodeMux) -> _Pipe:
    """The one plain connection (REDIS_MUX_CONNECTIONS=1), opened."""
    assert len(mux._pipes) == 1, f"{len(mux._pipes)} connections, expected 1"
    pipe = mux._pipes[0]
    assert pipe._writer is not None, "the connection is not open"
    return pipe


class WriteSpy:
    """Counts the socket writes of one multiplexed connection, with what each carried and the
    connection's load (commands queued or unanswered) at that moment."""

    def __init__(self, pipe: _Pipe) -> None:
        writer = pipe._writer
        assert writer is not None, "the connection is not open"
        self.pipe = pipe
        self.data: list[bytes] = []
        self.loads: list[int] = []
        original = writer.write

        def write(data: Any) -> None:
            self.data.append(bytes(data))
            self.loads.append(pipe.load)
            original(data)

        writer.write = write  # type: ignore[method-assign]

    @property
    def calls(self) -> int:
        return len(self.data)

    @property
    def sent_bytes(self) -> int:
        return sum(len(d) for d in self.data)

    def count(self, frame: bytes) -> int:
        return sum(d.count(frame) for d in self.data)


def assert_own_replies(replies: Sequence[Any], expected: Sequence[Any]) -> None:
    wrong = {i: (r, e) for i, (r, e) in enumerate(zip(replies, expected, strict=True)) if r != e}
    assert wrong == {}, f"callers got replies that are not theirs: {list(wrong.items())[:10]}"


def command_calls(server: ServerProcess, command: str) -> int:
    """How many times ``server`` ran ``command`` (INFO commandstats)."""
    found = re.search(rf"cmdstat_{command}:calls=(\d+)", server.cli("INFO", "commandstats"))
    return int(found.group(1)) if found else 0


async def until_written(pipe: _Pipe, n: int) -> None:
    """Let the loop run until ``n`` commands are written and unanswered on ``pipe`` (the flush
    runs in the iteration after they were queued: a few iterations at most)."""
    for _ in range(1000):
        if len(pipe._waiting) >= n and not pipe._outbox:
            return
        await asyncio.sleep(0)
    pytest.fail(f"{len(pipe._waiting)} commands written, expected {n}")


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[Standalone]:
    """A standalone server of the test's own: it may be frozen or killed."""
    group = Standalone("redis", base_dir=tmp_path)
    await anyio.to_thread.run_sync(group.start)
    try:
        yield group
    finally:
        await anyio.to_thread.run_sync(group.stop)  # also stops a frozen one


# --- 1. one write per loop iteration ----------------------------------------------------------
async def test_every_command_of_one_iteration_leaves_in_one_write(standalone: Target) -> None:
    async with core_for(standalone.settings(redis_mux_connections=1, **QUIET)) as core:
        ks = core.keyspace("state")
        mux = node_mux(core)
        n = 500
        keys = [ks.key("one-write", i) for i in range(n)]
        await ks.set_many({keys[i]: f"before-{i}" for i in range(0, n, 2)})
        pipe = only_pipe(mux)
        commands: list[tuple[str, ...]] = [
            ("GET", keys[i]) if i % 2 == 0 else ("SET", keys[i], f"after-{i}") for i in range(n)
        ]
        expected = [f"before-{i}".encode() if i % 2 == 0 else True for i in range(n)]
        packed = sum(len(b"".join(mux.pack(*command))) for command in commands)
        sent = pipe._sent_count
        spy = WriteSpy(pipe)

        replies = await asyncio.gather(*(ks.execute(*command) for command in commands))

        assert spy.calls == 1, f"{n} commands of one iteration left in {spy.calls} writes"
        assert spy.sent_bytes == packed, (
            "the write did not carry exactly the commands of the callers"
        )
        assert pipe._sent_count - sent == n
        assert_own_replies(replies, expected)
        stored = await ks.mget([keys[i] for i in range(1, n, 2)])
        assert stored == [f"after-{i}".encode() for i in range(1, n, 2)]


# --- 2. back-pressure -------------------------------------------------------------------------
async def test_no_more_than_max_in_flight_commands_per_connection(standalone: Target) -> None:
    bound = 8
    settings = standalone.settings(redis_mux_connections=1, redis_mux_max_in_flight=bound, **QUIET)
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        n = 500
        keys = [ks.key("bound", i) for i in range(n)]
        await ks.set_many({key: f"v{i}" for i, key in enumerate(keys)})
        # Half read their key, half INCR a counter that starts at their own base.
        counters = [ks.key("bound-counter", i) for i in range(n)]
        await ks.set_many({counters[i]: i * 1000 for i in range(1, n, 2)})
        pipe = only_pipe(node_mux(core))
        spy = WriteSpy(pipe)

        calls = [
            ks.get(keys[i]) if i % 2 == 0 else ks.execute("INCR", counters[i]) for i in range(n)
        ]
        replies = await asyncio.gather(*calls)

        expected = [f"v{i}".encode() if i % 2 == 0 else i * 1000 + 1 for i in range(n)]
        assert_own_replies(replies, expected)
        assert max(spy.loads) <= bound, (
            f"{max(spy.loads)} commands queued or unanswered on one connection, bound {bound}"
        )
        # The callers beyond the bound waited for room: the 500 left in many writes.
        assert spy.calls >= n // bound, f"{n} commands in {spy.calls} writes"
        assert pipe.load == 0
        assert not mux_waiters(core)


def mux_waiters(core: RedisManager) -> list[Any]:
    return [w for w in node_mux(core)._room_waiters if not w.done()]


# --- 3. cancellations -------------------------------------------------------------------------
async def test_a_caller_cancelled_before_the_flush_is_not_sent(standalone: Target) -> None:
    async with core_for(standalone.settings(redis_mux_connections=1, **QUIET)) as core:
        ks = core.keyspace("state")
        key = ks.key("cancelled-before-flush")
        assert await ks.get(key) is None  # the connection is open
        pipe = only_pipe(node_mux(core))
        sets = command_calls(standalone.server, "set")
        sent = pipe._sent_count

        task = asyncio.create_task(ks.set(key, b"v"))
        await asyncio.sleep(0)  # the task queues its SET and schedules the flush; we run first
        assert len(pipe._outbox) == 1, "the SET was not queued (or already written)"
        assert pipe._flush_scheduled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)

        assert await ks.get(key) is None, "the cancelled SET was applied"
        assert pipe._sent_count == sent + 1, "something besides the GET was written"
        assert command_calls(standalone.server, "set") == sets, "the server ran the SET"
        assert pipe.load == 0


async def test_a_caller_cancelled_after_its_command_was_written_leaves_the_replies_in_order(
    own_server: Standalone,
) -> None:
    """The server is frozen while the commands are on the wire, so the cancels land after the
    write and before any reply, whatever the machine's speed."""
    server = own_server.server
    settings = settings_for(
        own_server,
        redis_mux_connections=1,
        redis_socket_timeout=30.0,
        redis_retry_attempts=0,
        **QUIET,
    )
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        n = 300
        keys = [ks.key("written", i) for i in range(n)]
        await ks.set_many({keys[i]: f"own-{i}" for i in range(0, n, 2)})
        await ks.set_many({keys[i]: i * 1000 for i in range(1, n, 2)})
        pipe = only_pipe(node_mux(core))

        def call(i: int) -> Coroutine[Any, Any, Any]:
            return ks.get(keys[i]) if i % 2 == 0 else ks.execute("INCR", keys[i])

        def expected(i: int) -> Any:
            return f"own-{i}".encode() if i % 2 == 0 else i * 1000 + 1

        server.pause()
        try:
            # A script whose reply would stand out if it reached another caller.
            script = asyncio.create_task(ks.execute("EVAL", "return 'the-script-reply'", 0))
            tasks = [asyncio.create_task(call(i)) for i in range(n)]
            await until_written(pipe, n + 1)
            assert not script.done()
            assert not any(t.done() for t in tasks)
            script.cancel()
            cancelled = set(range(0, n, 3))
            for i in cancelled:
                tasks[i].cancel()
        finally:
            server.resume()
        async with asyncio.timeout(30):
            await asyncio.wait([script, *tasks])

        assert script.cancelled()
        wrong: dict[int, Any] = {}
        for i, task in enumerate(tasks):
            if i in cancelled:
                assert task.cancelled(), f"caller {i} was not cancelled: {task}"
            elif task.cancelled() or task.exception() or task.result() != expected(i):
                wrong[i] = task
        assert wrong == {}, f"callers behind the cancelled ones: {list(wrong.items())[:10]}"
        assert pipe._read_count == pipe._sent_count, "a reply was not read"
        assert pipe.load == 0

        # The stream has not slipped: 300 more callers, each its own reply.
        replies = await asyncio.gather(*(ks.get(keys[i]) for i in range(0, n, 2)))
        assert replies == [f"own-{i}".encode() for i in range(0, n, 2)]


# --- 4. a lost connection is one breaker failure ----------------------------------------------
async def test_a_connection_lost_with_300_in_flight_counts_one_breaker_failure(
    own_server: Standalone,
) -> None:
    server = own_server.server
    settings = settings_for(
        own_server,
        redis_mux_connections=1,
        redis_socket_timeout=30.0,  # the loss, not the frozen-server timeout, fails them
        redis_retry_attempts=0,
        redis_breaker_failure_threshold=100,
        **QUIET,
    )
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        n = 300
        keys = [ks.key("lost", i) for i in range(n)]
        await ks.set_many({key: i for i, key in enumerate(keys)})
        await ks.run_script("cache_read", [keys[0]])  # loaded: no NOSCRIPT in flight
        pipe = only_pipe(node_mux(core))
        assert core.breaker.statistics().total_failures == 0

        def call(i: int) -> Coroutine[Any, Any, Any]:
            kind = i % 4
            if kind == 0:
                return ks.get(keys[i])
            if kind == 1:
                return ks.set(keys[i], "x")
            if kind == 2:
                return ks.execute("INCR", keys[i])
            return ks.run_script("cache_read", [keys[i]])

        server.pause()  # the commands are written, none answered...
        tasks = [asyncio.create_task(call(i)) for i in range(n)]
        await until_written(pipe, n)
        await anyio.to_thread.run_sync(server.kill)  # ...then the server dies under them
        async with asyncio.timeout(30):
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        others = {i: o for i, o in enumerate(outcomes) if not isinstance(o, BackendError)}
        assert others == {}, f"not a BackendError: {list(others.items())[:5]}"
        degraded = [o for o in outcomes if isinstance(o, DegradedError)]
        assert degraded == [], "the breaker opened: it counted the loss more than once"
        causes = {id(o.__cause__) for o in outcomes if isinstance(o, BaseException)}
        assert len(causes) == 1, f"{len(causes)} distinct failures for one lost connection"
        stats = core.breaker.statistics()
        assert (stats.consecutive_failures, stats.total_failures) == (1, 1), stats

        # The next command reconnects (same port, restarted).
        await anyio.to_thread.run_sync(server.start)
        await until_ok(lambda: ks.get(keys[0]), deadline=20.0, what="after the restart")
        assert core.breaker.statistics().consecutive_failures == 0


async def test_after_a_reconnect_the_watchdog_times_only_the_new_commands(
    own_server: Standalone,
) -> None:
    """Commands lost with a connection are never answered: the timeout watch must not wait
    for their replies on the next connection (it would time out a healthy one)."""
    server = own_server.server
    settings = settings_for(
        own_server,
        redis_mux_connections=1,
        redis_socket_timeout=0.5,
        redis_retry_attempts=0,
        redis_breaker_failure_threshold=100,
        **QUIET,
    )
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        key = ks.key("watchdog")
        await ks.set(key, b"v")
        pipe = only_pipe(node_mux(core))
        server.pause()
        tasks = [asyncio.create_task(ks.get(key)) for _ in range(50)]
        await until_written(pipe, 50)
        await anyio.to_thread.run_sync(server.kill)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, BackendError) for o in outcomes)
        await anyio.to_thread.run_sync(server.start)
        await until_ok(lambda: ks.set(key, b"v"), deadline=20.0, what="after the restart")
        writer, failures = pipe._writer, core.breaker.statistics().total_failures
        assert writer is not None
        await asyncio.sleep(settings.redis_socket_timeout * 3)  # the watch has looked again
        assert await ks.get(key) == b"v"
        assert pipe._writer is writer, "the healthy connection was dropped as timed out"
        assert core.breaker.statistics().total_failures == failures


# --- 5. a frozen server -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "bound",
    [
        pytest.param(10_000, id="all-written"),
        # 8 written, 192 waiting for room: they must not wait forever on a dead connection
        # (they are woken, reconnect, time out connecting, then fail in the backoff).
        pytest.param(8, id="waiting-for-room"),
    ],
)
async def test_a_frozen_server_times_out_every_command_in_flight_then_serves_again(
    own_server: Standalone, bound: int
) -> None:
    server = own_server.server
    settings = settings_for(
        own_server,
        redis_mux_connections=1,
        redis_mux_max_in_flight=bound,
        redis_socket_timeout=0.5,
        redis_connect_timeout=0.5,
        redis_retry_attempts=0,
        redis_breaker_failure_threshold=100,
        **QUIET,
    )
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        n = 200
        keys = [ks.key("frozen", i) for i in range(n)]
        await ks.set_many({key: f"v{i}" for i, key in enumerate(keys)})
        only_pipe(node_mux(core))

        server.pause()
        try:
            async with asyncio.timeout(30):  # a hang fails here
                outcomes = await asyncio.gather(
                    *(ks.get(key) for key in keys), return_exceptions=True
                )
        finally:
            server.resume()

        others = {i: o for i, o in enumerate(outcomes) if not isinstance(o, BackendError)}
        assert others == {}, f"not a BackendError: {list(others.items())[:5]}"
        untimed = [o for o in outcomes if "timeout" not in str(o).lower()]
        assert untimed == [], f"errors that do not say timeout: {untimed[:3]}"
        if bound > n:  # one connection timed out with all of them: one breaker failure
            assert core.breaker.statistics().consecutive_failures == 1, core.breaker.statistics()

        await until_ok(lambda: ks.get(keys[0]), deadline=20.0, what="after SIGCONT")
        replies = await asyncio.gather(*(ks.get(key) for key in keys))
        assert replies == [f"v{i}".encode() for i in range(n)]


# --- 6. group commit (REDIS_DURABILITY=replicated) --------------------------------------------
@pytest.fixture(scope="module")
def with_replica(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Standalone, Standalone]]:
    """A master and one replica of it (standalone servers)."""
    base = tmp_path_factory.mktemp("replicated")
    master = Standalone("redis", base_dir=base / "master")
    master.start()
    replica = Standalone(
        "redis",
        base_dir=base / "replica",
        extra_args=["--replicaof", master.server.host, str(master.server.port)],
    )
    try:
        replica.start()
        deadline = time.monotonic() + 20
        while not (
            "master_link_status:up" in replica.server.cli("INFO", "replication")
            and "connected_slaves:1" in master.server.cli("INFO", "replication")
        ):
            assert time.monotonic() < deadline, "the replica never linked to its master"
            time.sleep(0.05)
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def replicated(master: Standalone, **overrides: Any) -> Any:
    values: dict[str, Any] = {"redis_durability": "replicated", **QUIET}
    values.update(overrides)
    return settings_for(master, **values)


async def test_replicated_writes_share_a_wait_per_batch_and_reads_carry_none(
    with_replica: tuple[Standalone, Standalone],
) -> None:
    master, replica = with_replica
    settings = replicated(master, redis_durability_timeout_ms=1000, redis_mux_connections=2)
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        mux = node_mux(core)
        n_writes, n_reads = 200, 100
        write_keys = [ks.key("gc", "w", i) for i in range(n_writes)]
        read_keys = [ks.key("gc", "r", i) for i in range(n_reads)]
        await ks.set_many({key: f"r{i}" for i, key in enumerate(read_keys)})
        # Open both connections of each kind.
        await asyncio.gather(*(ks.set(write_keys[i], "warm") for i in range(4)))
        await asyncio.gather(*(ks.get(read_keys[i]) for i in range(4)))
        assert (len(mux._durable), len(mux._pipes)) == (2, 2)
        durable = [WriteSpy(pipe) for pipe in mux._durable]
        plain = [WriteSpy(pipe) for pipe in mux._pipes]
        before = command_calls(master.server, "wait")

        writes = [ks.set(key, f"w{i}") for i, key in enumerate(write_keys)]
        reads = [ks.get(key) for key in read_keys]
        outcomes = await asyncio.gather(*writes, *reads, return_exceptions=True)

        failed = {i: o for i, o in enumerate(outcomes[:n_writes]) if o is not None}
        assert failed == {}, f"replicated writes failed: {list(failed.items())[:5]}"
        assert list(outcomes[n_writes:]) == [f"r{i}".encode() for i in range(n_reads)]
        waits = command_calls(master.server, "wait") - before
        assert 1 <= waits < n_writes / 4, f"{waits} WAITs for {n_writes} concurrent writes"
        # Every WAIT the master ran was sent behind a batch of writes, none with the reads.
        assert sum(spy.count(WAIT_FRAME) for spy in durable) == waits
        assert sum(spy.count(WAIT_FRAME) for spy in plain) == 0, "a read connection sent WAIT"
        assert sum(spy.count(GET_FRAME) for spy in plain) == n_reads
        assert sum(spy.count(GET_FRAME) for spy in durable) == 0, "a read went behind a WAIT"
        assert sum(spy.count(SET_FRAME) for spy in durable) == n_writes

        # WAIT answered: the replica already holds every acknowledged write.
        direct = redis.Redis(
            host=replica.server.host, port=replica.server.port, db=core._backend.dbs["state"]
        )
        try:
            on_replica = await anyio.to_thread.run_sync(lambda: direct.mget(write_keys))
        finally:
            direct.close()
        assert on_replica == [f"w{i}".encode() for i in range(n_writes)]


async def test_replicated_reads_never_queue_behind_a_wait(
    with_replica: tuple[Standalone, Standalone],
) -> None:
    """With the replica frozen, writes sit in their WAIT (until the replica is back); reads
    issued at the same time are answered meanwhile."""
    master, replica = with_replica
    settings = replicated(
        master,
        redis_durability_timeout_ms=10_000,
        redis_socket_timeout=15.0,
        redis_mux_connections=1,
    )
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        mux = node_mux(core)
        read_keys = [ks.key("behind", "r", i) for i in range(100)]
        write_keys = [ks.key("behind", "w", i) for i in range(50)]
        await ks.set_many({key: f"r{i}" for i, key in enumerate(read_keys)})
        await ks.get(read_keys[0])
        assert len(mux._durable) == 1

        replica.server.pause()
        try:
            writes = [asyncio.create_task(ks.set(key, "w")) for key in write_keys]
            await until_written(mux._durable[0], len(writes) + 1)  # the writes and their WAIT
            async with asyncio.timeout(8):  # well within the WAIT's 10 s
                replies = await asyncio.gather(*(ks.get(key) for key in read_keys))
            assert replies == [f"r{i}".encode() for i in range(100)]
            assert not any(w.done() for w in writes), "a write returned before its WAIT"
        finally:
            replica.server.resume()
        async with asyncio.timeout(15):
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
        assert outcomes == [None] * len(writes), outcomes[:5]


async def test_a_durable_write_cancelled_before_the_flush_is_not_sent(
    with_replica: tuple[Standalone, Standalone],
) -> None:
    master, _ = with_replica
    async with core_for(replicated(master, redis_mux_connections=1)) as core:
        ks = core.keyspace("state")
        key = ks.key("durable-cancelled-before-flush")
        await ks.set(ks.key("durable-warm"), "x")  # the durable connection is open
        pipe = node_mux(core)._durable[0]
        sets = command_calls(master.server, "set")

        task = asyncio.create_task(ks.set(key, b"v"))
        await asyncio.sleep(0)  # queued, flush scheduled; we run first
        assert len(pipe._outbox) == 1, "the SET was not queued (or already written)"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)

        assert await ks.get(key) is None, "the cancelled durable SET was applied"
        assert command_calls(master.server, "set") == sets, "the server ran the SET"


async def test_replicated_writes_wait_for_room_too(
    with_replica: tuple[Standalone, Standalone],
) -> None:
    """Back-pressure on the connections of durable writes: each write to the socket carries
    at most REDIS_MUX_MAX_IN_FLIGHT of the callers' writes (the WAIT behind them is the
    transport's own, and rides over the bound by one), and every caller is served."""
    master, _ = with_replica
    bound = 4
    settings = replicated(master, redis_mux_connections=1, redis_mux_max_in_flight=bound)
    async with core_for(settings) as core:
        ks = core.keyspace("state")
        mux = node_mux(core)
        await ks.set(ks.key("room-warm"), "x")
        spy = WriteSpy(mux._durable[0])
        keys = [ks.key("room", i) for i in range(40)]

        outcomes = await asyncio.gather(
            *(ks.set(key, f"v{i}") for i, key in enumerate(keys)), return_exceptions=True
        )

        assert outcomes == [None] * len(keys), outcomes[:5]
        per_write = [d.count(SET_FRAME) for d in spy.data]
        assert max(per_write) <= bound, f"writes per socket write: {per_write}"
        assert sum(per_write) == len(keys)
        assert max(spy.loads) <= bound + 1, f"load at each write: {spy.loads}"
        assert await ks.mget(keys) == [f"v{i}".encode() for i in range(len(keys))]


# --- 7. bad arguments -------------------------------------------------------------------------
async def test_bad_arguments_raise_to_their_caller_alone(standalone: Target) -> None:
    async with core_for(standalone.settings(redis_mux_connections=1, **QUIET)) as core:
        ks = core.keyspace("cache")
        bad: Any = {"a": 1}
        if not node_mux(core, "cache")._pipes:  # its own DB: the first command is the bad one
            with pytest.raises(ValidationError):
                await ks.execute("SET", ks.key("bad-args", "first"), bad)
        keys = [ks.key("bad-args", i) for i in range(100)]
        await ks.set_many({key: f"v{i}" for i, key in enumerate(keys)})

        outcomes = await asyncio.gather(
            ks.execute("SET", ks.key("bad-args", "target"), bad),
            *(ks.get(key) for key in keys),
            ks.batch([("SET", ks.key("bad-args", "batched"), bad), ("GET", keys[0])]),
            *(ks.get(key) for key in keys),
            return_exceptions=True,
        )

        for bad_one in (outcomes[0], outcomes[101]):
            assert isinstance(bad_one, ValidationError), repr(bad_one)
            assert "invalid command argument" in str(bad_one)
        good = [*outcomes[1:101], *outcomes[102:]]
        assert good == [f"v{i}".encode() for i in range(100)] * 2
        assert await ks.get(ks.key("bad-args", "target")) is None
        assert core.breaker.statistics().total_failures == 0, "an argument error is no outage"
        assert node_mux(core, "cache").usage()["in_flight"] == 0


# --- 8. the pool transport --------------------------------------------------------------------
async def test_the_pool_transport_still_serves(standalone: Target) -> None:
    async with open_zen(standalone.settings(redis_transport="pool")) as zen:
        assert zen.redis._backend.routes == {}, "pool transport built a multiplexed path"
        ks = zen.redis.keyspace("state")
        key = ks.key("pool", "one")
        await ks.set(key, b"value")
        assert await ks.get(key) == b"value"
        written = await ks.run_script("kv_set_many", [key], [60_000, "scripted"])
        assert written == 1
        got = await ks.run_script("cache_read", [key])
        assert got[0] == b"scripted"
        assert 0 < int(got[1]) <= 60_000
        assert await ks.batch([("SET", key, "b"), ("GET", key)]) == [True, b"b"]
        keys = [ks.key("pool", i) for i in range(200)]
        await asyncio.gather(*(ks.set(k, f"v{i}") for i, k in enumerate(keys)))
        assert await asyncio.gather(*(ks.get(k) for k in keys)) == [
            f"v{i}".encode() for i in range(200)
        ]


# --- 9. Cluster ---------------------------------------------------------------------------------
async def test_cluster_commands_over_many_slots_each_get_their_reply(
    deployments: Deployments,
) -> None:
    target = Target("redis", "cluster", deployments.get("redis", "cluster"))
    target.flush()
    async with core_for(target.settings(redis_mux_connections=1, **QUIET)) as core:
        ks = core.keyspace("state")
        route = core._backend.routes["state"]
        assert isinstance(route, ClusterMux)
        n = 1000
        keys = [ks.key("spread", i) for i in range(n)]
        assert len({ks.slot(k) for k in keys}) > 500, "the keys do not spread over slots"
        await ks.set_many({keys[i]: f"before-{i}" for i in range(0, n, 2)})
        await asyncio.gather(*(ks.get(key) for key in keys))  # a connection to every master
        names = {f"{server.host}:{server.port}" for server in masters(target.group)}
        assert set(route._nodes) == names
        spies = {name: WriteSpy(only_pipe(mux)) for name, mux in route._nodes.items()}

        commands: list[tuple[str, ...]] = [
            ("GET", keys[i]) if i % 2 == 0 else ("SET", keys[i], f"after-{i}") for i in range(n)
        ]
        replies = await asyncio.gather(*(ks.execute(*command) for command in commands))

        expected = [f"before-{i}".encode() if i % 2 == 0 else True for i in range(n)]
        assert_own_replies(replies, expected)
        writes = {name: spy.calls for name, spy in spies.items()}
        assert writes == dict.fromkeys(names, 1), f"writes per master: {writes}"
        usage = core._backend.mux_usage()
        assert {name: usage[name]["connections"] for name in names} == dict.fromkeys(names, 1)
        stored = await ks.mget([keys[i] for i in range(1, n, 2)])
        assert stored == [f"after-{i}".encode() for i in range(1, n, 2)]


async def test_an_ask_redirect_cancelled_before_the_flush_sends_nothing(
    deployments: Deployments,
) -> None:
    target = Target("redis", "cluster", deployments.get("redis", "cluster"))
    target.flush()
    async with core_for(target.settings(redis_mux_connections=1, **QUIET)) as core:
        ks = core.keyspace("state")
        key = ks.key("asked")
        await ks.get(key)
        route = core._backend.routes["state"]
        assert isinstance(route, ClusterMux)
        mux = await route._owner(ks.slot(key))
        spy = WriteSpy(only_pipe(mux))

        # As ClusterMux.call does after an ASK reply: ASKING and the command, adjacent.
        task = asyncio.create_task(mux.call_asking(("SET", key, "v"), None, durable=False))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await ks.get(key) is None

        written = b"".join(spy.data)
        assert b"ASKING" not in written, f"written: {written!r}"
