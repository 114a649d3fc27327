"""Benchmarks from issue 3: `python -m ops.bench.run [names...]` (the Makefile's `make bench`).

Every figure is a ratio against a baseline measured in the same run on the same
machine, because absolute times on shared machines drift.
"""
