"""The zen-async console script, run as a user would: a subprocess with environment variables."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zen_async import open_zen
from zen_async.cli import render_health
from zen_async.testing import free_port
from zen_async.testing.deployments import Target


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "zen_async.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_health_json_against_a_configured_server(standalone: Target, tmp_path: Path) -> None:
    result = run_cli("health", "--json", env={"REDIS_URL": standalone.url}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["redis_available"] is True
    assert status["topology"] == "standalone"
    assert status["server"]["name"] == "redis"
    # stdout carries only the report; logs go to stderr as JSON lines
    for line in result.stderr.splitlines():
        assert json.loads(line)["event"]


def test_health_pretty_on_the_embedded_server(tmp_path: Path) -> None:
    env = {"REDIS_EMBEDDED": "true", "REDIS_EMBEDDED_DIR": str(tmp_path / "data")}
    result = run_cli("health", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "redis available   yes" in result.stdout
    assert "embedded server   redis://127.0.0.1:" in result.stdout
    assert "valkey 9." in result.stdout


def test_health_exits_1_when_the_server_is_unreachable(tmp_path: Path) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}", "REDIS_CONNECT_TIMEOUT": "0.5"}
    result = run_cli("health", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout)["redis_available"] is False


def test_bad_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli("health", env={"REDIS_PORT": "abc", "REDIS_HOST": "x"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "REDIS_PORT='abc'" in result.stderr
    assert result.stdout == ""


def test_render_health_lists_alerts() -> None:
    status = {
        "redis_available": False,
        "topology": "cluster",
        "db_layout": "prefixed",
        "server": {"name": "redis", "version": "7.0.15"},
        "cluster_status": "fail",
        "average_latency": 120.5,
        "circuit_breaker": {"state": "open"},
        "circuit_breaker_failures": 9,
        "active_agents": 3,
        "last_health_check": "t",
        "memory": {},
        "database_status": {"state": "unavailable: circuit breaker open"},
        "alerts": [{"name": "circuit_breaker_open", "message": "circuit breaker open for 61s"}],
    }
    text = render_health(status)
    assert "redis available   NO" in text
    assert "! circuit_breaker_open: circuit breaker open for 61s" in text


def test_replay_prints_an_agents_audit_trail(standalone: Target, tmp_path: Path) -> None:
    async def make_history() -> None:
        async with open_zen(standalone.settings()) as zen:
            await zen.agents.create_agent("cli", agent_id="cli-1")
            await zen.agents.transition("cli-1", "ready")

    asyncio.run(make_history())
    result = run_cli("replay", "cli-1", "--json", env={"REDIS_URL": standalone.url}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["type"] for line in lines] == ["agent_created", "state_changed"]
    missing = run_cli("replay", "nobody", env={"REDIS_URL": standalone.url}, cwd=tmp_path)
    assert missing.returncode == 1


@pytest.mark.slow
def test_cluster_up_and_down(tmp_path: Path) -> None:
    root = tmp_path / "local"
    up = run_cli("cluster", "up", "--kind", "sentinel", "--dir", str(root), env={}, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "export REDIS_USE_SENTINEL=true" in up.stdout
    nodes = next(line for line in up.stdout.splitlines() if "REDIS_SENTINEL_NODES" in line)
    env = {
        "REDIS_USE_SENTINEL": "true",
        "REDIS_SENTINEL_NODES": nodes.split("=", 1)[1],
        "REDIS_MASTER_NAME": "zenmaster",
    }
    try:
        health = run_cli("health", "--json", env=env, cwd=tmp_path)
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout)["topology"] == "sentinel"
        again = run_cli("cluster", "up", "--dir", str(root), env={}, cwd=tmp_path)
        assert again.returncode == 2
    finally:
        down = run_cli("cluster", "down", "--dir", str(root), env={}, cwd=tmp_path)
    assert "stopped 6 processes" in down.stdout
