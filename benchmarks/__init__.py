"""Benchmarks: `python main.py bench <scenario> ...` (see benchmarks/cli.py)."""
