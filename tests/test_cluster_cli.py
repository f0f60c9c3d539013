"""``zen-async cluster up|down`` run as a user would (a subprocess): ``down`` signals only the
servers its ``up`` started, never whatever process a stale pid file names; a stale pid file
(a crash) does not block ``up``, a live group does; ``--flavor redis`` runs the redis-server
found on PATH."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zen_async.testing import ServerProcess
from zen_async.testing.detached import find_pid_files, is_server_in
from zen_async.testing.servers import REDIS_SERVER


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "zen_async.cli", "cluster", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is none of ours (``sleep 60``), killed at the end."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def plant(root: Path, group: str, pids: dict[str, int | str]) -> list[Path]:
    """Write ``server.pid`` files as a crashed group would have left them."""
    paths = []
    for process, pid in pids.items():
        path = root / group / process / "server.pid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{pid}\n")
        paths.append(path)
    return paths


def our_pids(root: Path) -> list[int]:
    return [f.pid for f in find_pid_files(root) if f.ours and f.pid is not None]


def wait_until_gone(root: Path, *, deadline: float = 10.0) -> None:
    """Poll until no server of the group under ``root`` is alive (SIGKILL is not instant)."""
    until = time.monotonic() + deadline
    while our_pids(root):
        if time.monotonic() > until:
            raise TimeoutError(f"killed servers still alive after {deadline}s: {our_pids(root)}")
        time.sleep(0.02)


def test_down_never_signals_the_process_a_stale_pid_file_names(
    tmp_path: Path, unrelated: subprocess.Popen[bytes]
) -> None:
    root = tmp_path / "local"
    # A real redis-server, but not one of this group: it runs in another directory.
    elsewhere = ServerProcess("redis", dir=tmp_path / "elsewhere")
    elsewhere.start()
    try:
        planted = plant(
            root,
            "redis-sentinel",
            {
                "server-0": dead_pid(),
                "server-1": unrelated.pid,
                "server-2": elsewhere.pid or 0,
                "sentinel-0": "garbage",
            },
        )
        down = run_cli("down", "--dir", str(root))
        assert down.returncode == 0, down.stderr
        assert f"stopped 0 processes under {root}" in down.stdout
        assert "removed 4 stale pid files" in down.stdout
        assert unrelated.poll() is None, "cluster down signalled a process it did not start"
        assert elsewhere.is_running, "cluster down signalled another directory's server"
        assert elsewhere.cli("PING") == "PONG"
        assert not any(path.exists() for path in planted), "stale pid files are cleared"
    finally:
        elsewhere.stop()


@pytest.mark.slow
def test_up_past_stale_pid_files_then_down_with_redis_on_path(
    tmp_path: Path, unrelated: subprocess.Popen[bytes]
) -> None:
    root = tmp_path / "local"
    group = root / "redis-sentinel"
    plant(root, "redis-sentinel", {"server-0": dead_pid(), "sentinel-1": unrelated.pid})
    # --flavor redis takes redis-server from PATH: put a differently named path to it first.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "redis-server").symlink_to(REDIS_SERVER)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}

    up = run_cli("up", "--kind", "sentinel", "--flavor", "redis", "--dir", str(root), env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "export REDIS_SENTINEL_NODES=127.0.0.1:" in up.stdout
        pids = our_pids(root)
        assert len(pids) == 6, find_pid_files(root)
        for pid in pids:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            assert argv0.startswith(f"{bindir}/redis-server "), argv0
        assert unrelated.poll() is None

        again = run_cli("up", "--kind", "sentinel", "--dir", str(root), env=env)
        assert again.returncode == 2, "a live group blocks a second up"
        assert "holds a running group" in again.stderr
    finally:
        down = run_cli("down", "--dir", str(root))
    assert down.returncode == 0, down.stderr
    assert f"stopped 6 processes under {root}" in down.stdout
    assert unrelated.poll() is None, "cluster down signalled a process it did not start"
    assert not any(is_server_in(pid, group) for pid in pids)
    assert our_pids(root) == []


@pytest.mark.slow
def test_up_after_a_crashed_cluster_starts_a_fresh_one(tmp_path: Path) -> None:
    """A group killed with SIGKILL leaves its pid files and each node's nodes.conf behind:
    the next ``up`` must neither refuse (stale pids) nor fail ``--cluster create`` (nodes
    that remember the old cluster)."""
    root = tmp_path / "local"
    first = run_cli("up", "--kind", "cluster", "--flavor", "redis", "--dir", str(root))
    assert first.returncode == 0, first.stderr
    crashed = our_pids(root)
    assert len(crashed) == 6
    try:
        for pid in crashed:
            os.kill(pid, signal.SIGKILL)
        wait_until_gone(root)
    finally:
        second = run_cli("up", "--kind", "cluster", "--flavor", "redis", "--dir", str(root))
        down = run_cli("down", "--dir", str(root))
    assert second.returncode == 0, second.stderr
    assert "export REDIS_CLUSTER_NODES=127.0.0.1:" in second.stdout
    assert f"stopped 6 processes under {root}" in down.stdout
    assert our_pids(root) == []
