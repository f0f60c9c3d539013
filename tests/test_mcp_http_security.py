"""``zen-async serve --transport http`` facing hostile clients (issue 14): a DNS-rebinding
page is refused by the Host/Origin check on every bind, the bearer scheme is
case-insensitive, a non-loopback bind without a real token is refused before anything is
bound, and the token is never printed. Servers bind loopback only (127.0.0.1, and 127.0.0.2
standing in for an address the MCP SDK would leave unchecked)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from zen_async.errors import ConfigError
from zen_async.mcp_server import TOOL_NAMES
from zen_async.mcp_server.app import check_exposure, is_loopback, transport_security
from zen_async.testing import free_port
from zen_async.testing.deployments import Target
from zen_async.testing.waiting import wait_for

TOKEN = "tok-5b1e0c7d9a2f4e86b3c1"  # 24 bytes
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def child_env(target: Target, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ZEN_"))}
    env.update(
        REDIS_URL=target.url,
        REDIS_EMBEDDED="false",
        PYTHONPATH=os.getcwd(),
        ZEN_LOG_LEVEL="warning",
        **extra,
    )
    return env


class HttpServer:
    """``zen-async serve --transport http`` in a subprocess, its output kept in files."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, out: Path, err: Path):
        self.process = process
        self.port = port
        self._out = out
        self._err = err

    async def stop(self) -> tuple[str, str]:
        """Stop it; its stdout and stderr."""
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()
        return self._out.read_text(), self._err.read_text()


async def start_server(env: dict[str, str], cwd: Path, host: str, *extra: str) -> HttpServer:
    port = free_port()
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zen_async.cli",
            "serve",
            "--transport",
            "http",
            "--host",
            host,
            "--port",
            str(port),
            *extra,
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
        )

    async def listening() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
        except OSError:
            return process.returncode is not None  # exited: stop waiting, the test fails
        return True

    await wait_for(listening, deadline=60, what="the HTTP server to listen")
    assert process.returncode is None, err.read_text()
    return HttpServer(process, port, out, err)


async def post_initialize(url: str, **headers: str) -> int:
    async with httpx2.AsyncClient(timeout=30) as http:
        reply = await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
    return reply.status_code


async def test_host_and_origin_checked_lowercase_bearer_and_token_from_env(
    standalone: Target, tmp_path: Path
) -> None:
    """Bound to 127.0.0.1 with ZEN_MCP_ALLOWED_HOSTS naming another host: that name passes,
    a rebinding name or a foreign Origin does not even with the right token."""
    server = await start_server(
        child_env(standalone, ZEN_MCP_TOKEN=TOKEN, ZEN_MCP_ALLOWED_HOSTS="mcp.example.test"),
        tmp_path,
        "127.0.0.1",
    )
    try:
        port = server.port
        url = f"http://127.0.0.1:{port}/mcp"
        right = f"Bearer {TOKEN}"
        assert await post_initialize(url) == 401, "no token"
        assert await post_initialize(url, Authorization=f"Bearer {TOKEN}x") == 401
        assert await post_initialize(url, Authorization=f"Basic {TOKEN}") == 401
        rebinding = await post_initialize(
            url,
            Authorization=right,
            Host="attacker.example:8765",
            Origin="http://attacker.example",
        )
        assert rebinding == 421, "a DNS-rebinding Host is refused, whatever the token"
        foreign_origin = await post_initialize(
            url, Authorization=right, Origin="http://attacker.example"
        )
        assert foreign_origin == 403
        allowed = await post_initialize(
            url,
            Authorization=right,
            Host=f"mcp.example.test:{port}",
            Origin=f"https://mcp.example.test:{port}",
        )
        assert allowed == 200, "a host in ZEN_MCP_ALLOWED_HOSTS passes"
        assert await post_initialize(url, Authorization=f"bearer {TOKEN}") == 200
        assert await post_initialize(url, Authorization=f"BEARER {TOKEN}") == 200

        headers = {"Authorization": f"bearer {TOKEN}"}  # RFC 7235: the scheme ignores case
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            assert {t.name for t in (await client.list_tools()).tools} >= set(TOOL_NAMES)
    finally:
        out, err = await server.stop()
    assert "token: from ZEN_MCP_TOKEN" in out
    assert TOKEN not in out
    assert TOKEN not in err


