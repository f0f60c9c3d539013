"""The server groups that ``zen-async cluster up`` leaves running (detached): find them again,
stop them, and clear what a crashed one left behind.

Layout under the CLI's ``--dir`` root: ``<root>/<flavor>-<kind>/<process>/server.pid``, one
directory per server or sentinel, each process running with that directory as its working
directory (``--dir``).

A pid file alone proves nothing: a server that crashed or was killed leaves its
``server.pid`` behind (a clean shutdown removes it), and the pid may since belong to any
other process. A pid counts as one of ours only when the process is alive (not a zombie),
its command line names a server binary (``redis-server``, ``valkey-server`` or a
``*-sentinel``; sentinels run the server binary with ``--sentinel``), and its working
directory is the directory that holds the pid file. This reads ``/proc``: on a system
without it nothing is recognised, so nothing is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "PidFile",
    "StopReport",
    "clear_leftovers",
    "find_pid_files",
    "is_server_in",
    "stop_detached",
]

PID_FILE: Final = "server.pid"
SERVER_NAMES: Final = frozenset(
    {"redis-server", "valkey-server", "redis-sentinel", "valkey-sentinel"}
)
LEFTOVER_FILES: Final = ("nodes.conf", "dump.rdb")
"""State a server reloads at start: a cluster node would rejoin its old cluster (and refuse
``--cluster create``), a server would load old data."""

_STOP_GRACE: Final = 5.0
_POLL_INTERVAL: Final = 0.05


@dataclass(frozen=True)
class PidFile:
    """One ``server.pid`` under the root.

    Attributes:
        path: The pid file.
        pid: The pid it holds, or None when it holds no number.
        ours: Whether that pid is a live server or sentinel running in the pid file's
            directory (see the module docstring); False for a stale file.
    """

    path: Path
    pid: int | None
    ours: bool


@dataclass(frozen=True)
class StopReport:
    """What :func:`stop_detached` did.

    Attributes:
        stopped: Pids of our servers that were stopped (SIGTERM, or SIGKILL after the
            grace period).
        killed: Of those, the pids that needed SIGKILL.
        stale: Pid files that named no server of ours; removed, their pid left alone.
    """

    stopped: tuple[int, ...]
    killed: tuple[int, ...]
    stale: tuple[Path, ...]


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() and int(text) > 0 else None


def is_server_in(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live redis/valkey server or sentinel whose working directory is
    ``directory``. False for a dead pid, a zombie, another program, or a process that
    ``/proc`` does not let this user inspect."""
    proc = Path("/proc") / str(pid)
    try:
        # The server rewrites its title ("/usr/bin/redis-server 127.0.0.1:PORT [sentinel]");
        # a zombie's command line is empty.
        argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        cwd = Path(os.readlink(proc / "cwd"))
    except OSError:
        return False
    program = argv0.split(" ", 1)[0]
    if os.path.basename(program) not in SERVER_NAMES:
        return False
    try:
        return cwd == directory.resolve()
    except OSError:
        return False


def find_pid_files(root: Path) -> list[PidFile]:
    """Every ``<root>/*/*/server.pid``, with whether its pid is one of our servers."""
    found = []
    for path in sorted(Path(root).glob(f"*/*/{PID_FILE}")):
        pid = _read_pid(path)
        found.append(PidFile(path, pid, pid is not None and is_server_in(pid, path.parent)))
    return found


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def stop_detached(root: Path, *, grace: float = _STOP_GRACE) -> StopReport:
    """Stop the servers a ``cluster up`` left under ``root``: SIGTERM to each verified
    process, SIGKILL to those still running after ``grace`` seconds; stale pid files are
    removed and their pids never signalled.

    Returns:
        Which pids were stopped and killed, and which pid files were stale.
    """
    files = find_pid_files(root)
    ours = {f.pid: f.path.parent for f in files if f.ours and f.pid is not None}
    for pid in ours:
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)  # a paused process only acts on SIGTERM once it runs
    deadline = time.monotonic() + grace
    running = dict(ours)
    while running and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL)
        running = {pid: d for pid, d in running.items() if is_server_in(pid, d)}
    killed = []
    for pid, directory in running.items():
        if is_server_in(pid, directory):  # checked again: the pid may be free by now
            _signal(pid, signal.SIGKILL)
            killed.append(pid)
    stale = []
    for entry in files:
        if not entry.ours or entry.pid in killed:  # SIGKILL leaves the pid file behind
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            if not entry.ours:
                stale.append(entry.path)
    return StopReport(tuple(ours), tuple(killed), tuple(stale))


def clear_leftovers(root: Path, group_dir: Path) -> list[Path]:
    """Before a ``cluster up`` into ``group_dir`` (a directory under ``root``): remove the
    stale pid files under ``root`` and the state files a crashed or stopped group left in
    the process directories of ``group_dir`` (``nodes.conf``, ``dump.rdb``), so the new
    group starts empty.

    Returns:
        The files removed.

    Raises:
        RuntimeError: A live server of ours still runs under ``root`` (nothing removed).
    """
    files = find_pid_files(root)
    live = [f for f in files if f.ours]
    if live:
        pids = ", ".join(str(f.pid) for f in live)
        raise RuntimeError(f"{root} holds a running group (pids {pids})")
    removed = []
    for entry in files:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
            removed.append(entry.path)
    for directory in sorted(p for p in Path(group_dir).glob("*") if p.is_dir()):
        for name in LEFTOVER_FILES:
            path = directory / name
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed
