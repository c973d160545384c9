"""Benchmarks for jaxprune (run as modules, e.g. ``python -m benchmarks.pruning_step``)."""
