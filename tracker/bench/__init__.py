"""Benchmarks: ``tracker bench ...``. Each prints its figures beside a baseline measured in the
same run, and writes them as JSON."""
