"""docker-compose.yml: valid for docker compose (whichever client is here: .ci/run installs
Debian's docker-compose when none is), and each topology's app service serves MCP over HTTP
with an environment that is a valid zen_async configuration for that topology, a bearer
token compose refuses to start without, and allowed hosts; the image runs as a non-root
user with a health check, and the build context leaves secrets and environments out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from zen_async import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
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
        env={**os.environ, "ZEN_MCP_TOKEN": "0123456789abcdef0123"},
    )
    assert result.returncode == 0, result.stderr
    unset = {k: v for k, v in os.environ.items() if k != "ZEN_MCP_TOKEN"}
    refused = subprocess.run(
        [*args, "-q"], capture_output=True, text=True, timeout=60, check=False, env=unset
    )
    assert refused.returncode != 0, "compose must refuse to start without ZEN_MCP_TOKEN"
    assert "ZEN_MCP_TOKEN" in refused.stderr


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


def test_every_app_requires_a_token_and_names_its_allowed_hosts() -> None:
    """Issue 14: the token defaulted to 'change-me' on a 0.0.0.0 bind. Compose's
    ``${VAR:?message}`` makes a missing or empty ZEN_MCP_TOKEN an error at start."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in APPS:
        env = services[name]["environment"]
        assert re.fullmatch(r"\$\{ZEN_MCP_TOKEN:\?[^}]*16\+ bytes[^}]*\}", env["ZEN_MCP_TOKEN"]), (
            f"{name}: ZEN_MCP_TOKEN must be required (${{ZEN_MCP_TOKEN:?...}}), not defaulted"
        )
        assert env.get("ZEN_MCP_ALLOWED_HOSTS"), f"{name}: Host/Origin allowed beyond loopback"
    assert "change-me" not in COMPOSE.read_text()


def test_the_image_runs_unprivileged_with_a_health_check() -> None:
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [words[1] for words in lines if words[:1] == ["USER"]]
    assert users, "the image must switch to a non-root user"
    assert users[-1] not in {"root", "0"}
    assert any(words[:1] == ["HEALTHCHECK"] for words in lines)
    assert any("--require-hashes" in words for words in lines), "installs from the lock"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "tests"} <= ignored