async def test_rebinding_refused_on_a_bind_the_sdk_leaves_unchecked(
    standalone: Target, tmp_path: Path
) -> None:
    """The MCP SDK checks Host only when bound to 127.0.0.1, localhost or ::1 (0.0.0.0 was
    open to rebinding); 127.0.0.2 takes the same path without leaving the machine. The
    token comes from --token-file and is never printed."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = await start_server(
        child_env(standalone), tmp_path, "127.0.0.2", "--token-file", str(token_file)
    )
    try:
        port = server.port
        url = f"http://127.0.0.2:{port}/mcp"
        rebinding = await post_initialize(
            url,
            Authorization=f"Bearer {TOKEN}",
            Host="attacker.example:8765",
            Origin="http://attacker.example",
        )
        assert rebinding == 421
        assert await post_initialize(url, Authorization=f"Bearer {TOKEN}") == 200, (
            "the bind address itself is an allowed Host"
        )
        assert await post_initialize(url, Authorization="Bearer wrong-token-wrong-token") == 401
    finally:
        out, err = await server.stop()
    assert f"token: from --token-file {token_file}" in out
    assert TOKEN not in out
    assert TOKEN not in err


def run_serve(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zen_async.cli", "serve", "--transport", "http", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("token_env", "args"),
    [
        (None, ()),
        ("", ()),  # an empty ZEN_MCP_TOKEN is no token, not "no authentication"
        ("short-token", ()),
        (None, ("--token", "s3cret")),
    ],
    ids=["no-token", "empty-token", "short-env-token", "short-flag-token"],
)
def test_a_non_loopback_bind_without_a_real_token_is_refused_before_binding(
    standalone: Target, tmp_path: Path, token_env: str | None, args: tuple[str, ...]
) -> None:
    env = child_env(standalone)
    if token_env is not None:
        env["ZEN_MCP_TOKEN"] = token_env
    port = str(free_port())
    result = run_serve(env, tmp_path, "--host", "0.0.0.0", "--port", port, *args)
    assert result.returncode != 0
    assert "--insecure-no-auth" in result.stderr
    assert "16+ bytes" in result.stderr
    assert "MCP server:" not in result.stdout, "refused before the banner"
    for secret in ("short-token", "s3cret"):
        assert secret not in result.stdout + result.stderr


def test_an_unreadable_token_file_is_a_config_error(standalone: Target, tmp_path: Path) -> None:
    result = run_serve(child_env(standalone), tmp_path, "--token-file", str(tmp_path / "none"))
    assert result.returncode != 0
    assert "--token-file" in result.stderr


def test_the_token_flag_says_it_shows_in_ps(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zen_async.cli", "serve", "--help"],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    help_text = " ".join(result.stdout.split())
    assert "visible to every local user in ps" in help_text
    assert "--insecure-no-auth" in help_text


def test_exposure_rules() -> None:
    """The rules ``serve`` applies before binding (no server needed)."""
    for host in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "example.com", "localhost.example"):
        assert not is_loopback(host), host
    assert check_exposure("127.0.0.1", None) == [], "loopback without a token: make run"
    assert "no authentication" in check_exposure("127.0.0.1", "")[0], "an empty token is said"
    assert check_exposure("0.0.0.0", "x" * 16) == []
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        check_exposure("0.0.0.0", "x" * 15)
    (warning,) = check_exposure("0.0.0.0", None, allow_insecure=True)
    assert warning.startswith("INSECURE")

    security = transport_security(["mcp.example.com", "10.0.0.5:8765"], bind="0.0.0.0")
    assert security.enable_dns_rebinding_protection
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*"} <= set(security.allowed_hosts)
    assert {"mcp.example.com", "mcp.example.com:*", "10.0.0.5:8765"} <= set(security.allowed_hosts)
    assert "0.0.0.0:*" not in security.allowed_hosts
    assert "https://mcp.example.com" in security.allowed_origins
    for bad in ("http://mcp.example.com", "mcp.example.com/mcp", "host:port", "*"):
        with pytest.raises(ConfigError, match="ZEN_MCP_ALLOWED_HOSTS"):
            transport_security([bad])
