"""Benchmarks: each scenario next to its baseline, in the same run (see README)."""
