"""DP fine-tuning of the pretrained encoder: ghost clipping vs a non-private step.

    python -m bench.gpu_encoder --device cuda            # on a lent GPU
    python -m bench.gpu_encoder --device cpu --quick     # a smoke run of the path

Times ``--steps`` optimizer steps of the ``encoder`` family (all-MiniLM-L6-v2, every
layer but the embedding tables) at logical batch ``--batch`` on Rotten Tomatoes' private
role: once without DP (AdamW), once through the project's ``dp_train`` with Opacus'
ghost clipping, and prints the throughput ratio and the peak memory of each side by
side, measured in the same process. ``--backbone hf:DIR`` runs it on another checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.config import FedConfig
from common.models import ModelConfig, build_model
from common.privacy.secrets import fresh_seeds
from common.task import prepare_task, task_for
from common.training import dp_train

ROOT = Path(__file__).resolve().parent.parent


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def non_private(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                batch: int, device: torch.device) -> float:
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    start = time.perf_counter()
    for step in range(steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % len(x)
        loss = torch.nn.functional.cross_entropy(model(x[rows].to(device)), y[rows].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _peak(device)
    return time.perf_counter() - start


def private(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
            batch: int, device: torch.device) -> float:
    start = time.perf_counter()
    dp_train(model, x, y, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
             steps=steps, lr=5e-4, optimizer="adamw", trainable="all",
             grad_sample_mode="ghost", max_physical_batch_size=batch, device=device,
             seeds=fresh_seeds())
    _peak(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="4 steps of batch 16")
    parser.add_argument("--out", default="runs/gpu/gpu_encoder.json")
    args = parser.parse_args()
    batch, steps = (16, 4) if args.quick else (args.batch, args.steps)
    device = torch.device(args.device)
    cfg = FedConfig(backbone=args.backbone, max_len=64, students="encoder",
                    teacher_family="encoder")
    task = task_for(cfg, prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len),
                    "encoder")
    x, y = task.private_x[: batch * steps * 2], task.private_y[: batch * steps * 2]
    row = {"device": str(device), "backbone": args.backbone, "batch": batch, "steps": steps}
    for name, run in (("non_private", non_private), ("dp_ghost", private)):
        model = build_model(ModelConfig(family="encoder", num_classes=task.num_classes,
                                        backbone=args.backbone))
        _peak_reset(device)
        seconds = run(model, x, y, steps=steps, batch=batch, device=device)
        row[name] = {"seconds": seconds, "examples_per_s": steps * batch / seconds,
                     "peak_mib": _peak(device)}
        print(name, json.dumps(row[name]), flush=True)
    row["dp_over_non_private_time"] = row["dp_ghost"]["seconds"] / row["non_private"]["seconds"]
    print(json.dumps(row, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
