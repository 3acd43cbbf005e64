"""Benchmarks and soaks runnable as scripts (``python bench/<name>.py``); importable so tests can
share their core (``from bench.chaos_soak import run``)."""
