"""Smoke runs of the benchmarks in quick mode, so the harness cannot rot. No timing asserts."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from matplotlib.image import imread

from benchmarks import agents, cluster, core, events, fleet, op_ids, run, scaling, tasks, transport
from benchmarks._harness import (
    IDLE_AREA,
    PROFILE_AREAS,
    RESULTS,
    Comparison,
    Measure,
    calls_round,
    cprofile_rounds,
    cprofile_section,
    profile_area,
    table,
)
from zen_async.testing.deployments import Target


async def test_core_benchmark_quick_mode_measures_every_scenario(standalone: Target) -> None:
    comparisons = await core.run(standalone.group.url, quick=True)  # type: ignore[union-attr]
    names = [c.scenario.name for c in comparisons]
    assert names == [
        "core SET",
        "core GET",
        "core GET x200 concurrent",
        "core set_many (500/batch)",
    ]
    for c in comparisons:
        assert c.scenario.rounds == c.baseline.rounds == 5
        assert c.scenario.ops_per_round == c.baseline.ops_per_round > 0
        assert c.ratio > 0
    report = table("core", comparisons)
    assert report.count("\n| ") == 2 + len(comparisons) - 1


async def test_agents_benchmark_quick_mode_measures_every_scenario_and_target(
    standalone: Target,
) -> None:
    outcome = await agents.run(standalone.group.url, quick=True)  # type: ignore[union-attr]
    scenarios = list(dict.fromkeys(c.scenario.name for c in outcome.comparisons))
    assert scenarios == list(agents.names(agents.QUICK).values())
    assert len(outcome.comparisons) == 22  # every scenario against each of its baselines
    for c in outcome.comparisons:
        assert c.scenario.rounds == c.baseline.rounds == agents.QUICK.rounds
        assert c.scenario.ops_per_round > 0
        assert c.baseline.ops_per_round > 0
        assert c.ratio > 0
    assert [limit.name for limit in outcome.limits] == [
        "redis-benchmark SET",
        "redis-benchmark SET -P 16",
    ]
    assert all(limit.requests_per_s > 0 for limit in outcome.limits)
    assert len(outcome.checks) == 13
    assert all(check.measured > 0 for check in outcome.checks)
    assert [label for label, _, _ in outcome.load] == list(agents.names(agents.QUICK).values())
    report = outcome.markdown()
    assert "### Targets" in report
    assert "### Machine load during the run" in report
    assert report.count("PASS") + report.count("**MISS**") == len(outcome.checks)


async def test_events_benchmark_quick_mode_measures_every_scenario(standalone: Target) -> None:
    outcome = await events.run(standalone.group.url, quick=True)  # type: ignore[union-attr]
    scenarios = list(dict.fromkeys(c.scenario.name for c in outcome.comparisons))
    assert scenarios == list(events.names(events.QUICK).values())
    assert len(outcome.comparisons) == 6  # every scenario against each of its baselines
    for c in outcome.comparisons:
        assert c.scenario.rounds == c.baseline.rounds == events.QUICK.rounds
        assert c.scenario.ops_per_round == c.baseline.ops_per_round > 0
        assert c.ratio > 0
    assert [label for label, _, _ in outcome.load] == list(events.names(events.QUICK).values())
    report = outcome.markdown()
    assert report.count("\n| ") == sum(1 + len(cs) for _, cs in outcome.sections)


CORE_SCENARIOS = [
    "core SET",
    "core GET",
    "core GET x200 concurrent",
    "core set_many (500/batch)",
]


def test_runner_quick_mode_writes_results_summary_plots_and_readme(
    standalone: Target, tmp_path: Path
) -> None:
    original = run.README.read_text(encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(original, encoding="utf-8")
    committed = (RESULTS / "core.json").read_bytes()
    out = tmp_path / "results"
    argv = ["--quick", "--only", "core", "--out", str(out), "--url", standalone.url]
    assert run.main([*argv, "--write-readme", "--readme", str(readme)]) == 0

    data = orjson.loads((out / "core.json").read_bytes())
    assert [r["scenario"]["name"] for r in data["results"]] == CORE_SCENARIOS
    assert all(r["ratio"] > 0 for r in data["results"])
    assert data["quick"] is True
    loop = "uvloop " if importlib.util.find_spec("uvloop") else "asyncio"
    assert data["loop"].startswith(loop)  # the loop that actually ran is reported
    assert data["server"].startswith("redis 7.")
    assert data["machine"]["cores"] == os.cpu_count()
    assert data["machine"]["cpu"]
    assert data["date"]

    report = (out / "core.md").read_text(encoding="utf-8")
    assert data["loop"] in report
    assert "| core SET |" in report
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.count("\n| core | core ") == len(CORE_SCENARIOS)
    assert f"| core | {data['date']} | quick | {data['loop']} | {data['server']} |" in summary
    assert f"{data['machine']['cores']} cores" in summary

    png = out / "core.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    height, width, _ = imread(png).shape
    assert height > 100
    assert width > 100

    updated = readme.read_text(encoding="utf-8")
    head, rest = original.split(run.START)
    tail = rest.split(run.END)[1]
    assert updated.startswith(head + run.START)  # only the text between the markers changed
    assert updated.endswith(run.END + tail)
    block = updated.split(run.START)[1].split(run.END)[0]
    assert block.count("\n| core | core ") == len(CORE_SCENARIOS)
    assert "QUICK smoke figures" in block
    # The committed results and the real README were left alone.
    assert (RESULTS / "core.json").read_bytes() == committed
    assert run.README.read_text(encoding="utf-8") == original

    # --report-only rebuilds from the JSON without running anything; --no-readme skips it.
    (out / "summary.md").unlink()
    assert run.main(["--report-only", "--out", str(out), "--no-readme"]) == 0
    assert (out / "summary.md").read_text(encoding="utf-8") == summary


def test_runner_writes_the_readme_only_with_write_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run (not --quick) used to rewrite README.md by default: `make bench` must leave
    it alone unless --write-readme asks. Report-only from a copy of the committed results is
    the same path without running anything; the default README here is a copy."""
    out = tmp_path / "results"
    out.mkdir()
    shutil.copyfile(RESULTS / "core.json", out / "core.json")
    original = run.README.read_text(encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(original, encoding="utf-8")
    monkeypatch.setattr(run, "README", readme)
    report_only = ["--report-only", "--out", str(out)]

    for extra in ([], ["--no-readme"]):
        assert run.main([*report_only, *extra]) == 0
        assert (out / "summary.md").is_file()
        assert readme.read_text(encoding="utf-8") == original, f"README written with {extra}"
    with pytest.raises(SystemExit) as exited:  # --readme alone asks for nothing: refused
        run.main([*report_only, "--readme", str(readme)])
    assert exited.value.code == 2
    assert readme.read_text(encoding="utf-8") == original

    assert run.main([*report_only, "--write-readme"]) == 0
    updated = readme.read_text(encoding="utf-8")
    block = updated.split(run.START)[1].split(run.END)[0]
    assert block.count("\n| core | core ") == len(CORE_SCENARIOS)
    assert updated.split(run.START)[0] == original.split(run.START)[0]
    assert updated.split(run.END)[1] == original.split(run.END)[1]


def test_runner_refuses_a_readme_without_markers_and_unknown_modules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bench:start"):
        run.replace_block("# title\n\nno markers here\n", "table")
    assert run.replace_block(f"a\n{run.START}\nold\n{run.END}\nb\n", "new") == (
        f"a\n{run.START}\nnew\n{run.END}\nb\n"
    )
    assert run.main(["--report-only", "--out", str(tmp_path), "--no-readme"]) == 2
    with pytest.raises(SystemExit) as exited:
        run.main(["--only", "core,nope"])
    assert exited.value.code == 2


# --- scale-out modules (fleet, cluster, scaling, tasks), through the runner -----------------
def _quick_run(module: str, url: str, out: Path) -> dict[str, Any]:
    """Run ``module`` in quick mode through the runner; its saved JSON."""
    argv = ["--quick", "--only", module, "--out", str(out), "--url", url, "--no-readme"]
    assert run.main(argv) == 0
    assert (out / f"{module}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    data: dict[str, Any] = orjson.loads((out / f"{module}.json").read_bytes())
    assert data["quick"] is True
    for r in data["results"]:
        assert r["ratio"] > 0
        assert r["scenario"]["ops_per_round"] > 0
        assert r["baseline"]["ops_per_round"] > 0
    return data


def test_fleet_benchmark_quick_mode_runs_on_both_topologies_and_every_invariant_holds(
    standalone: Target, tmp_path: Path
) -> None:
    data = _quick_run("fleet", standalone.url, tmp_path)
    assert set(data["rounds"]) == {fleet.STANDALONE, fleet.CLUSTER}
    for topology, rounds in data["rounds"].items():
        assert len(rounds) == fleet.QUICK.rounds, topology
        for made in rounds:
            assert made["fleet_ops"] > 0
            names = [i["name"] for i in made["invariants"]]
            assert "no duplicate port among live leases" in names
            assert "every transition has its state_changed event" in names
            assert fleet.REPLAY_INVARIANT in names
            failed = [i for i in made["invariants"] if not i["passed"]]
            assert not failed, (topology, failed)
    scenarios = [r["scenario"]["name"] for r in data["results"]]
    assert scenarios[0] == f"fleet, all operations (no read-back) on {fleet.CLUSTER}"
    for op in ("agent.transition", "port.allocate", "task.claim", "memory.search"):
        assert f"fleet {op} on {fleet.CLUSTER}" in scenarios
    assert all(r["scenario"]["rounds"] == fleet.QUICK.rounds for r in data["results"])
    assert len(data["checks"]) == 2 * len(names)  # every invariant, on each topology
    assert all(c["passed"] for c in data["checks"])
    report = (tmp_path / "fleet.md").read_text(encoding="utf-8")
    assert f"### Fleet on {fleet.STANDALONE}: per operation type" in report
    assert "### Invariants, checked after every round" in report


def test_cluster_benchmark_quick_mode_runs_each_scenario_on_both_topologies(
    standalone: Target, tmp_path: Path
) -> None:
    data = _quick_run("cluster", standalone.url, tmp_path)
    expected = list(cluster.names(agents.QUICK).values())
    scenarios = [r["scenario"]["name"] for r in data["results"]]
    assert sorted(scenarios) == sorted(f"{n} on {cluster.CLUSTER}" for n in expected)
    baselines = [r["baseline"]["name"] for r in data["results"]]
    assert baselines == [s.replace(cluster.CLUSTER, cluster.STANDALONE) for s in scenarios]
    assert all(r["scenario"]["rounds"] == agents.QUICK.rounds for r in data["results"])
    assert len(data["checks"]) == 5
    assert all(c["measured"] > 0 for c in data["checks"])


@pytest.mark.slow  # 8 client processes and a cluster: 16-25 s here
def test_scaling_benchmark_quick_mode_runs_1_2_4_processes_and_the_cluster_checks(
    standalone: Target, tmp_path: Path
) -> None:
    data = _quick_run("scaling", standalone.url, tmp_path)
    scenarios = [r["scenario"]["name"] for r in data["results"]]
    for label in scaling.LABELS.values():
        assert f"{label}, 2 processes" in scenarios
        assert f"{label}, 4 processes" in scenarios
    agents_total = scaling.QUICK.cluster_agents
    for phase in scaling.PHASES:
        assert f"Cluster {agents_total:,} agents: {phase}, 4 processes" in scenarios
    assert len(data["results"]) == 2 * len(scaling.KINDS) + 1 + len(scaling.PHASES)
    runs = data["invariants"]
    assert len(runs) == 2 * scaling.QUICK.cluster_rounds  # 1 and 4 processes, each round
    for label, results in runs.items():
        assert [name for name, _, _ in results] == [
            "count_by_state totals",
            "every agent in the state its process left it in",
            "no duplicate port; one lease per agent",
        ], label
        assert all(passed for _, passed, _ in results), (label, results)
    assert not data["errors"]
    assert {f"standalone transitions, {n}" for n in ("1 process", "2 processes")} <= set(
        data["cpu_percent"]
    )


def test_tasks_benchmark_quick_mode_runs_zen_and_arq_and_checks_every_task(
    standalone: Target, tmp_path: Path
) -> None:
    # About 5 s; the first run also makes benchmarks/.arq-venv with pip (about 6 s more).
    data = _quick_run("tasks", standalone.url, tmp_path)
    n = tasks.names(tasks.QUICK)
    assert [(r["scenario"]["name"], r["baseline"]["name"]) for r in data["results"]] == [
        (n["single"], n["arq"]),
        (n["single"], n["arq_defaults"]),
        (n["bulk"], n["arq"]),
        (n["bulk"], n["arq_defaults"]),
    ]
    for r in data["results"]:  # every task (job) of every round was done, on both sides
        assert r["scenario"]["ops_per_round"] == r["baseline"]["ops_per_round"]
        assert r["scenario"]["ops_per_round"] == tasks.QUICK.tasks
    invariant = data["checks"][-1]
    assert invariant["target"].startswith("every zen task completed")
    assert invariant["passed"], invariant
    assert any("arq 0." in note for note in data["notes"])


def test_op_ids_benchmark_quick_mode_measures_markers_against_no_markers(
    standalone: Target, tmp_path: Path
) -> None:
    data = _quick_run("op_ids", standalone.url, tmp_path)
    n = op_ids.names(op_ids.QUICK)
    assert [(r["scenario"]["name"], r["baseline"]["name"]) for r in data["results"]] == [
        (n["marked"], n["plain"]),
        (n["zen"], n["plain"]),
        (n["zen"], n["marked"]),
        (n["hb"], n["hb_raw"]),
        (n["turn_marked"], n["turn_plain"]),
        (n["turn_zen"], n["turn_plain"]),
        (n["turn_zen"], n["turn_marked"]),
    ]
    assert all(r["scenario"]["rounds"] == op_ids.QUICK.rounds for r in data["results"])
    assert data["ratio_with_marker_over_without"] == data["results"][0]["ratio"]
    memory = data["marker_memory"]
    assert memory["markers"] == op_ids.QUICK.markers
    assert memory["sampled"] == op_ids.QUICK.sample  # the sample found the markers
    assert memory["usage_mean"] > memory["value_mean"] > 0
    assert memory["op_id_len"] == 32
    assert memory["key_len"] == len(memory["prefix"]) + 32
    assert memory["prefix"].endswith(":op:")
    assert [c["target"][:40] for c in data["checks"]] == [
        "transition throughput with an op-id mark"
    ]
    report = (tmp_path / "op_ids.md").read_text(encoding="utf-8")
    assert "### Marker memory" in report
    assert "per 1M writes" in report


def test_transport_benchmark_quick_mode_measures_both_transports_and_every_target(
    standalone: Target, tmp_path: Path
) -> None:
    data = _quick_run("transport", standalone.url, tmp_path)
    n = transport.names(transport.QUICK, setting=data["transport_setting"])
    ceiling = data["ceiling"]
    assert ceiling["max"] == max(ceiling["bulk"], ceiling["pipelined"]) > 0
    top = n["bulk"] if ceiling["bulk"] >= ceiling["pipelined"] else n["pipelined"]
    expected = [(n["bulk"], n["pipelined"])]
    # each zen side vs raw, then zen's sides; standalone, then Cluster (vs raw RedisCluster)
    for s in ("t", "g", "s", "l", "get", "ct", "cg", "cget"):
        mux, pool, raw = n[f"{s}_mux"], n[f"{s}_pool"], n[f"{s}_raw"]
        expected += [(mux, raw), (pool, raw), (mux, pool)]
        if s in ("t", "l"):  # transitions: also against the ceiling
            expected.append((mux, top))
    assert [(r["scenario"]["name"], r["baseline"]["name"]) for r in data["results"]] == expected
    for s in ("ct", "cg", "cget"):
        assert n[f"{s}_mux"].endswith(f" on {cluster.CLUSTER}")
        assert n[f"{s}_raw"].startswith("redis-py RedisCluster ")
    rounds = {r["scenario"]["name"]: r["scenario"]["rounds"] for r in data["results"]}
    assert rounds[n["t_mux"]] == transport.QUICK.rounds
    assert rounds[n["l_mux"]] == transport.QUICK.closed_rounds
    assert rounds[n["ct_mux"]] == transport.QUICK.rounds
    assert data["cluster"]["raw_max_connections_per_node"] >= transport.QUICK.agents
    assert data["littles_law_floor_ms"] > 0
    assert set(data["server_us_per_transition"]) == {"bulk", "pipelined"}
    assert all(us > 0 for us in data["server_us_per_transition"].values())
    assert len(data["checks"]) == 7  # 5 on standalone, 2 on Cluster
    assert [c["target"].startswith(f"on {cluster.CLUSTER}") for c in data["checks"]] == (
        [False] * 5 + [True] * 2
    )
    assert all(c["measured"] > 0 for c in data["checks"])
    assert list(data["others_cpu_percent"]) == list(transport.GROUPS)
    report = (tmp_path / "transport.md").read_text(encoding="utf-8")
    assert report.count("PASS") + report.count("**MISS**") == len(data["checks"])
    assert "Little's law" in report
    assert f"### {cluster.CLUSTER}: transitions" in report


async def test_cprofile_section_shows_the_heaviest_functions_and_every_area() -> None:
    async def toy(n: int) -> int:
        await asyncio.sleep(0)
        return int(len(orjson.dumps(list(range(n)))) > 0)

    made = await cprofile_rounds(calls_round(toy, 20, concurrent=True), rounds=2)
    assert (made.ops, made.rounds) == (40, 2)
    text = cprofile_section(made.stats, "toy", ops=made.ops, seconds=made.seconds, rounds=2, top=5)
    assert text.startswith("### Where the time goes: toy\n")
    assert "2 round(s) after a warm-up: 40 operations in " in text
    assert "read the shares, not the absolute figures" in text
    functions = text.split("| function | calls | own ms | cumulative ms |")[1].split("\n\n")[0]
    assert functions.count("\n| `") == 5
    rows = [line for line in text.splitlines() if line.startswith("| ") and "% |" in line]
    assert [r.split(" | ")[0][2:] for r in rows][: len(PROFILE_AREAS)] == list(PROFILE_AREAS)
    shares = [float(r.split(" | ")[2].rstrip("%")) for r in rows]
    assert math.isclose(sum(shares), 100, abs_tol=0.1 * len(shares))


def test_profile_area_sorts_functions_by_package() -> None:
    site = "/v/lib/python3.11/site-packages"
    assert profile_area(("/r/zen_async/store/mux.py", 1, "call")) == "zen_async/store/mux.py"
    assert profile_area(("/r/zen_async/store/keyspace.py", 1, "get")) == "zen_async/store (other)"
    assert profile_area(("/r/zen_async/agents/state.py", 1, "f")) == "zen_async/agents"
    assert profile_area(("/r/zen_async/metrics/service.py", 1, "f")) == "zen_async/metrics"
    assert profile_area(("/r/zen_async/degraded/mode.py", 1, "f")) == "zen_async/degraded"
    assert profile_area(("/r/zen_async/events/log.py", 1, "f")) == "other zen_async"
    assert profile_area((f"{site}/redis/asyncio/client.py", 1, "f")) == "redis-py"
    assert profile_area(("/u/lib/python3.11/asyncio/tasks.py", 1, "f")) == "asyncio/event loop"
    assert profile_area((f"{site}/pydantic/main.py", 1, "f")) == "pydantic"
    assert profile_area(("~", 0, "<method 'gets' of 'hiredis.Reader' objects>")) == (
        "hiredis/C builtins"
    )
    assert profile_area(("~", 0, "<built-in method orjson.dumps>")) == "orjson"
    assert profile_area(("~", 0, "<method 'poll' of 'select.epoll' objects>")) == IDLE_AREA
    assert profile_area(("/u/lib/python3.11/uuid.py", 1, "uuid4")) == "other"


def test_transport_profiles_the_scenario_of_each_missed_standalone_target_once() -> None:
    m = Measure("m", 1000.0, 1.0, 1.0, 1, 1)
    three = [Comparison(m, m)] * 3
    checks = transport._checks(
        transport.FULL,
        transitions=three,
        ceiling=m,
        get_agent=three,
        single=three,
        loop=m,
        floor_ms=1.0,
        on_cluster=transport.OnCluster(three, three, three, 1),
    )
    missed = [dataclasses.replace(c, measured=0.0 if c.kind == "min" else math.inf) for c in checks]
    assert all(not c.passed for c in missed)
    assert transport.missed_scenarios(missed) == ["t_mux", "g_mux", "s_mux", "l_mux"]
    assert transport.missed_scenarios(missed[1:2] + missed[5:]) == ["t_mux"]
    passed = [dataclasses.replace(c, measured=c.limit) for c in checks]
    assert transport.missed_scenarios(passed) == []
