"""docker-compose.yml: valid for docker compose (whichever client is here: .ci/run installs
Debian's docker-compose when none is), and each topology's app service serves MCP over HTTP
with an environment that is a valid zen_async configuration for that topology."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from zen_async import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
APPS = {"app": (None, "standalone"), "app-cluster": ("cluster", "cluster"),
        "app-sentinel": ("sentinel", "sentinel")}  # fmt: skip


def compose_client() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize("profile", [None, "cluster", "sentinel"])
def test_docker_compose_accepts_the_file(profile: str | None) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no docker compose client here (.ci/run installs Debian's docker-compose)")
    args = [*client, "-f", str(COMPOSE), *(["--profile", profile] if profile else []), "config"]
    result = subprocess.run(
        [*args, "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "ZEN_MCP_TOKEN": "t"},
    )
    assert result.returncode == 0, result.stderr


def test_each_topology_has_an_app_serving_mcp_with_valid_settings() -> None:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {name for name in services if name.startswith("app")} == set(APPS)
    for name, (profile, topology) in APPS.items():
        app = services[name]
        assert app.get("profiles", [None]) == [profile], name
        assert app["command"][:4] == ["zen-async", "serve", "--transport", "http"], name
        assert all(port.startswith("127.0.0.1:") for port in app["ports"]), "loopback only"
        env = app["environment"]
        assert "ZEN_MCP_TOKEN" in env, "the HTTP transport asks for a bearer token"
        redis = {k.lower(): v for k, v in env.items() if k.startswith("REDIS_")}
        assert Settings(_env_file=None, **redis).topology == topology, name
