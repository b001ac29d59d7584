"""Benchmark and results scripts (run them as ``python -m bench.NAME`` from the checkout;
see docs/BENCHMARKS.md).

The folder is ``bench`` and not ``benchmarks`` because Opacus 1.6 installs a top-level
package named ``benchmarks`` into site-packages, which would shadow it.
"""
