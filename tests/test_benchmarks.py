"""Smoke runs of the benchmarks in quick mode, so the harness cannot rot. No timing asserts."""

from __future__ import annotations

from benchmarks import agents, core, events
from benchmarks._harness import table
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
    assert len(outcome.comparisons) == 21  # every scenario against each of its baselines
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
