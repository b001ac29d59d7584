"""How much can a client's DP step add to a student distilled on public data? (issue 9)

    python -m bench.dp_recipes [--seed 0] [--epsilon 8] [--quick]

In-process and side by side, on the default task's split: the coordinator's teacher is
pre-trained on its labeled set as in round 0; one student per client (the preset's
families in turn) is distilled from it on the whole public set (no ε); then each DP
recipe fine-tunes a copy of every client's student on that client's private partition
with the whole budget, and the students' test accuracy and their ensemble's (the mean of
their test probabilities, as the coordinator aggregates) are compared with the same
students before any private step. That isolates what federated distillation can pass on
to the teacher: only what the private step adds to the students' predictions.

The same functions as the pipeline (``common/training``: ``train_supervised``,
``distill``, ``dp_train`` with Opacus; ``calibrate_noise_multiplier``) and the same
partitions. Writes ``bench/results/dp_recipes.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import FedConfig
from common.distill.losses import soften
from common.metrics import accuracy
from common.models import ModelConfig, build_model
from common.privacy.accounting import calibrate_noise_multiplier
from common.privacy.secrets import fresh_seeds
from common.task import client_partitions, prepare_task
from common.training import (
    distill,
    dp_train,
    predict_logits,
    steps_per_epoch,
    train_supervised,
)
from common.training.adapters import merge_adapters
from common.training.dp import set_trainable

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Recipe:
    """One way to spend a client's whole budget on its partition."""

    name: str
    trainable: str = "head"  # head | all | adapters | embedding
    rank: int = 4  # LoRA rank (trainable = adapters)
    epochs: float = 5.0  # passes over the partition in all (5 rounds x dp-epochs 1)
    batch: int = 128  # expected logical batch (Poisson)
    lr: float = 0.1
    clip: float = 1.0
    optimizer: str = "sgd"
    epsilon_scale: float = 1.0  # x the run's ε (0 = no DP: the non-private reference)


RECIPES = (
    Recipe("default: head, 5 epochs, B 128, SGD lr 0.1, C 1"),
    Recipe("head, 15 epochs", epochs=15),
    Recipe("head, large batch B 512, lr 0.4", batch=512, lr=0.4),
    Recipe("head, small clip C 0.1, lr 1.0", clip=0.1, lr=1.0),
    Recipe("head, AdamW lr 1e-2", optimizer="adamw", lr=1e-2),
    Recipe("all layers, B 512, AdamW lr 1e-3", trainable="all", batch=512, optimizer="adamw",
           lr=1e-3),
    Recipe("head, default at ε/8", epsilon_scale=1 / 8),
    Recipe("non-private fine-tune, all layers (reference)", trainable="all", epochs=3,
           lr=2e-3, epsilon_scale=0.0),
    Recipe("non-private fine-tune, head only (reference)", trainable="head", epochs=3,
           lr=2e-3, epsilon_scale=0.0),
    Recipe("adapters r4 + head, SGD lr 0.1", trainable="adapters"),
    Recipe("adapters r4 + head, B 512, SGD lr 0.5", trainable="adapters", batch=512, lr=0.5),
    Recipe("adapters r8 + head, AdamW lr 5e-3", trainable="adapters", rank=8,
           optimizer="adamw", lr=5e-3),
    Recipe("non-private fine-tune, adapters r4 + head (reference)", trainable="adapters",
           epochs=3, lr=2e-3, epsilon_scale=0.0),
    Recipe("embedding + head, AdamW lr 2e-3", trainable="embedding", optimizer="adamw",
           lr=2e-3),
    Recipe("embedding + head, B 512, SGD lr 2", trainable="embedding", batch=512, lr=2.0),
    Recipe("non-private fine-tune, embedding + head (reference)", trainable="embedding",
           epochs=3, lr=2e-3, epsilon_scale=0.0),
    Recipe("embedding + head, B 512, SGD lr 4", trainable="embedding", batch=512, lr=4.0),
    Recipe("embedding + head, B 512, 10 epochs, SGD lr 2", trainable="embedding", batch=512,
           lr=2.0, epochs=10),
    Recipe("embedding + head, full batch, SGD lr 2", trainable="embedding", batch=4096,
           lr=2.0),
    Recipe("embedding + head, B 512, SGD lr 2, at ε/8", trainable="embedding", batch=512,
           lr=2.0, epsilon_scale=1 / 8),
    Recipe("embedding + head, B 512, SGD lr 0.5, at ε/8", trainable="embedding", batch=512,
           lr=0.5, epsilon_scale=1 / 8),
    Recipe("embedding + head, B 512, SGD lr 0.5", trainable="embedding", batch=512, lr=0.5),
)


def _student(cfg: FedConfig, task: Any, family: str) -> torch.nn.Module:
    return build_model(ModelConfig(family=family, size=cfg.student_size,
                                   vocab_size=task.vocab_size, num_classes=task.num_classes,
                                   max_len=cfg.max_len))


def _distilled_students(cfg: FedConfig, task: Any, epochs: int) -> list[torch.nn.Module]:
    """Round 0 teacher, then one distilled student per family (public data only)."""
    torch.manual_seed(cfg.seed)
    teacher = build_model(ModelConfig(family=cfg.teacher_family, size=cfg.teacher_size,
                                      vocab_size=task.vocab_size,
                                      num_classes=task.num_classes, max_len=cfg.max_len))
    train_supervised(teacher, task.teacher_x, task.teacher_y, epochs=cfg.teacher_epochs,
                     lr=cfg.teacher_lr, device=CPU, seed=cfg.seed)
    target = soften(predict_logits(teacher, task.public_x, device=CPU), cfg.temperature)
    students = {}
    for family in cfg.student_families:
        student = _student(cfg, task, family)
        distill(student, task.public_x, target, temperature=cfg.temperature, epochs=epochs,
                lr=cfg.student_distill_lr, device=CPU, seed=cfg.seed)
        students[family] = student
    return [students[cfg.student_for(k)] for k in range(cfg.num_clients)]


