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
	$(PY) -m common.data.fetch --backbones none
	touch $(STAMP)

# Each target fetches the encoder it uses (once; cached): the demo MPNet, the tests MiniLM.
demo: $(STAMP)
	$(PY) -m common.data.fetch --backbones mpnet
	$(VENV)/bin/fedistill simulate --preset default

quick: $(STAMP)
	$(VENV)/bin/fedistill simulate --preset quick

test: $(STAMP)
	$(PY) -m common.data.fetch --backbones minilm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q --durations=25

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# Benchmarks (docs/BENCHMARKS.md): `make bench` reruns the CPU benchmarks (a few minutes)
# and regenerates the page and its plots; `make bench-doc` only regenerates them from
# bench/results/*.json. The GPU benchmark runs elsewhere: bench/run_gpu.sh.
# `make bench-privacy-utility` reruns benchmark 3's baselines (24 cells; long on a small
# CPU machine: bench/run_privacy_utility.sh runs them on a GPU machine) and the page;
# its federated-distillation cells come from bench/results.py (see docs/BENCHMARKS.md).
# `make bench-scale` reruns benchmark 4 (real simulations of 10, 100 and 1000 clients; about
# an hour or more on a shared 2-core machine) and the page.
.PHONY: bench bench-doc bench-privacy-utility bench-scale

bench: $(STAMP)
	$(PY) -m bench.dp_cost
	$(PY) -m bench.communication
	$(PY) -m bench.render

bench-doc: $(STAMP)
	$(PY) -m bench.render

bench-privacy-utility: $(STAMP)
	$(PY) -m bench.privacy_utility
	$(PY) -m bench.render

bench-scale: $(STAMP)
	$(PY) -m bench.scale
	$(PY) -m bench.render
