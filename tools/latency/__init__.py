"""Latency-aware selection: candidates, the latency database, `lucida profile`, `predict` and `select`."""
