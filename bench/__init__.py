"""Benchmarks of mape-k (measurements, not tests): `python -m bench [--append FILE]`.

Each module measures one claim of docs/benchmarks.md in a fresh process and prints a
markdown table (measured value, target, PASS/MISS). Nothing here is imported by src/.
"""
