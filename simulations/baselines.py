"""Baselines in the same harness: same split, same students, same example-level privacy.

Each writes ``summary.json`` in the form ``fedistill simulate`` writes, so results stand
side by side. The baselines run in this process with the training loops of
``common/training`` (the ones the federation uses); FedAvg and DP-FedAvg average weights
in a plain loop rather than through Flower, and count the bytes Flower would carry: the
float32 weights of the model, down and up, for every sampled client and round.

- ``centralized``: one student on all private partitions pooled, non-private.
- ``centralized-dp``: the same with DP-SGD at the clients' ε (one pooled dataset).
- ``local-only``: every client trains its own student with DP-SGD on its partition alone.
- ``fedavg``: FedAvg of the first student family, local non-private epochs.
- ``dp-fedavg``: FedAvg of students trained locally with the same Opacus DP-SGD, so that
  only what is exchanged (weights instead of soft labels) differs.

Every task kind runs them: the loss is its knowledge's criterion (cross-entropy on class
ids; MSE of forecasts) and the scores its metrics (accuracy; MSE and MAE).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from common.config import FedConfig
from common.device import resolve_device
from common.errors import ConfigError
from common.models import build_model
from common.privacy.accounting import epsilon_from_events
from common.privacy.planner import NoisePlan, plan_noise
from common.privacy.secrets import fresh_seeds
from common.task import PreparedTask, client_partitions, model_config, prepare_task, task_for
from common.training import dp_train, predict_logits, train_supervised

BASELINES = ("centralized", "centralized-dp", "local-only", "fedavg", "dp-fedavg")


def run_baseline(name: str, cfg: FedConfig, *, console: Console | None = None) -> dict[str, Any]:
    """Run baseline ``name`` for ``cfg`` and write ``summary.json`` in ``cfg.out_dir``."""
    if name not in BASELINES:
        raise ConfigError(f"Unknown baseline {name!r}; choose one of {', '.join(BASELINES)}.")
    console = console or Console()
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    parts = client_partitions(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len,
                              cfg.num_clients, cfg.partition, cfg.alpha)
    console.print(f"[bold]baseline {name}[/bold]: {cfg.dataset}, {cfg.num_clients} partitions")
    runner: Callable[..., dict[str, Any]] = {
        "centralized": _centralized,
        "centralized-dp": _centralized,
        "local-only": local_only,
        "fedavg": _fedavg,
        "dp-fedavg": _fedavg,
    }[name]
    result = runner(cfg, task, parts, dp=name in ("centralized-dp", "local-only", "dp-fedavg"))
    summary = baseline_summary(name, cfg, result, time.monotonic() - start, task.task,
                               task.kind.knowledge.metric_name)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


# ----------------------------------------------------------------------------- helpers
def _student(cfg: FedConfig, task: PreparedTask, family: str) -> torch.nn.Module:
    return build_model(model_config(cfg, task, family, cfg.student_size))


def _scores_and_rows(model: torch.nn.Module, task: PreparedTask,
                     device: torch.device) -> tuple[dict[str, float], np.ndarray]:
    """The model's test scores, and its test predictions as knowledge rows."""
    knowledge = task.kind.knowledge
    rows = knowledge.from_outputs(predict_logits(model, task.test_x, device=device), 1.0)
    return knowledge.scores(task.test_y.numpy(), rows.numpy()), rows.numpy()


def _samples(cfg: FedConfig, task: PreparedTask, model: torch.nn.Module,
             family: str) -> dict[str, Any] | None:
    """The quality of text sampled from a language model (None for other tasks), drawn as
    a federated run's summary draws its teacher's."""
    if task.task != "lm":
        return None
    from tokenizers import Tokenizer

    from simulations.generate import RunModel, model_samples

    run = RunModel(model, Tokenizer.from_str(task.tokenizer_json), cfg.max_len, family)
    return model_samples(run, cfg.dataset)


