"""Adapters: every outside client (Redis, the broker, Prometheus files, logs) in one place."""
