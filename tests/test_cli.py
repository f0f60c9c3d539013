"""The zen-async console script, run as a user would: a subprocess with environment variables."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import zen_async
from zen_async import Settings, ValidationError, open_zen
from zen_async.cli import render_health, server_line
from zen_async.demo import DemoOptions, DemoReport, Invariant, OpSummary, write_demo
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
    host, port = standalone.server.address
    address = f"{host}:{port}"
    assert status["address"] == address
    # stdout carries only the report; stderr the server line, then logs as JSON lines
    first, *logs = result.stderr.splitlines()
    assert first == f"zen-async: using standalone server {address} (from REDIS_URL)"
    for line in logs:
        assert json.loads(line)["event"]


def test_health_pretty_on_the_embedded_server(tmp_path: Path) -> None:
    env = {"REDIS_EMBEDDED": "true", "REDIS_EMBEDDED_DIR": str(tmp_path / "data")}
    result = run_cli("health", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "zen-async: using the embedded valkey-server (REDIS_EMBEDDED=true; data in "
    )
    assert "redis available   yes" in result.stdout
    assert "embedded server   redis://127.0.0.1:" in result.stdout
    assert "valkey 9." in result.stdout


def test_health_exits_1_when_the_server_is_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}", "REDIS_CONNECT_TIMEOUT": "0.5"}
    result = run_cli("health", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["redis_available"] is False
    assert status["address"] == f"127.0.0.1:{port}"
    # The cause, once (not per keyspace), naming the address and what failed.
    [cause] = status["errors"]
    assert f"127.0.0.1:{port}" in cause
    assert "connection refused" in cause
    assert status["circuit_breaker"]["last_error"] == cause
    assert set(status["database_status"].values()) == {"unavailable"}
    assert status["average_latency"] is None  # nothing was measured


def first_contact_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """A user's first run: no REDIS_* set but ``env``, a fresh home and data directory."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "REDIS_EMBEDDED_DIR": str(tmp_path / "embedded"),
        **env,
    }


def test_a_port_alone_means_that_server_never_the_embedded_one(tmp_path: Path) -> None:
    """`REDIS_PORT=1 zen-async health` reports 127.0.0.1:1 down; it never falls back to the
    embedded server."""
    env = first_contact_env(tmp_path, REDIS_PORT="1", REDIS_CONNECT_TIMEOUT="0.5")
    result = run_cli("health", env=env, cwd=tmp_path)
    assert result.returncode != 0
    out = result.stdout
    assert out.startswith("zen-async: using standalone server 127.0.0.1:1 (from REDIS_PORT)\n")
    assert "embedded" not in out
    assert not (tmp_path / "embedded").exists()
    [cause] = [line for line in out.splitlines() if line.startswith("error ")]
    assert "server 127.0.0.1:1 unreachable (connection refused): Error 111" in cause
    assert out.count("connection refused") == 1  # said once, not per keyspace
    assert "circuit breaker open" not in out
    assert "average latency   not measured" in out
    assert " ms\n" not in out  # no latency figure when nothing was measured
    assert "databases         all unavailable" in out


def test_serve_says_which_server_on_stderr_only(tmp_path: Path) -> None:
    """serve's stdout is the MCP stdio channel: the server line and the cause go to stderr.
    (stdin at EOF: the client has gone, so serve ends after opening.)"""
    env = first_contact_env(tmp_path, REDIS_PORT="1", REDIS_CONNECT_TIMEOUT="0.5")
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    said = [line for line in result.stderr.splitlines() if line.startswith("zen-async:")]
    assert said[0] == "zen-async: using standalone server 127.0.0.1:1 (from REDIS_PORT)"
    assert said[1].startswith(
        "zen-async: Redis not available yet: server 127.0.0.1:1 unreachable (connection refused)"
    )


