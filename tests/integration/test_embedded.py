"""The embedded server: started when nothing is configured, data directory with AOF, data
kept across runs, shared by its users and stopped when the last one leaves; a stale state
file never blocks it nor gets a stranger signalled; and never a silent stand-in for a
configured server. (Several processes at once: test_embedded_shared.py.)"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from redis.asyncio import Redis

from zen_async import BackendError, ConfigError, Settings, open_zen
from zen_async.store import embedded
from zen_async.store.embedded import open_embedded_server
from zen_async.testing import free_port


def embedded_settings(data_dir: Path, **values: object) -> Settings:
    return Settings(_env_file=None, redis_embedded_dir=data_dir, **values)


def pid_alive(pid: int) -> bool:
    """Running: not gone, and not a zombie its new parent has yet to reap (the server is
    daemonized, so it is not this process's child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def answers(port: int) -> bool:
    async with Redis(host="127.0.0.1", port=port) as client:
        return bool(await client.ping())


def write_state(data_dir: Path, *, port: int, pid: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "embedded.state").write_bytes(orjson.dumps({"port": port, "pid": pid}))


async def test_starts_when_nothing_is_configured_and_keeps_data_across_runs(
    tmp_path: Path,
) -> None:
    settings = embedded_settings(tmp_path)
    assert settings.use_embedded
    async with open_zen(settings) as zen:
        server = zen.redis.embedded
        assert server is not None
        assert server.url.startswith("redis://127.0.0.1:")
        status = await zen.redis.get_health_status()
        assert status["redis_available"] is True
        assert status["server"]["name"] == "valkey"
        ks = zen.redis.keyspace("state")
        await ks.set(ks.key("survivor"), b"still here")
        first_pid = server.pid
    assert not pid_alive(first_pid), "the embedded server must stop when open_zen exits"
    assert (tmp_path / "appendonlydir").is_dir(), "AOF must be on"

    async with open_zen(settings) as zen:
        assert zen.redis.embedded is not None
        assert zen.redis.embedded.pid != first_pid
        ks = zen.redis.keyspace("state")
        assert await ks.get(ks.key("survivor")) == b"still here"


async def test_users_of_one_data_directory_share_one_server(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    async with open_zen(settings) as first:
        async with open_zen(settings) as second:
            assert first.redis.embedded is not None
            assert second.redis.embedded == first.redis.embedded, "the second must attach"
            ks = first.redis.keyspace("state")
            await ks.set(ks.key("shared"), b"one server")
            other = second.redis.keyspace("state")
            assert await other.get(other.key("shared")) == b"one server"
        server = first.redis.embedded
        assert pid_alive(server.pid), "a user leaving must not stop the server for the others"
        assert await ks.get(ks.key("shared")) == b"one server"
    assert not pid_alive(server.pid), "the last user leaving must stop the server"
    assert not (tmp_path / "embedded.state").exists()


async def test_a_stale_state_file_does_not_block_start(tmp_path: Path) -> None:
    finished = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await finished.wait()  # its pid is now dead
    write_state(tmp_path, port=free_port(), pid=finished.pid)
    async with open_embedded_server(tmp_path) as server:
        assert server.pid != finished.pid
        assert await answers(server.port)
        assert orjson.loads((tmp_path / "embedded.state").read_bytes()) == {
            "port": server.port,
            "pid": server.pid,
        }
        assert (tmp_path / "embedded.state").stat().st_mode & 0o777 == 0o600
    assert not pid_alive(server.pid)


async def test_a_state_file_naming_another_program_never_gets_it_signalled(
    tmp_path: Path,
) -> None:
    """The pid was reused by an unrelated program: a new server starts, and the program is
    never sent a signal, neither on start nor by the last user leaving."""
    stranger = await asyncio.create_subprocess_exec(
        "sleep", "300", stdin=asyncio.subprocess.DEVNULL
    )
    try:
        write_state(tmp_path, port=free_port(), pid=stranger.pid)
        async with open_embedded_server(tmp_path) as server:
            assert server.pid != stranger.pid
            assert await answers(server.port)
        assert stranger.returncode is None
        assert pid_alive(stranger.pid)
    finally:
        stranger.kill()
        await stranger.wait()


async def test_a_state_file_naming_another_directorys_server_leaves_it_alone(
    tmp_path: Path,
) -> None:
    async with open_embedded_server(tmp_path / "b") as other:
        write_state(tmp_path / "a", port=other.port, pid=other.pid)
        async with open_embedded_server(tmp_path / "a") as server:
            assert (server.pid, server.port) != (other.pid, other.port)
        assert not pid_alive(server.pid)
        assert pid_alive(other.pid)
        assert await answers(other.port)


async def test_an_unusable_data_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"REDIS_EMBEDDED_DIR.*create and write"):
        async with open_embedded_server(tmp_path / "a-file" / "embedded"):
            pass  # pragma: no cover - must not be reached


async def test_a_server_that_will_not_start_is_a_backend_error_quoting_its_log(
    tmp_path: Path,
) -> None:
    (tmp_path / "appendonlydir").mkdir()
    (tmp_path / "appendonlydir" / "appendonly.aof.manifest").write_text("garbage\n")
    with pytest.raises(BackendError, match="Invalid AOF manifest"):
        async with open_embedded_server(tmp_path):
            pass  # pragma: no cover - must not be reached
    assert not (tmp_path / "embedded.state").exists()


async def test_the_server_reports_its_pid_and_directory(tmp_path: Path) -> None:
    """How a pid is verified where there is no /proc: the server on the port is asked."""
    real_path = await anyio.to_thread.run_sync(tmp_path.resolve)
    async with open_embedded_server(tmp_path) as server:
        assert await embedded._reported_identity(server.port) == (server.pid, real_path)
    assert await embedded._reported_identity(server.port) is None


def test_embedded_true_next_to_a_configured_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"REDIS_EMBEDDED='true'.*REDIS_HOST"):
        embedded_settings(tmp_path, redis_host="db.invalid", redis_embedded="true")


async def test_an_unreachable_configured_server_is_never_replaced(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = embedded_settings(
        tmp_path, redis_url=f"redis://127.0.0.1:{port}/0", redis_connect_timeout=0.5
    )
    assert not settings.use_embedded
    async with open_zen(settings) as zen:
        assert zen.redis.embedded is None
        status = await zen.redis.get_health_status()
        assert status["redis_available"] is False
        assert "healthy" not in status["database_status"].values()
        ks = zen.redis.keyspace("state")
        with pytest.raises(BackendError):
            await ks.get(ks.key("anything"))
    assert not (tmp_path / "embedded.lock").exists()