def _fine_tune(student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
               cfg: FedConfig, seed: int) -> torch.nn.Module:
    model = copy.deepcopy(student)
    if recipe.epsilon_scale == 0:  # the same trainable set as the DP recipe, without noise
        set_trainable(model, recipe.trainable, recipe.rank)
        train_supervised(model, x, y, epochs=int(recipe.epochs), lr=recipe.lr,
                         batch_size=recipe.batch, device=CPU, seed=seed)
        merge_adapters(model)
        return model
    batch = min(recipe.batch, len(x))
    q, per_epoch = steps_per_epoch(len(x), batch)
    steps = max(1, math.ceil(recipe.epochs * per_epoch))
    sigma = calibrate_noise_multiplier(target_epsilon=cfg.epsilon * recipe.epsilon_scale,
                                       delta=cfg.delta, sample_rate=q, steps=steps,
                                       accountant=cfg.accountant)
    dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=recipe.clip,
             expected_batch_size=batch, steps=steps, lr=recipe.lr, optimizer=recipe.optimizer,
             trainable=recipe.trainable, grad_sample_mode="ghost",
             max_physical_batch_size=cfg.max_physical_batch_size, device=CPU,
             seeds=fresh_seeds(),
             adapter_rank=recipe.rank)
    return model


def _scores(models: list[torch.nn.Module], task: Any) -> dict[str, float]:
    y = task.test_y.numpy()
    probs = [torch.softmax(predict_logits(m, task.test_x, device=CPU), 1).numpy()
             for m in models]
    return {"students": float(np.mean([accuracy(y, p) for p in probs])),
            "ensemble": accuracy(y, np.mean(probs, axis=0))}


def run(seed: int, epsilon: float, quick: bool, recipes: tuple[Recipe, ...],
        **overrides: Any) -> dict[str, Any]:
    cfg = FedConfig(seed=seed, epsilon=epsilon, **overrides)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    parts = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                              cfg.num_clients, cfg.partition, cfg.alpha)
    students = _distilled_students(cfg, task, epochs=1 if quick else 3)
    base = _scores(students, task)
    rows = [{"recipe": "no private step (public-only)", **base, "gain_students": 0.0,
             "gain_ensemble": 0.0, "seconds": 0.0}]
    for recipe in recipes[:2] if quick else recipes:
        start = time.monotonic()
        tuned = [_fine_tune(s, task.private_x[p], task.private_y[p], recipe, cfg, seed + k)
                 for k, (s, p) in enumerate(zip(students, parts, strict=True))]
        score = _scores(tuned, task)
        rows.append({"recipe": recipe.name, **score, **{"settings": asdict(recipe)},
                     "gain_students": score["students"] - base["students"],
                     "gain_ensemble": score["ensemble"] - base["ensemble"],
                     "seconds": time.monotonic() - start})
        print(f"{recipe.name}: students {score['students']:.3f} "
              f"({100 * rows[-1]['gain_students']:+.1f}), ensemble {score['ensemble']:.3f} "
              f"({100 * rows[-1]['gain_ensemble']:+.1f})", flush=True)
    return {"seed": seed, "epsilon": epsilon, "dataset": cfg.dataset,
            "clients": cfg.num_clients, "partition_sizes": [len(p) for p in parts],
            "rows": rows}


def table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown: gain of each recipe over the public-only students, per seed and mean."""
    lines = ["| recipe | " + " | ".join(f"seed {r['seed']} students / ensemble"
                                        for r in runs) + " | mean gain (points) |",
             "|---|" + "---|" * (len(runs) + 1)]
    for i, row in enumerate(runs[0]["rows"]):
        cells = [f"{r['rows'][i]['students']:.3f} / {r['rows'][i]['ensemble']:.3f}"
                 for r in runs]
        gs = np.mean([r["rows"][i]["gain_students"] for r in runs]) * 100
        ge = np.mean([r["rows"][i]["gain_ensemble"] for r in runs]) * 100
        lines.append(f"| {row['recipe']} | " + " | ".join(cells)
                     + f" | {gs:+.1f} / {ge:+.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=10, help="fewer: more data each")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--partition", default="natural")
    parser.add_argument("--recipes", default="", help="comma-separated indices into RECIPES")
    parser.add_argument("--out", default="", help="default: results/dp_recipes[-tag].json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.monotonic()
    recipes = (tuple(RECIPES[int(i)] for i in args.recipes.split(",")) if args.recipes
               else RECIPES)
    runs = [run(int(s), args.epsilon, args.quick, recipes, num_clients=args.clients,
                dataset=args.dataset, partition=args.partition)
            for s in args.seeds.split(",")]
    command = (f"python -m bench.dp_recipes --seeds {args.seeds} --epsilon "
               f"{args.epsilon:g} --clients {args.clients} --dataset {args.dataset} "
               f"--partition {args.partition}"
               + (f" --recipes {args.recipes}" if args.recipes else ""))
    data = {"benchmark": "dp_recipes", "command": command + (" --quick" if args.quick else ""),
            "wall_seconds": time.monotonic() - start, "runs": runs}
    tag = "" if (args.clients, args.dataset) == (10, "rotten-tomatoes") else (
        f"-{args.dataset}-{args.clients}")
    Path(args.out or RESULTS / f"dp_recipes{tag}.json").write_text(json.dumps(data, indent=1))
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
