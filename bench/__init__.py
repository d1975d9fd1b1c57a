"""Benchmarks: `.venv/bin/python -m bench` runs them all, `-m bench.NAME` one."""
