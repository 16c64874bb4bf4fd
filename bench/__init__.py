"""Benchmarks: scripts printing medians, p99 and ratios (see bench/README.md). Not shipped."""
