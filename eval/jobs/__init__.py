"""Benchmark jobs: run strategies against a server (or in-process) and score the answers."""
