"""A smoke run of the memory benchmark in quick mode, so it cannot rot. No timing asserts."""

from __future__ import annotations

import importlib.util

from benchmarks import memory
from zen_async.testing.deployments import Target


async def test_memory_benchmark_quick_mode_measures_every_part(standalone: Target) -> None:
    results = await memory.run(standalone.group.url, quick=True)  # type: ignore[union-attr]
    store = results["store"]
    assert store.scenario.ops_per_round == store.baseline.ops_per_round == 2 * 500
    searches = results["searches"]
    assert [c.scenario.name for c in searches] == [
        "search_memories top-10 of 1,000",
        "search_memories top-10 of 5,000",
    ]
    for c in [store, *searches]:
        assert c.scenario.rounds == c.baseline.rounds
        assert c.ratio > 0
    assert [row.rows for row in results["crossover"]] == [1000, 4000]
    has_extra = importlib.util.find_spec("sentence_transformers") is not None
    assert (results["embedding"] is not None) == has_extra
    text = memory.report(results)
    assert text.count("| PASS |") + text.count("| MISS |") == len(searches)
    assert "where scans should leave the loop" in text
