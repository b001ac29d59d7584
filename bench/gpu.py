"""Benchmark 6: benchmark 1 (DP training cost) on CUDA, plus a small privacy-utility check.

    python -m bench.gpu                      # CUDA when present; < 8 minutes end to end
    python -m bench.gpu --device cpu --quick # a smoke run of the same code path

Written for a short run on a borrowed GPU machine (``bench/run_gpu.sh``), so it
must end in a few minutes whatever happens: every part is checked against a wall-clock
budget (``--budget-s``) before it starts, parts that do not fit are skipped and marked so
in the output, and the JSON is rewritten after every part, so a run killed from outside
still leaves what it measured.

Part 1 is :mod:`bench.dp_cost` unchanged (same trainers, same alternation, same
rows), at batch sizes that also show where the GPU stops being launch-bound; peak memory
is ``torch.cuda.max_memory_allocated``. Part 2 DP-trains the default student
(Transformer, tiny) from scratch on the full private set at ε ∈ {1, 8, ∞} with the
project's ``dp_train`` and reports test accuracy: centralized DP-SGD only, a sanity check
that the numbers move the right way on the GPU, not benchmark 3's grid (which compares
federated distillation with the baselines and is another script).

Output: ``bench/results/dp_cost_gpu.json``, the same form as ``dp_cost.json`` plus a
``privacy_utility`` section.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.dp_cost import (
    DEFAULT_STUDENT,
    FAMILIES,
    MAX_GRAD_NORM,
    MODES,
    NOISE_MULTIPLIER,
    RESULTS,
    TABLE_HEADER,
    evaluate_target,
    run_dp_cost,
    student_config,
)
from common.environment import environment, print_environment

ROOT = Path(__file__).resolve().parent.parent

EPSILONS: tuple[float, ...] = (1.0, 8.0, math.inf)
DELTA = 1e-5

# Full run (CUDA) and the CPU smoke run (--quick): same code, smaller numbers.
FULL = {"families": FAMILIES, "batches": (64, 256, 1024), "repeats": 5, "steps": 10,
        "memory_steps": 3, "utility_steps": 800, "utility_batch": 256, "utility_rows": 0}
QUICK = {"families": ("transformer",), "batches": (16,), "repeats": 1, "steps": 1,
         "memory_steps": 1, "utility_steps": 4, "utility_batch": 32, "utility_rows": 256}


def privacy_utility(*, device: torch.device, steps: int, batch: int, rows: int, mode: str,
                    optimizer: str, lr: float, deadline: float, seed: int = 0,
                    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
                    ) -> list[dict[str, Any]]:
    """Test accuracy of the default student DP-trained at each ε (∞: clipping, no noise).

    σ is calibrated once for the whole run (``calibrate_noise_multiplier``), as the
    project does; ε = ∞ keeps clipping and the optimizer so only the noise differs. From
    scratch, plain SGD at the run config's dp-lr barely leaves the majority class within
    a few hundred steps (checked on CPU), so AdamW is the default here. An ε whose turn
    comes after ``deadline`` (a ``perf_counter`` time) is skipped.
    """
    from common.models import build_model
    from common.privacy.accounting import calibrate_noise_multiplier
    from common.privacy.secrets import fresh_seeds
    from common.task import prepare_task
    from common.training.dp import dp_train, steps_per_epoch
    from common.training.loops import evaluate_accuracy

    task = prepare_task("rotten-tomatoes", seed, DEFAULT_STUDENT["vocab_size"],
                        DEFAULT_STUDENT["max_len"])
    x, y = task.private_x, task.private_y
    if rows:
        x, y = x[:rows], y[:rows]
    q, _ = steps_per_epoch(len(x), batch)
    out = []
    for eps in EPSILONS:
        t0 = time.perf_counter()
        if t0 > deadline:
            out.append({"epsilon": None if math.isinf(eps) else eps, "skipped": "budget"})
            continue
        sigma = 0.0 if math.isinf(eps) else calibrate_noise_multiplier(
            target_epsilon=eps, delta=DELTA, sample_rate=q, steps=steps)
        torch.manual_seed(seed)
        model = build_model(student_config(DEFAULT_STUDENT["family"], task.num_classes))
        dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=MAX_GRAD_NORM,
                 expected_batch_size=batch, steps=steps, lr=lr, optimizer=optimizer,
                 grad_sample_mode=mode,
                 max_physical_batch_size=max(batch * 2, 256), device=device,
                 seeds=fresh_seeds())
        acc = evaluate_accuracy(model, task.test_x, task.test_y, device=device)
        row = {"epsilon": None if math.isinf(eps) else eps, "delta": DELTA,
               "noise_multiplier": sigma, "sample_rate": q, "steps": steps,
               "batch_size": batch, "train_rows": len(x), "grad_sample_mode": mode,
               "optimizer": f"{optimizer} lr={lr}",
               "test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 2)}
        out.append(row)
        on_row(row)
        print(f"  ε={'∞' if math.isinf(eps) else eps:<4} σ={sigma:.3f} steps={steps} "
              f"test acc={acc:.3f} ({row['seconds']:.1f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (for CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip parts that would start after this many seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--utility-mode", default="ghost", choices=["hooks", "ghost"])
    parser.add_argument("--utility-optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--utility-lr", type=float, default=2e-3)
    parser.add_argument("--skip-utility", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "dp_cost_gpu.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    from common.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 throughout, as on the CPU
    size = QUICK if args.quick else FULL
    env = environment(device)
    print_environment(env)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "dp_cost",
        "command": " ".join(["python -m bench.gpu", *(argv or sys.argv[1:])]),
        "environment": env,
        "settings": {"student": DEFAULT_STUDENT, "families": list(size["families"]),
                     "batches": list(size["batches"]), "repeats": size["repeats"],
                     "steps_per_block": size["steps"], "memory_steps": size["memory_steps"],
                     "noise_multiplier": NOISE_MULTIPLIER, "max_grad_norm": MAX_GRAD_NORM,
                     "quick": args.quick, "budget_s": args.budget_s,
                     "memory_method": ("cuda max_memory_allocated" if device.type == "cuda"
                                       else "subprocess VmHWM - RSS before build")},
        "rows": [], "skipped": [],
    }

    def save() -> None:
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(result, indent=1) + "\n")

    from bench.dp_cost import load_token_pool

    x, y = load_token_pool()
    print(TABLE_HEADER, flush=True)
    for family in size["families"]:
        for batch in size["batches"]:
            if time.perf_counter() - start > args.budget_s * 0.6:
                result["skipped"].append(f"dp_cost {family} B={batch} (budget)")
                continue
            result["rows"] += run_dp_cost(
                device=device, families=(family,), batches=(batch,), repeats=size["repeats"],
                steps=size["steps"], memory_steps=size["memory_steps"], threads=args.threads,
                x=x, y=y, log=lambda s: print(s, flush=True))
            result["target"] = evaluate_target(result["rows"], device)
            save()
    if args.skip_utility:
        result["skipped"].append("privacy_utility (--skip-utility)")
    elif time.perf_counter() - start > args.budget_s * 0.75:
        result["skipped"].append("privacy_utility (budget)")
    else:
        print("privacy-utility check (default student, centralized DP-SGD from scratch):",
              flush=True)
        result["privacy_utility"] = []

        def keep(row: dict[str, Any]) -> None:
            result["privacy_utility"].append(row)
            save()

        rows = privacy_utility(
            device=device, steps=size["utility_steps"], batch=size["utility_batch"],
            rows=size["utility_rows"], mode=args.utility_mode,
            optimizer=args.utility_optimizer, lr=args.utility_lr,
            deadline=start + args.budget_s, on_row=keep)
        result["privacy_utility"] = rows
        result["skipped"] += [f"privacy_utility ε={r['epsilon']} (budget)"
                              for r in rows if "skipped" in r]
    if result["rows"]:
        result["target"] = evaluate_target(result["rows"], device)
    save()
    print(f"modes: {', '.join(MODES)}; skipped: {result['skipped'] or 'nothing'}")
    print(f"wrote {out} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
