"""The benchmark suite: ``python -m bench`` writes docs/benchmarks.md.

A scenario is a module in bench/scenarios/ that yields result records; bench/report.py
renders them. Servers under test and baselines are in bench/targets.py.
"""
