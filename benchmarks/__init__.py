"""Benchmark scripts (run them as ``python benchmarks/NAME.py``; see docs/BENCHMARKS.md).

This file makes ``benchmarks`` a regular package on purpose: Opacus 1.6 installs a
top-level package of the same name into site-packages, which would otherwise win over
this folder (a namespace package) in ``import benchmarks.dp_cost``.
"""
