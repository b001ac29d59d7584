"""The teacher: its model config, and the per-round update from the clients' aggregate.

The update distils the teacher on the aggregate of the replies and anchors it on its own
labelled set. :func:`guarded_update` refuses, or rolls back, an update that would
collapse the teacher onto one class: a few bad or poisoned rounds must not turn the
federation's model into a constant. With ``teacher-validation`` it also rolls back an
update that lowers the teacher's accuracy on a held-out share of its own labels; with
``teacher-folds`` a :class:`FoldGuard`'s shadow teachers judge each update on every label
instead, and the teacher keeps all its labels.

Forecasts have no classes to collapse onto: their update is distilled on the aggregate
(regression, the knowledge's MSE) and anchored on the labelled windows, and with
``teacher-validation`` rolled back where it raises the MSE on the held-out windows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from common.config import FedConfig
from common.distill.losses import soften
from common.models import ModelConfig, build_model
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
                   device: torch.device, guard: FoldGuard | None = None) -> str:
    """Apply :func:`update_teacher` unless it would collapse the teacher onto one class.

    A round whose pseudo-labels, or whose updated teacher's predictions, put more than
    ``collapse-share`` of the public batch into one class, where the teacher's own
    predictions do not, is rolled back: a few bad or poisoned rounds must not turn the
    teacher into a constant. With a held-out share of the teacher's labels
    (``teacher-validation``), or with the shadow teachers of ``teacher-folds`` (``guard``),
    an update that lowers accuracy on held-out labels is rolled back too.
    Returns "applied" or why not.
    """
    if not task.kind.knowledge.simplex:  # forecasts: no class to collapse onto
        return _validated_update(cfg, task, teacher, public_x, aggregate, rnd, device, guard)
    before = predict_logits(teacher, public_x, device=device).argmax(1).numpy()
    own = _largest_share(before, task.num_classes)
    if own >= cfg.collapse_share:
        update_teacher(cfg, task, teacher, public_x, aggregate, rnd, device)
        if guard is not None:  # the shadows take every update the teacher takes
            guard.update(cfg, public_x, aggregate, rnd, device)
        return "applied"
    pseudo = _largest_share(aggregate.argmax(1), task.num_classes)
    if pseudo > cfg.collapse_share:
        return (f"refused: the aggregate puts {pseudo:.0%} of the public batch in one class "
                f"(the teacher: {own:.0%})")
    saved = _snapshot(teacher)
    check = _HeldOut(cfg, task, teacher, guard, device)
    update_teacher(cfg, task, teacher, public_x, aggregate, rnd, device)
    after = _largest_share(predict_logits(teacher, public_x, device=device).argmax(1).numpy(),
                           task.num_classes)
    if after > cfg.collapse_share:
        teacher.load_state_dict(saved)
        return (f"rolled back: the updated teacher put {after:.0%} of the public batch in "
                f"one class (before: {own:.0%})")
    return check.kept_unless_worse(saved, public_x, aggregate, rnd)


def _validated_update(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                      public_x: torch.Tensor, aggregate: np.ndarray, rnd: int,
                      device: torch.device, guard: FoldGuard | None) -> str:
    """The update, rolled back where it worsens the held-out score (if one is held out)."""
    saved = _snapshot(teacher)
    check = _HeldOut(cfg, task, teacher, guard, device)
    update_teacher(cfg, task, teacher, public_x, aggregate, rnd, device)
    return check.kept_unless_worse(saved, public_x, aggregate, rnd)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _HeldOut:
    """The held-out score before an update, and the decision after it: the teacher on its
    held-out share, or the shadow teachers of a :class:`FoldGuard` on their folds."""

    def __init__(self, cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module,
                 guard: FoldGuard | None, device: torch.device) -> None:
        self.cfg, self.task, self.teacher, self.guard, self.device = (
            cfg, task, teacher, guard, device)
        self.shadows = guard.states() if guard else None
        self.before = self._score()
        self.right = (guard.correct(device) if guard and cfg.teacher_fold_alpha < 1
                      and task.kind.knowledge.simplex else None)

    def _score(self) -> float | None:
        if self.guard is not None:
            return self.guard.score(self.cfg, self.device)
        return _held_out_score(self.cfg, self.teacher, self.task, self.device)

    def kept_unless_worse(self, saved: dict[str, torch.Tensor], public_x: torch.Tensor,
                          aggregate: np.ndarray, rnd: int) -> str:
        """Roll the teacher back to ``saved`` (and the shadows) where the score drops, or,
        for the shadows of a :class:`FoldGuard`, where it does not rise."""
        if self.guard is not None:  # the same update, on each shadow
            self.guard.update(self.cfg, public_x, aggregate, rnd, self.device)
        why = self._why_not()
        if why is None:
            return "applied"
        self.teacher.load_state_dict(saved)
        if self.guard is not None and self.shadows is not None:
            self.guard.load(self.shadows)
        return f"rolled back: {why}"

    def _why_not(self) -> str | None:
        """None where the update stands, else why it does not."""
        after = self._score()
        if self.before is None or after is None:
            return None
        what = ("log-loss" if self.cfg.teacher_guard == "loss" else
                self.task.kind.knowledge.metric_name)
        if self.guard is None:
            return (None if after >= self.before else
                    f"the update worsened the {what} on the held-out teacher labels")
        if after <= self.before:
            return (f"the update did not raise the {what} on the {len(self.guard.shadows)} "
                    "folds of the teacher's labels, each judged by a shadow teacher trained "
                    "without it")
        if self.right is None:
            return None
        gained, lost = _flips(self.right, self.guard.correct(self.device))
        p = _sign_test(gained, lost)
        return (None if p <= self.cfg.teacher_fold_alpha else
                f"{gained} held-out labels gained against {lost} lost: a one-sided sign "
                f"test gives p = {p:.2f}, above teacher-fold-alpha = "
                f"{self.cfg.teacher_fold_alpha:g}")


def _flips(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """Labels the update made right, and labels it made wrong."""
    return int((~before & after).sum()), int((before & ~after).sum())


def _sign_test(gained: int, lost: int) -> float:
    """P(at least ``gained`` of the gained + lost flips go right | each is a coin toss)."""
    n = gained + lost
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2 ** n if n else 1.0


@dataclass
class FoldGuard:
    """``teacher-folds`` = K: the teacher trains on all its labels, and K shadow teachers,
    each pre-trained without one fold of them, take every update the teacher takes. An
    update is kept only where the shadows' score on their own held-out folds, pooled over
    all K (every label the teacher has), rises: K times the held-out examples of a single
    held-out share, and none of them kept from the teacher. A tie is not enough: on
    every label, an update that changes nothing measurable has only its risk to offer.
    With ``teacher-fold-alpha`` below 1 the rise must also pass a one-sided sign test on
    the labels the update flipped (right against wrong) at that level."""

    tasks: list[PreparedTask]  # fold k: teacher_x/y without fold k; valid_x/y = fold k
    shadows: list[torch.nn.Module]

    @classmethod
    def build(cls, cfg: FedConfig, task: PreparedTask, device: torch.device) -> FoldGuard | None:
        if cfg.teacher_folds < 2:
            return None
        order = torch.from_numpy(np.random.default_rng([cfg.seed, 16]).permutation(
            len(task.teacher_y)))
        tasks, shadows = [], []
        with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
            torch.manual_seed(cfg.seed)
            for fold in np.array_split(order.numpy(), cfg.teacher_folds):
                tasks.append(_fold_task(task, order, torch.from_numpy(fold)))
                shadow = build_model(teacher_config(cfg, task))
                pretrain_teacher(cfg, tasks[-1], shadow, device)
                shadows.append(shadow)
        return cls(tasks, shadows)

    def score(self, cfg: FedConfig, device: torch.device) -> float:
        """Each shadow's held-out score, weighted by its fold's size."""
        sizes = [len(t.valid_y) for t in self.tasks]
        scores = [_held_out_score(cfg, m, t, device) for m, t in zip(self.shadows, self.tasks,
                                                                      strict=True)]
        return float(np.average(scores, weights=sizes))

    def update(self, cfg: FedConfig, public_x: torch.Tensor, aggregate: np.ndarray,
               rnd: int, device: torch.device) -> None:
        for shadow, task in zip(self.shadows, self.tasks, strict=True):
            update_teacher(cfg, task, shadow, public_x, aggregate, rnd, device)

    def correct(self, device: torch.device) -> np.ndarray:
        """Whether each shadow gets each label of its fold right, fold after fold."""
        return np.concatenate([
            (predict_logits(m, t.valid_x, device=device).argmax(1) == t.valid_y).numpy()
            for m, t in zip(self.shadows, self.tasks, strict=True)])

    def states(self) -> list[dict[str, torch.Tensor]]:
        return [_snapshot(m) for m in self.shadows]

    def load(self, states: list[dict[str, torch.Tensor]]) -> None:
        for shadow, state in zip(self.shadows, states, strict=True):
            shadow.load_state_dict(state)


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


def _fold_task(task: PreparedTask, order: torch.Tensor, fold: torch.Tensor) -> PreparedTask:
    """The teacher's labels less ``fold`` to train on, ``fold`` held out."""
    held = torch.isin(order, fold)
    train, valid = order[~held], order[held]
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
    if knowledge.simplex and cfg.teacher_self_weight > 0:
        # The teacher votes too: where the clients' ensemble is split, its own answer can
        # decide, so the update's labels can beat both where their errors differ.
        own = torch.softmax(predict_logits(teacher, public_x, device=device), dim=1)
        target = cfg.teacher_self_weight * own + (1 - cfg.teacher_self_weight) * target
    if knowledge.simplex and cfg.teacher_min_agreement > 0:
        # PATE's confident aggregation: learn only where the votes (and the teacher's own,
        # with a self weight) agree
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
