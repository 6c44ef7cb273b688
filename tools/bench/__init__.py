"""Benchmarks (`lucida bench ...`): ours against the limit or a peer in one run, as p50/p90/p99."""
