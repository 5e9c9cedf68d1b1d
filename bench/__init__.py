"""Benchmarks: each `bench_*.py` measures the platform against a baseline run in the same invocation."""
