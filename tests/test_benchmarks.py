"""Smoke runs of the benchmarks in quick mode, so the harness cannot rot. No timing asserts."""

from __future__ import annotations

from benchmarks import core
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
