"""Baseline servers the benchmarks compare against."""
