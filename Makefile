# The two commands of the README: `make demo` and `make test`. Both create .venv when it
# is missing. torch is installed first, on its own, so that a CPU-only machine gets the
# CPU build (a bare `torch` requirement would pull a multi-GB CUDA build). On a GPU
# machine: `make demo TORCH=torch` (PyPI's default torch wheel is a CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedistill-installed

.PHONY: demo test quick lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m common.data.fetch
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedistill simulate --preset default

quick: $(STAMP)
	$(VENV)/bin/fedistill simulate --preset quick

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# Benchmarks (docs/BENCHMARKS.md): `make bench` reruns the CPU benchmarks (a few minutes)
# and regenerates the page and its plots; `make bench-doc` only regenerates them from
# benchmarks/results/*.json. The GPU benchmark runs elsewhere: benchmarks/run_gpu.sh.
# `make bench-privacy-utility` reruns benchmark 3's baselines (24 cells; long on a small
# CPU machine: benchmarks/run_privacy_utility.sh runs them on a GPU machine) and the page;
# its federated-distillation cells come from benchmarks/results.py (see docs/BENCHMARKS.md).
# `make bench-scale` reruns benchmark 4 (real simulations of 10, 100 and 1000 clients; about
# an hour or more on a shared 2-core machine) and the page.
.PHONY: bench bench-doc bench-privacy-utility bench-scale

bench: $(STAMP)
	$(PY) benchmarks/dp_cost.py
	$(PY) benchmarks/communication.py
	$(PY) benchmarks/render.py

bench-doc: $(STAMP)
	$(PY) benchmarks/render.py

bench-privacy-utility: $(STAMP)
	$(PY) benchmarks/privacy_utility.py
	$(PY) benchmarks/render.py

bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/render.py
