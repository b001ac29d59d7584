"""Data-parallel speed-up on this machine: the torchrun check (common/training/ddp.py)
with one process and with two, on a larger synthetic problem; one thread per process.

    python -m bench.ddp            # writes bench/results/ddp.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "ddp.json"
PROBLEM = ["--examples", "32768", "--dim", "256", "--hidden", "2048", "--global-batch", "2048",
           "--epochs", "1"]


def _run(world: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    module = ["-m", "common.training.ddp", "--out", str(out), *PROBLEM]
    if world == 1:
        cmd = [sys.executable, *module]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--nproc_per_node", str(world), "--master_port", "29561", *module]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
    return json.loads(out.read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one, two = (_run(w, Path(tmp) / f"w{w}.json") for w in (1, 2))
    result = {"problem": " ".join(PROBLEM), "cpu_cores": os.cpu_count(),
              "load_average_1min_after": os.getloadavg()[0],
              "seconds_1": one["seconds"], "seconds_2": two["seconds"],
              "speedup": one["seconds"] / two["seconds"],
              "final_loss_1": one["losses"][-1], "final_loss_2": two["losses"][-1],
              "max_step_loss_abs_diff": max(abs(a - b) for a, b in zip(
                  one["losses"], two["losses"], strict=True)),
              "steps": len(one["losses"])}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
