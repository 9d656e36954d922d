"""Benchmarks: one command each, figures beside a same-run baseline (see README.md)."""
