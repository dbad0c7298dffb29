"""Benchmarks: each runs the project and a bare baseline doing the same work, in one run."""