def _plan(cfg: FedConfig, n: int) -> NoisePlan:
    """σ, q and steps for ``n`` examples over the run's rounds: the clients' own planner."""
    return plan_noise(budget=cfg.epsilon, delta=cfg.delta, num_examples=n,
                      expected_batch_size=cfg.dp_batch_size, epochs_per_round=cfg.dp_epochs,
                      rounds=cfg.rounds, accountant=cfg.accountant,
                      noise_multiplier=cfg.noise_multiplier)


def _epsilon(cfg: FedConfig, plan: NoisePlan) -> float:
    return epsilon_from_events([plan.total_event()], delta=cfg.delta, accountant=cfg.accountant)


def _private_train(cfg: FedConfig, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   *, dp: bool, steps: int, sigma: float, device: torch.device,
                   seed: int) -> None:
    """DP-SGD as the clients run it, but on every trained layer (a from-scratch student's
    head alone would be a classifier on random features; a probe is all head), or no DP."""
    criterion = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size,
                             cfg.max_len).kind.knowledge.criterion()
    if dp:
        dp_train(model, x, y, noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                 expected_batch_size=cfg.dp_batch_size, steps=steps, lr=cfg.dp_lr,
                 optimizer=cfg.dp_optimizer, trainable="all",
                 grad_sample_mode=cfg.grad_sample_mode,
                 max_physical_batch_size=cfg.max_physical_batch_size, device=device,
                 seeds=fresh_seeds(), criterion=criterion)
    else:
        epochs = max(1, round(steps * cfg.dp_batch_size / max(len(x), 1)))
        train_supervised(model, x, y, epochs=epochs, lr=cfg.teacher_lr, device=device,
                         batch_size=32, seed=seed, loss_fn=criterion)


# ----------------------------------------------------------------------------- baselines
def _centralized(cfg: FedConfig, task: PreparedTask, parts: tuple[np.ndarray, ...], *,
                 dp: bool) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    task = task_for(cfg, task, cfg.student_families[0])
    idx = torch.as_tensor(np.concatenate(parts))
    x, y = task.private_x[idx], task.private_y[idx]
    plan = _plan(cfg, len(x))
    total = plan.total_event().steps
    model = _student(cfg, task, cfg.student_families[0])
    _private_train(cfg, model, x, y, dp=dp, steps=total,
                   sigma=plan.noise_multiplier if dp else 0.0, device=device, seed=cfg.seed)
    scores, _ = _scores_and_rows(model, task, device)
    eps = _epsilon(cfg, plan) if dp else math.inf
    return {"students": {"centralized": scores}, "epsilon": {"centralized": eps},
            "samples": {"centralized": _samples(cfg, task, model, cfg.student_families[0])},
            "bytes_up": 0, "bytes_down": 0}


def local_only(cfg: FedConfig, task: PreparedTask, parts: tuple[np.ndarray, ...], *,
               dp: bool) -> dict[str, Any]:
    """Each client alone on its partition, DP-SGD (or none); the mean of their test
    predictions is the ensemble."""
    device = resolve_device(cfg.device)
    accs, eps, probs, samples = {}, {}, [], {}
    for k, part in enumerate(parts):
        idx = torch.as_tensor(part)
        plan = _plan(cfg, len(part))
        own = task_for(cfg, task, cfg.student_for(k))
        model = _student(cfg, own, cfg.student_for(k))
        _private_train(cfg, model, own.private_x[idx], own.private_y[idx], dp=dp,
                       steps=plan.total_event().steps, sigma=plan.noise_multiplier,
                       device=device, seed=cfg.seed + k)
        accs[f"client-{k}"], p = _scores_and_rows(model, own, device)
        eps[f"client-{k}"] = _epsilon(cfg, plan) if dp else math.inf
        samples[f"client-{k}"] = _samples(cfg, own, model, cfg.student_for(k))
        probs.append(p)
    ensemble = task.kind.knowledge.scores(task.test_y.numpy(), np.mean(probs, axis=0))
    return {"students": accs, "epsilon": eps, "ensemble": ensemble, "samples": samples,
            "bytes_up": 0, "bytes_down": 0}


