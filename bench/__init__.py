"""Benchmarks: `python -m bench.run [--quick]` measures the limits of this box and the product."""
