#!/usr/bin/env bash
# Benchmark 3's baselines (bench/privacy_utility.py) on a borrowed GPU machine, under
# a hard 8-minute cap, results in $OUT.
#
# That machine gets the repo and nothing else: no venv, no registry, no data cache; its
# python3 has torch (CUDA), numpy, scipy, tokenizers, rich and matplotlib but not opacus
# or flwr (the script needs no flwr). So, once, on the machine that sends the repo:
#
#     bash bench/run_privacy_utility.sh --prepare
#
# puts the opacus wheel, the rotten-tomatoes file and the SST-2 folder into .bench-carry/
# (ignored by git); then name .bench-carry in the device run's `carry` and run
#
#     bash bench/run_privacy_utility.sh
#
# there. It writes $OUT/privacy_utility.json (after every finished cell, so a timeout
# still returns the cells done) and $OUT/privacy_utility.log; copy the JSON to
# bench/results/, run `python -m bench.privacy_utility --collect` (re-reads the
# FD rows) and `make bench-doc`.
# Environment: PYTHON (default python3), OUT (default runs/privacy-utility), PU_ARGS
# (extra arguments, e.g. "--quick"). Default split: 6 CUDA workers + 9 CPU workers.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.bench-carry

if [[ "${1:-}" == "--prepare" ]]; then
    bash bench/run_gpu.sh --prepare  # opacus wheel + rotten-tomatoes file
    shared="${FEDISTILL_SHARED_DATA:-$(dirname "$PWD")/shared/data}"
    [[ -d "$shared/sst2" ]] || { echo "missing $shared/sst2 (set FEDISTILL_SHARED_DATA)" >&2; exit 1; }
    mkdir -p "$CARRY/shared/sst2"
    cp "$shared"/sst2/stsa.binary.* "$CARRY/shared/sst2/"
    chmod -R u+w "$CARRY/shared"
    du -sh "$CARRY"
    exit 0
fi

PY="${PYTHON:-python3}"
OUT="${OUT:-runs/privacy-utility}"
mkdir -p "$OUT"
if ! "$PY" -c "import opacus" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fedistill-site "$CARRY"/wheels/*.whl
    export PYTHONPATH="/tmp/fedistill-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[[ -f "$CARRY/data/rotten_tomatoes_corpus_full.csv.bz2" ]] && export FEDISTILL_DATA_DIR="$PWD/$CARRY/data"
[[ -d "$CARRY/shared/sst2" ]] && export FEDISTILL_SHARED_DATA="$PWD/$CARRY/shared"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# 420 s: the script stops waiting, terminates its workers and saves; 470 s: hard stop.
# shellcheck disable=SC2086
timeout 470 "$PY" -m bench.privacy_utility --device mixed --workers 15 \
    --cuda-workers "${CUDA_WORKERS:-6}" --budget-s 420 --out "$OUT/privacy_utility.json" \
    ${PU_ARGS:-} 2>&1 | tee "$OUT/privacy_utility.log"
