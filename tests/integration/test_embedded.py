"""The embedded server: started when nothing is configured, private data directory with AOF,
data kept across runs, stopped on exit; and never a silent stand-in for a configured server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zen_async import BackendError, ConfigError, Settings, open_zen
from zen_async.testing import free_port


def embedded_settings(data_dir: Path, **values: object) -> Settings:
    return Settings(_env_file=None, redis_embedded_dir=data_dir, **values)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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


async def test_a_data_directory_serves_one_process_at_a_time(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    async with open_zen(settings):
        with pytest.raises(ConfigError, match="REDIS_EMBEDDED_DIR"):
            async with open_zen(settings):
                pass  # pragma: no cover - must not be reached


async def test_embedded_true_overrides_a_configured_host(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, redis_host="db.invalid", redis_embedded="true")
    async with open_zen(settings) as zen:
        assert zen.redis.embedded is not None
        assert (await zen.redis.get_health_status())["redis_available"] is True


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