def _fedavg(cfg: FedConfig, task: PreparedTask, parts: tuple[np.ndarray, ...], *,
            dp: bool) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    family = cfg.student_families[0]
    task = task_for(cfg, task, family)
    global_model = _student(cfg, task, family)
    nbytes = sum(p.numel() * 4 for p in global_model.state_dict().values())
    plans = [_plan(cfg, len(part)) for part in parts]
    bytes_up = bytes_down = 0
    for rnd in range(1, cfg.rounds + 1):
        states, weights = [], []
        for k, part in enumerate(parts):
            local = _student(cfg, task, family)
            local.load_state_dict(global_model.state_dict())
            idx = torch.as_tensor(part)
            _private_train(cfg, local, task.private_x[idx], task.private_y[idx], dp=dp,
                           steps=plans[k].steps_per_round,
                           sigma=plans[k].noise_multiplier if dp else 0.0, device=device,
                           seed=cfg.seed * 1000 + rnd * 100 + k)
            states.append(local.state_dict())
            weights.append(len(part))
            bytes_down, bytes_up = bytes_down + nbytes, bytes_up + nbytes
        global_model.load_state_dict(_weighted_average(states, weights))
    scores, _ = _scores_and_rows(global_model, task, device)
    eps = {f"client-{k}": _epsilon(cfg, plan) if dp else math.inf
           for k, plan in enumerate(plans)}
    return {"students": {"global": scores}, "epsilon": eps,
            "samples": {"global": _samples(cfg, task, global_model, family)},
            "bytes_up": bytes_up, "bytes_down": bytes_down}


def _weighted_average(states: list[dict[str, torch.Tensor]],
                      weights: list[int]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    out = {}
    for key, ref in states[0].items():
        if not torch.is_floating_point(ref):
            out[key] = ref
            continue
        out[key] = sum(s[key] * (w / total) for s, w in zip(states, weights, strict=True))
    return out


def baseline_summary(name: str, cfg: FedConfig, result: dict[str, Any], seconds: float,
                     task: str = "classification", metric: str = "accuracy") -> dict[str, Any]:
    eps = result["epsilon"]
    finite = [e for e in eps.values() if math.isfinite(e)]
    return {
        "task": task,
        "metric": metric,
        "method": name,
        "dataset": cfg.dataset,
        "rounds": cfg.rounds,
        "clients": cfg.num_clients,
        "students": cfg.students,
        "seed": cfg.seed,
        "final": _final(result, metric),
        "privacy": {
            "dp": bool(finite),
            "delta": cfg.delta,
            "budget": cfg.epsilon,
            "accountant": cfg.accountant,
            "epsilon_per_client": {k: (v if math.isfinite(v) else None) for k, v in eps.items()},
            "epsilon_max": max(finite) if finite else None,
            "source": "computed from the baseline's DP events",
        },
        "communication": {"bytes_up": result["bytes_up"], "bytes_down": result["bytes_down"]},
        "wall_seconds": seconds,
        **_samples_field(result),
    }


def _samples_field(result: dict[str, Any]) -> dict[str, Any]:
    """``{"samples": {model: quality}}`` for language models, else nothing."""
    samples = {k: v for k, v in (result.get("samples") or {}).items() if v is not None}
    return {"samples": samples} if samples else {}


def _final(result: dict[str, Any], metric: str) -> dict[str, Any]:
    """Scores in the form of a federated run's summary: no teacher; the ensemble's (where
    there is one) and the students' main score, mean and per client; the others' means."""
    students = result["students"]  # {client: {metric: score}}
    final: dict[str, Any] = {f"teacher_{metric}_initial": None, f"teacher_{metric}": None,
                             f"ensemble_{metric}": None,
                             f"student_{metric}": {k: v[metric] for k, v in students.items()}}
    for key in next(iter(students.values())):
        final[f"student_{key}_mean"] = float(np.mean([v[key] for v in students.values()]))
    for key, value in (result.get("ensemble") or {}).items():
        final[f"ensemble_{key}"] = value
    return final
