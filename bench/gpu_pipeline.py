"""A client's and the coordinator's training path on a GPU, without Flower (not a test).

Flower and Ray are not on the borrowed GPU machine, so this drives the same functions
the apps call (``common/training``: supervised teacher pre-training, distillation on the
public batch, Opacus DP-SGD with hooks and ghost clipping, prediction) with
``device="auto"`` and checks that every model really ran on CUDA, that DP-SGD took the
planned steps, and that the outputs are finite probabilities. It records timings.

    python -m bench.gpu_pipeline --device auto --out runs/gpu/gpu_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common.config import FedConfig
from common.device import resolve_device
from common.distill.losses import soften
from common.metrics import accuracy
from common.models import ModelConfig, build_model
from common.privacy.secrets import fresh_seeds
from common.task import client_partitions, prepare_task
from common.training import (
    distill,
    dp_train,
    evaluate_accuracy,
    predict_logits,
    train_supervised,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/gpu/gpu_pipeline.json")
    parser.add_argument("--teacher-epochs", type=int, default=FedConfig().teacher_epochs)
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = FedConfig()
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    part = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                             cfg.num_clients, cfg.partition, cfg.alpha)[0]
    x, y = task.private_x[part], task.private_y[part]
    rows: list[dict] = []

    def timed(name: str, fn) -> object:
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append({"step": name, "seconds": round(time.perf_counter() - start, 3)})
        print(rows[-1], flush=True)
        return result

    teacher = build_model(ModelConfig(family="transformer", size=cfg.teacher_size,
                                      vocab_size=task.vocab_size, num_classes=2,
                                      max_len=cfg.max_len))
    timed("teacher pre-training", lambda: train_supervised(
        teacher, task.teacher_x, task.teacher_y, epochs=args.teacher_epochs, lr=cfg.teacher_lr,
        device=device))
    on_device = {"teacher": next(teacher.parameters()).device.type}
    public = task.public_x[:500] if device.type == "cpu" else task.public_x[:2000]
    knowledge = soften(predict_logits(teacher, public, device=device), cfg.temperature)
    results = {"teacher_accuracy": evaluate_accuracy(teacher, task.test_x, task.test_y,
                                                     device=device)}
    for family in ("transformer", "lstm", "cnn"):
        for mode, trainable in (("hooks", "all"), ("ghost", "all"), ("hooks", "head")):
            student = build_model(ModelConfig(family=family, size="tiny",
                                              vocab_size=task.vocab_size, num_classes=2,
                                              max_len=cfg.max_len))
            timed(f"{family} distill", lambda s=student: distill(
                s, public, knowledge, temperature=cfg.temperature, epochs=2,
                lr=cfg.student_distill_lr, device=device))
            result = timed(f"{family} dp-sgd {mode}/{trainable}", lambda s=student, m=mode,
                           t=trainable: dp_train(
                s, x, y, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=128,
                steps=20, lr=cfg.dp_lr, trainable=t, grad_sample_mode=m, device=device,
                seeds=fresh_seeds()))
            probs = soften(predict_logits(student, task.test_x, device=device), 1.0)
            key = f"{family}/{mode}/{trainable}"
            on_device[key] = next(student.parameters()).device.type
            results[key] = {
                "steps": result.steps, "finite": bool(torch.isfinite(probs).all()),
                "rows_sum_to_1": bool(torch.allclose(probs.sum(1), torch.ones(len(probs)))),
                "test_accuracy": accuracy(task.test_y.numpy(), probs.cpu().numpy()),
            }
    report = {"device": str(device), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "on_device": on_device, "results": results, "timings": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    ok = all(v == device.type for v in on_device.values()) and all(
        r["finite"] and r["rows_sum_to_1"] and r["steps"] == 20
        for k, r in results.items() if isinstance(r, dict))
    print("PIPELINE OK" if ok else "PIPELINE FAILED", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
