"""Experiment configurations: Python files with a ``get_config()`` returning a ConfigDict."""
