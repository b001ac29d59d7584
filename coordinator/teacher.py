"""The teacher: its model config, and the per-round update from the clients' aggregate.

The update distils the teacher on the aggregate of the replies and anchors it on its own
labelled set. :func:`guarded_update` refuses, or rolls back, an update that would
collapse the teacher onto one class: a few bad or poisoned rounds must not turn the
federation's model into a constant. With ``teacher-validation`` it also rolls back an
update that lowers the teacher's accuracy on a held-out share of its own labels.

Forecasts have no classes to collapse onto: their update is distilled on the aggregate
(regression, the knowledge's MSE) and anchored on the labelled windows, and with
``teacher-validation`` rolled back where it raises the MSE on the held-out windows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from common.config import FedConfig
from common.distill.losses import soften
from common.models import ModelConfig
from common.task import PreparedTask, model_config, prepare_task, task_for, test_scores
from common.task_kinds import Knowledge
from common.training import distill, predict_logits, train_supervised
from common.training.ddp import DataParallelSettings, spawn_train

TEACHER_BATCH = 32  # the global batch of pre-training, on one device or several


def teacher_task(cfg: FedConfig) -> PreparedTask:
    """The run's task as the teacher sees it: its family's inputs (token ids or an
    encoder's features), and the held-out share of its labels set aside."""
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    return hold_out(cfg, task_for(cfg, task, cfg.teacher_family))


def sent_soft_labels(cfg: FedConfig, teacher: torch.nn.Module, public_x: torch.Tensor,
                     device: torch.device, knowledge: Knowledge | None = None) -> torch.Tensor:
    """The teacher's knowledge a round sends: its softened predictions on the batch (its
    forecasts, for a forecasting ``knowledge``)."""
    outputs = predict_logits(teacher, public_x, device=device)
    if knowledge is None:
        return soften(outputs, cfg.temperature)
    return knowledge.from_outputs(outputs, cfg.temperature)


def pretrain_teacher(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                     device: torch.device) -> None:
    """Pre-train on the labelled teacher set (round 0). With more than one GPU, data
    parallel over all of them (common/training/ddp.py) with the same global batch and
    optimiser, so the result follows the one-device run; otherwise in this process."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    knowledge = task.kind.knowledge
    if gpus > 1 and knowledge.simplex:  # the data-parallel loop trains on class ids
        settings = DataParallelSettings(epochs=cfg.teacher_epochs, lr=cfg.teacher_lr,
                                        global_batch=TEACHER_BATCH, seed=cfg.seed)
        spawn_train(teacher, task.teacher_x, task.teacher_y, settings, world=gpus,
                    device_type="cuda")
        return
    train_supervised(teacher, task.teacher_x, task.teacher_y, epochs=cfg.teacher_epochs,
                     lr=cfg.teacher_lr, batch_size=TEACHER_BATCH, device=device,
                     seed=cfg.seed, loss_fn=knowledge.criterion())


def teacher_config(cfg: FedConfig, task: PreparedTask) -> ModelConfig:
    return model_config(cfg, task, cfg.teacher_family, cfg.teacher_size)


def guarded_update(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                   public_x: torch.Tensor, aggregate: np.ndarray, rnd: int,
                   device: torch.device) -> str:
    """Apply :func:`update_teacher` unless it would collapse the teacher onto one class.

    A round whose pseudo-labels, or whose updated teacher's predictions, put more than
    ``collapse-share`` of the public batch into one class, where the teacher's own
    predictions do not, is rolled back: a few bad or poisoned rounds must not turn the
    teacher into a constant. With a held-out share of the teacher's labels
    (``teacher-validation``), an update that lowers accuracy on it is rolled back too.
    Returns "applied" or why not.
    """
    if not task.kind.knowledge.simplex:  # forecasts: no class to collapse onto
        return _validated_update(cfg, task, teacher, public_x, aggregate, rnd, device)
    before = predict_logits(teacher, public_x, device=device).argmax(1).numpy()
    own = _largest_share(before, task.num_classes)
    if own >= cfg.collapse_share:
        update_teacher(cfg, task, teacher, public_x, aggregate, rnd, device)
        return "applied"
    pseudo = _largest_share(aggregate.argmax(1), task.num_classes)
    if pseudo > cfg.collapse_share:
        return (f"refused: the aggregate puts {pseudo:.0%} of the public batch in one class "
                f"(the teacher: {own:.0%})")
    saved = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    held_out = _held_out_score(cfg, teacher, task, device)
    update_teacher(cfg, task, teacher, public_x, aggregate, rnd, device)
    after = _largest_share(predict_logits(teacher, public_x, device=device).argmax(1).numpy(),
                           task.num_classes)
    if after > cfg.collapse_share:
        teacher.load_state_dict(saved)
        return (f"rolled back: the updated teacher put {after:.0%} of the public batch in "
                f"one class (before: {own:.0%})")
    return _kept_unless_worse(cfg, task, teacher, saved, held_out, device)


def _validated_update(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                      public_x: torch.Tensor, aggregate: np.ndarray, rnd: int,
                      device: torch.device) -> str:
    """The update, rolled back where it worsens the held-out score (if one is held out)."""
    saved = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    held_out = _held_out_score(cfg, teacher, task, device)
    update_teacher(cfg, task, teacher, public_x, aggregate, rnd, device)
    return _kept_unless_worse(cfg, task, teacher, saved, held_out, device)


def _kept_unless_worse(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                       saved: dict[str, torch.Tensor], before: float | None,
                       device: torch.device) -> str:
    """Roll the update back (to ``saved``) where it lowers the held-out score."""
    after = _held_out_score(cfg, teacher, task, device)
    if before is None or after is None or after >= before:
        return "applied"
    teacher.load_state_dict(saved)
    what = "log-loss" if cfg.teacher_guard == "loss" else task.kind.knowledge.metric_name
    return f"rolled back: the update worsened the {what} on the held-out teacher labels"


def _held_out_score(cfg: FedConfig, teacher: torch.nn.Module, task: PreparedTask,
                    device: torch.device) -> float | None:
    """The teacher on its held-out labels, higher is better: accuracy (or minus the MSE of
    forecasts); with ``teacher-guard = loss``, minus the loss (cross-entropy for classes).

    An update moves only a handful of a hundred held-out decisions, so accuracy can miss
    a small loss; the log-loss sees every example's margin move."""
    if task.valid_x is None or task.valid_y is None:
        return None
    knowledge = task.kind.knowledge
    if cfg.teacher_guard == "loss" and knowledge.simplex:
        logits = predict_logits(teacher, task.valid_x, device=device)
        return -float(torch.nn.functional.cross_entropy(logits, task.valid_y))
    score = test_scores(task, teacher, device, x=task.valid_x, y=task.valid_y)[
        knowledge.metric_name]
    return score if knowledge.higher_is_better else -score


def hold_out(cfg: FedConfig, task: PreparedTask) -> PreparedTask:
    """Set ``teacher-validation`` of the teacher's labels aside (a public-seed split)."""
    if cfg.teacher_validation <= 0:
        return task
    order = torch.from_numpy(np.random.default_rng([cfg.seed, 15]).permutation(
        len(task.teacher_y)))
    cut = max(1, round(cfg.teacher_validation * len(order)))
    valid, train = order[:cut], order[cut:]
    return dataclasses.replace(task, teacher_x=task.teacher_x[train],
                               teacher_y=task.teacher_y[train], valid_x=task.teacher_x[valid],
                               valid_y=task.teacher_y[valid])


def _largest_share(labels: np.ndarray, num_classes: int) -> float:
    return float(np.bincount(labels, minlength=num_classes).max() / max(len(labels), 1))


def update_teacher(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                    public_x: torch.Tensor, aggregate: np.ndarray, rnd: int,
                    device: torch.device) -> None:
    """Distil the teacher on the aggregate of the replies, then anchor it on its own set."""
    target = torch.as_tensor(aggregate, dtype=torch.float32)
    knowledge = task.kind.knowledge
    if knowledge.simplex and cfg.teacher_min_agreement > 0:
        # PATE's confident aggregation: learn only where the clients agree
        agreed = target.max(dim=1).values >= cfg.teacher_min_agreement
        public_x, target = public_x[agreed], target[agreed]
    if len(target) == 0:
        pass  # no public example with enough agreement: only the anchor below
    elif cfg.teacher_targets == "hard" and knowledge.simplex:  # the ensemble's decisions
        train_supervised(teacher, public_x, target.argmax(dim=1),
                         epochs=cfg.teacher_distill_epochs, lr=cfg.teacher_distill_lr,
                         device=device, seed=cfg.seed + rnd)
    else:
        distill(teacher, public_x, target, temperature=cfg.temperature,
                epochs=cfg.teacher_distill_epochs, lr=cfg.teacher_distill_lr, device=device,
                seed=cfg.seed + rnd, loss_fn=knowledge.loss)
    # Anchor on the labeled teacher set so the teacher does not drift towards the
    # students' mistakes (its labels are the coordinator's own, not private).
    train_supervised(teacher, task.teacher_x, task.teacher_y, epochs=cfg.teacher_anchor_epochs,
                     lr=cfg.teacher_distill_lr, device=device, seed=cfg.seed + rnd,
                     loss_fn=knowledge.criterion())
