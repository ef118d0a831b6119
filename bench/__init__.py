"""Benchmarks that print figures beside their baselines (`python -m bench [--quick]`); they never gate CI."""
