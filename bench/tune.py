"""Single-seed tuning runs of a preset, in this process: the real apps, no Flower engine.

    python -m bench.tune --preset default --set dp-lr=0.5 [--set ...]

The coordinator's ServerApp and the clients' ClientApp run here over an in-process Grid
(simulations/inprocess.py): the same rounds, DP-SGD, ledgers and teacher updates as
``fedistill simulate``, without Ray, so a variant takes about a minute on 2 cores. Each
run appends a row (the overrides, the teacher per round, the final ensemble) to
``bench/results/tuning-PRESET.json``, which docs/RESULTS.md shows as the tuning
table of the preset. Rows are single runs: differences under about 1.5 points are noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from flwr.app import Context, RecordDict

from simulations.cli_common import resolve_config
from simulations.inprocess import (
    InProcessGrid,
    restore_task_identity,
    set_task_identity,
)
from simulations.runner import write_node_policies

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"


def flower_component(name: str):  # noqa: ANN201 - a ServerApp or a ClientApp
    """The app pyproject.toml names (``serverapp`` / ``clientapp``), loaded as Flower does."""
    import importlib
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as fh:
        ref = tomllib.load(fh)["tool"]["flwr"]["app"]["components"][name]
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def tune(preset: str, sets: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cfg = resolve_config(preset, None, sets, out)
    write_node_policies(cfg, out)
    saved = set_task_identity(1)
    start = time.monotonic()
    try:
        grid = InProcessGrid(flower_component("clientapp"), cfg.to_run_config(),
                             cfg.num_clients)
        flower_component("serverapp")(grid, Context(run_id=1, node_id=0, node_config={},
                                                    state=RecordDict(),
                                                    run_config=cfg.to_run_config()))
    finally:
        restore_task_identity(saved)
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    name = records[0].get("metric", "accuracy")  # forecasts: mse
    return {"sets": sets, "seed": cfg.seed, "metric": name,
            "teacher": [r[f"teacher_{name}"] for r in records],
            "ensemble": records[-1].get(f"ensemble_{name}"),
            "students": records[-1].get(f"student_{name}_mean"),
            "epsilon_max": records[-1].get("epsilon_max"),
            "seconds": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "runs" / "tune"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    row = tune(args.preset, args.sets, Path(args.out))
    print(json.dumps(row))
    path = RESULTS / f"tuning-{args.preset}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in rows if r["sets"] != row["sets"]] + [row]
    path.write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