def test_serve_names_the_embedded_server_it_started(tmp_path: Path) -> None:
    result = run_cli("serve", env=first_contact_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    first, second = [line for line in result.stderr.splitlines() if line.startswith("zen-async:")]
    data = tmp_path / "embedded"
    assert first == (
        "zen-async: using the embedded valkey-server (no REDIS_* connection variable is set; "
        f"data in {data})"
    )
    assert second.startswith("zen-async: embedded valkey-server at redis://127.0.0.1:")
    assert second.endswith(f" (data in {data})")


def test_the_server_line_never_shows_a_password() -> None:
    settings = Settings(_env_file=None, redis_url="rediss://app:hunter2@db.example:6380/0")
    line = server_line(settings)
    assert (
        line
        == "zen-async: using standalone server db.example:6380 (TLS; user 'app'; from REDIS_URL)\n"
    )
    assert "hunter2" not in line


def test_version_is_the_installed_distributions() -> None:
    expected = importlib.metadata.version("zen-async")
    result = run_cli("--version", env={}, cwd=Path.cwd())
    assert (result.returncode, result.stdout) == (0, f"zen-async {expected}\n")
    assert zen_async.__version__ == expected
    # Defined once: no copy of the number anywhere in the package's source.
    package = Path(zen_async.__file__).parent
    for source in package.rglob("*.py"):
        assert f'"{expected}"' not in source.read_text(), source


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


def test_replay_reads_the_audit_trail_of_another_tenant(standalone: Target, tmp_path: Path) -> None:
    async def make_history() -> None:
        async with open_zen(standalone.settings()) as zen:
            other = zen.for_tenant("team-b")
            await other.agents.create_agent("cli", agent_id="cli-b")
            await other.agents.transition("cli-b", "ready")

    asyncio.run(make_history())
    env = {"REDIS_URL": standalone.url}
    result = run_cli("replay", "cli-b", "--tenant", "team-b", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    assert types == ["agent_created", "state_changed"]
    # Without --tenant: REDIS_NAMESPACE's tenant, which has no such agent, and says so.
    missing = run_cli("replay", "cli-b", env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert "no events for agent 'cli-b' in tenant 'default'" in missing.stderr
    bad = run_cli("replay", "cli-b", "--tenant", "no spaces", env=env, cwd=tmp_path)
    assert bad.returncode == 1
    assert "ValidationError: tenant 'no spaces' is invalid" in bad.stderr


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


DEMO_INVARIANTS = [
    "every agent completed its lifecycle",
    "no duplicate port among live leases",
    "every transition has its state_changed event",
    "final state equals the last event's target",
    "each task claimed exactly once",
    "every published event is in its audit trail",
    "a search finds each memory just stored",
]


def invariant_results(summary: str) -> dict[str, str]:
    """invariant -> PASS/FAIL, read from the demo's summary table."""
    found = {}
    for line in summary.splitlines():
        for name in DEMO_INVARIANTS:
            if line.startswith(name):
                found[name] = line[len(name) :].split()[0]
    return found


async def test_demo_runs_a_fleet_and_every_invariant_passes(standalone: Target) -> None:
    out, progress = io.StringIO(), io.StringIO()
    options = DemoOptions(agents=30, concurrency=8, tenant="demo-test")
    code = await write_demo(standalone.settings(), options, out=out, progress=progress)
    summary = out.getvalue()
    assert code == 0, summary
    assert invariant_results(summary) == dict.fromkeys(DEMO_INVARIANTS, "PASS"), summary
    assert "all invariants hold" in summary
    for op in (
        "agent.create (bulk)",
        "agent.transition",
        "port.allocate",
        "task.claim",
        "task.complete",
        "memory.store",
        "memory.search",
        "event.publish",
    ):
        row = next(line for line in summary.splitlines() if line.startswith(op + " "))
        assert row.split()[-1] == "0", row  # no errors
    # 30 agents x (ready, 2 x (running, ready), terminating, terminated) = 210 transitions
    assert "210 transitions; state_changed events: 210 in audit trails, 210 in shard" in summary
    phases = [line.split()[0] for line in progress.getvalue().splitlines()]
    assert phases == ["create", "start", "tasks", "work", "leases", "stop", "verify", "cleanup"]
    # It ran in its own tenant, left the default namespace alone, and cleaned up after itself.
    async with open_zen(standalone.settings()) as zen:
        assert sum((await zen.agents.count_by_state()).values()) == 0
        demo = zen.for_tenant("demo-test")
        assert sum((await demo.agents.count_by_state()).values()) == 0
        assert sum((await demo.tasks.count_by_status()).values()) == 0
        assert (await demo.ports.stats()).in_use == 0
        assert len(await demo.events.audit_trail("agent-00000")) > 0  # audit trails are kept


async def test_demo_on_every_topology(target: Target) -> None:
    out = io.StringIO()
    options = DemoOptions(agents=12, concurrency=4, cycles=1)
    code = await write_demo(target.settings(), options, out=out, progress=None)
    assert code == 0, out.getvalue()
    assert invariant_results(out.getvalue()) == dict.fromkeys(DEMO_INVARIANTS, "PASS")


async def test_demo_refuses_a_tenant_that_holds_agents(standalone: Target) -> None:
    async with open_zen(standalone.settings()) as zen:
        await zen.for_tenant("taken").agents.create_agent("someone", agent_id="keep-me")
    with pytest.raises(ValidationError, match="already holds 1 agents"):
        await write_demo(
            standalone.settings(),
            DemoOptions(agents=5, tenant="taken"),
            out=io.StringIO(),
            progress=None,
        )
    async with open_zen(standalone.settings()) as zen:
        assert await zen.for_tenant("taken").agents.get_agent("keep-me") is not None


@pytest.mark.parametrize(
    ("option", "value"), [("agents", 0), ("concurrency", 10_001), ("cycles", True)]
)
def test_demo_options_name_what_is_accepted(option: str, value: int) -> None:
    bad: dict[str, Any] = {option: value}
    with pytest.raises(ValidationError, match=f"{option}=.*expected an integer from 1 to"):
        DemoOptions(**bad)


def test_demo_command_prints_the_summary_and_exits_0(standalone: Target, tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--agents", "10", "--concurrency", "5", "--cycles", "1",
        env={"REDIS_URL": standalone.url, "ZEN_LOG_LEVEL": "warning"},
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert invariant_results(result.stdout) == dict.fromkeys(DEMO_INVARIANTS, "PASS")
    assert "zen-async demo: 10 agents, 1 work cycles each" in result.stdout
    assert "work" in result.stderr  # progress goes to stderr, the summary to stdout
    assert "agents 100.0%" not in result.stdout


def test_demo_report_marks_a_broken_invariant_fail() -> None:
    report = DemoReport(
        options=DemoOptions(agents=2),
        tenant="demo-x",
        server="redis 7.0.15, standalone (databases layout)",
        ops=[OpSummary("agent.transition", 14, 14, 700.0, 1.2, 3.4, 0)],
        invariants=[
            Invariant("every agent completed its lifecycle", True, "2/2 agents terminated"),
            Invariant("no duplicate port among live leases", False, "1 duplicates"),
        ],
        phases=[("create", 0.01)],
        seconds=0.02,
        failures=["agent-00001: work: cycle 0 found no task to claim"],
    )
    assert not report.passed
    text = report.render()
    assert invariant_results(text) == {
        "every agent completed its lifecycle": "PASS",
        "no duplicate port among live leases": "FAIL",
    }
    assert "1 invariant(s) FAILED" in text
    assert "failed: agent-00001: work: cycle 0 found no task to claim" in text


def test_bench_runs_the_benchmarks_of_the_checkout(standalone: Target, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = run_cli(
        "bench", "--quick", "--only", "core", "--out", str(out), "--url", standalone.url,
        "--no-readme", env={"ZEN_LOG_LEVEL": "warning"}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "core.json").read_text())["results"]
    assert (out / "summary.md").read_text().count("|") > 10
