#!/usr/bin/env bash
# Benchmark 6 on a GPU machine: bench/gpu.py under a hard 8-minute cap, results in $OUT.
#
# The GPU machine gets the repo and nothing else: no venv, no registry, no data cache. It
# has its own python3 with torch (CUDA), numpy, scipy, tokenizers and matplotlib, but not
# opacus, and not the rotten-tomatoes file. So, once, on the machine that sends the repo:
#
#     bash bench/run_gpu.sh --prepare
#
# copies the data file and downloads the opacus wheel into .bench-carry/ (ignored by git
# through .git/info/exclude); then name .bench-carry in the device run's `carry` and run
#
#     bash bench/run_gpu.sh
#
# there. It writes $OUT/dp_cost_gpu.json and $OUT/gpu.log; copy the JSON to
# bench/results/ and run `make bench-doc` to put it in docs/BENCHMARKS.md.
# Environment: PYTHON (default python3), OUT (default runs/gpu), DEVICE (default cuda),
# GPU_ARGS (extra arguments for gpu.py, e.g. "--quick").
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.bench-carry
OPACUS=opacus==1.6.0

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$CARRY/data" "$CARRY/wheels"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    src="${FEDISTILL_DATA_DIR:-$HOME/.cache/fedistill}/rotten_tomatoes_corpus_full.csv.bz2"
    [[ -f "$src" ]] || { echo "missing $src: run 'python -m common.data.fetch' first" >&2; exit 1; }
    cp "$src" "$CARRY/data/"
    ls "$CARRY"/wheels/opacus-*.whl >/dev/null 2>&1 || "${PYTHON:-.venv/bin/python}" -m pip \
        download --quiet --no-deps --only-binary=:all: -d "$CARRY/wheels" "$OPACUS"
    # The encoder benchmark: transformers (and what it adds to this venv), and MiniLM
    # saved in float16 (45 MB: the float32 checkpoint alone is over the 64 MiB carry).
    "${PYTHON:-.venv/bin/python}" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$CARRY/wheels" "transformers==5.24.0" "safetensors==0.8.0" "regex"
    "${PYTHON:-.venv/bin/python}" -c "
import sys, torch
from transformers import AutoModel, AutoTokenizer
from common.models.pretrained import resolve_backbone
src = resolve_backbone('minilm').source
AutoModel.from_pretrained(src, dtype=torch.float16).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(src).save_pretrained(sys.argv[1])" "$CARRY/minilm-fp16"
    du -sh "$CARRY"
    exit 0
fi

PY="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"
if ! "$PY" -c "import opacus" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fedistill-site "$CARRY"/wheels/*.whl
    export PYTHONPATH="/tmp/fedistill-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The package itself: an offline editable install, else the checkout on the path (the
# scripts run as `python -m bench.NAME` from the checkout, which puts it first anyway).
if ! (cd /tmp && "$PY" -c "import common.task" 2>/dev/null); then
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
        || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -f "$CARRY/data/rotten_tomatoes_corpus_full.csv.bz2" ]]; then
    export FEDISTILL_DATA_DIR="$PWD/$CARRY/data"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# The apps' training path (teacher, distillation, DP-SGD hooks/ghost, prediction) on CUDA.
timeout 150 "$PY" -m bench.gpu_pipeline --device "${DEVICE:-cuda}" \
    --out "$OUT/gpu_pipeline.json" 2>&1 | tee "$OUT/gpu.log" || echo "pipeline check failed"
# 470 s hard stop: the issue asks for under 8 minutes end to end; gpu.py's own budget
# (420 s) skips parts before this, and it saves its JSON after every part.
# shellcheck disable=SC2086
timeout 470 "$PY" -m bench.gpu --device "${DEVICE:-cuda}" \
    --out "$OUT/dp_cost_gpu.json" ${GPU_ARGS:-} 2>&1 | tee -a "$OUT/gpu.log"
# DP full fine-tuning of the pretrained encoder with ghost clipping vs non-private.
if [[ -d "$CARRY/minilm-fp16" ]]; then
    timeout 240 "$PY" -m bench.gpu_encoder --device "${DEVICE:-cuda}" \
        --backbone "hf:$PWD/$CARRY/minilm-fp16" --out "$OUT/gpu_encoder.json" 2>&1 \
        | tee -a "$OUT/gpu.log" || echo "encoder benchmark failed"
fi
