"""The zen-async console script, run as a user would: a subprocess with environment variables."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zen_async import ValidationError, open_zen
from zen_async.cli import render_health
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
