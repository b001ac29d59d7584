"""The coordinator refuses, or rolls back, a teacher update that collapses it (#15)."""

from __future__ import annotations

import numpy as np
import torch

from common.config import FedConfig
from common.models import ModelConfig, build_model
from common.task import PreparedTask
from coordinator.teacher import guarded_update

N, D = 200, 8


def _task_and_teacher() -> tuple[PreparedTask, torch.nn.Module, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = (x[:, 0] > 0).long()  # two balanced, learnable classes
    task = PreparedTask(dataset="t", num_classes=2, vocab_size=0, fingerprint="f",
                        tokenizer_json="", private_x=x, private_y=y, private_groups=None,
                        public_x=x, teacher_x=x, teacher_y=y, test_x=x, test_y=y)
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(family="probe", num_classes=2, feature_dim=D))
    return task, teacher, x


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_an_aggregate_that_puts_the_public_batch_in_one_class_is_refused():
    task, teacher, x = _task_and_teacher()
    before = _state(teacher)
    one_class = np.tile([0.97, 0.03], (N, 1)).astype(np.float32)
    outcome = guarded_update(FedConfig(teacher_lr=0.05), task, teacher, x, one_class, 1,
                             torch.device("cpu"))
    assert outcome.startswith("refused")
    assert _same(before, _state(teacher))


def test_a_balanced_aggregate_is_applied():
    task, teacher, x = _task_and_teacher()
    before = _state(teacher)
    labels = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()]
    outcome = guarded_update(FedConfig(), task, teacher, x, labels * 0.9 + 0.05, 1,
                             torch.device("cpu"))
    assert outcome == "applied"
    assert not _same(before, _state(teacher))


def test_an_update_whose_result_collapses_is_rolled_back():
    """Pseudo-labels just under the share, trained hard enough to tip every prediction."""
    task, teacher, x = _task_and_teacher()
    before = _state(teacher)
    mostly = np.tile([0.9, 0.1], (N, 1)).astype(np.float32)
    mostly[: int(N * 0.15)] = [0.1, 0.9]  # 85% class 0 as pseudo-labels: below 0.9
    cfg = FedConfig(collapse_share=0.9, teacher_targets="soft", teacher_distill_epochs=30,
                    teacher_distill_lr=0.1, teacher_anchor_epochs=0, temperature=1.0)
    outcome = guarded_update(cfg, task, teacher, x, mostly, 1, torch.device("cpu"))
    assert outcome.startswith("rolled back"), outcome
    assert _same(before, _state(teacher))


def test_an_update_that_lowers_held_out_accuracy_is_rolled_back():
    """Balanced pseudo-labels that are all wrong: no collapse, but the held-out labels
    see the damage; without a held-out share the same update is applied."""
    from common.training import train_supervised
    from coordinator.teacher import hold_out

    task, teacher, x = _task_and_teacher()
    cfg = FedConfig(teacher_validation=0.2, teacher_targets="hard", teacher_anchor_epochs=0,
                    teacher_distill_epochs=20, teacher_distill_lr=0.05)
    held = hold_out(cfg, task)
    assert len(held.valid_y) == N // 5 and len(held.teacher_y) == N - N // 5
    assert hold_out(cfg, task).valid_x.equal(held.valid_x)  # a public-seed split
    train_supervised(teacher, held.teacher_x, held.teacher_y, epochs=30, lr=0.05,
                     device=torch.device("cpu"))
    flipped = np.eye(2, dtype=np.float32)[1 - (x[:, 0] > 0).long().numpy()]
    before = _state(teacher)
    outcome = guarded_update(cfg, held, teacher, x, flipped, 1, torch.device("cpu"))
    assert outcome.startswith("rolled back") and "held-out" in outcome
    assert _same(before, _state(teacher))
    assert guarded_update(cfg, task, teacher, x, flipped, 1, torch.device("cpu")) == "applied"


def test_the_loss_guard_rolls_back_an_update_that_accuracy_lets_through():
    """Targets on the right side of every decision but barely: held-out accuracy stays,
    the teacher's confidence in the right class drops. Only the log-loss sees it."""
    from common.training import train_supervised
    from coordinator.teacher import hold_out

    task, teacher, x = _task_and_teacher()
    base = dict(teacher_validation=0.2, teacher_targets="soft", teacher_anchor_epochs=0,
                teacher_distill_epochs=5, teacher_distill_lr=0.01, temperature=1.0)
    held = hold_out(FedConfig(**base), task)
    train_supervised(teacher, held.teacher_x, held.teacher_y, epochs=30, lr=0.05,
                     device=torch.device("cpu"))
    timid = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()] * 0.2 + 0.4
    before = _state(teacher)
    by_loss = guarded_update(FedConfig(**base, teacher_guard="loss"), held, teacher, x,
                             timid, 1, torch.device("cpu"))
    assert by_loss.startswith("rolled back") and "log-loss" in by_loss, by_loss
    assert _same(before, _state(teacher))
    by_accuracy = guarded_update(FedConfig(**base), held, teacher, x, timid, 1,
                                 torch.device("cpu"))
    assert by_accuracy == "applied"


def test_min_agreement_leaves_the_disputed_public_examples_out():
    """The update with a threshold is the update on the agreed rows alone."""
    from coordinator.teacher import update_teacher

    task, teacher, x = _task_and_teacher()
    right = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()]
    aggregate = right * 0.8 + 0.1  # agreed: 90% of the votes on the right class
    aggregate[::2] = 1.0 - right[::2] * 0.1 - 0.45  # disputed (55%) and wrong
    cfg = dict(teacher_targets="hard", teacher_anchor_epochs=0, teacher_distill_lr=0.05)
    initial = _state(teacher)
    update_teacher(FedConfig(**cfg, teacher_min_agreement=0.7), task, teacher, x, aggregate,
                   1, torch.device("cpu"))
    filtered = _state(teacher)
    teacher.load_state_dict(initial)
    update_teacher(FedConfig(**cfg), task, teacher, x[1::2], aggregate[1::2], 1,
                   torch.device("cpu"))
    assert _same(filtered, _state(teacher))
    teacher.load_state_dict(initial)
    update_teacher(FedConfig(**cfg), task, teacher, x, aggregate, 1, torch.device("cpu"))
    assert not _same(filtered, _state(teacher))
    teacher.load_state_dict(initial)  # no row agreed enough: nothing to learn from
    update_teacher(FedConfig(**cfg, teacher_min_agreement=0.95), task, teacher, x, aggregate,
                   1, torch.device("cpu"))
    assert _same(initial, _state(teacher))


def test_with_a_self_weight_the_teacher_votes_on_its_own_update():
    """Where the clients are split, the teacher's confident answer decides the label it
    learns; the update equals one on the mixed targets."""
    from common.training import predict_logits, train_supervised
    from coordinator.teacher import update_teacher

    task, teacher, x = _task_and_teacher()
    train_supervised(teacher, x, task.teacher_y, epochs=30, lr=0.05, device=torch.device("cpu"))
    right = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()]
    split = 0.45 * right + 0.55 * (1 - right)  # the clients lean, barely, to the wrong class
    own = torch.softmax(predict_logits(teacher, x, device=torch.device("cpu")), 1).numpy()
    mixed = 0.5 * own + 0.5 * split
    assert (mixed.argmax(1) == right.argmax(1)).mean() > 0.9  # the teacher's answer wins
    cfg = dict(teacher_targets="hard", teacher_anchor_epochs=0, teacher_distill_lr=0.05)
    initial = _state(teacher)
    update_teacher(FedConfig(**cfg, teacher_self_weight=0.5), task, teacher, x, split, 1,
                   torch.device("cpu"))
    voted = _state(teacher)
    teacher.load_state_dict(initial)
    update_teacher(FedConfig(**cfg), task, teacher, x, mixed, 1, torch.device("cpu"))
    assert _same(voted, _state(teacher))


def test_fold_guard_pools_every_label_and_rolls_back_teacher_and_shadows():
    """K shadows, each without one fold: the folds cover every label once; a wrong
    update is rolled back on all of them, a right one taken by all of them."""
    from coordinator.teacher import FoldGuard

    task, teacher, x = _task_and_teacher()
    cfg = FedConfig(teacher_folds=4, teacher_family="probe", backbone="mpnet",
                    teacher_targets="hard",
                    teacher_anchor_epochs=0,
                    teacher_distill_epochs=20, teacher_distill_lr=0.05, teacher_lr=0.05)
    guard = FoldGuard.build(cfg, task, torch.device("cpu"))
    assert guard is not None and len(guard.shadows) == 4
    held = torch.cat([t.valid_y.new_tensor(range(len(t.valid_y))) for t in guard.tasks])
    assert len(held) == N  # every label held out exactly once
    for t in guard.tasks:
        assert len(t.teacher_y) + len(t.valid_y) == N
        assert not (t.teacher_x[:, None] == t.valid_x[None]).all(-1).any()  # disjoint
    from common.training import train_supervised

    train_supervised(teacher, x, task.teacher_y, epochs=30, lr=0.05, device=torch.device("cpu"))
    right = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()]
    teacher0, shadows0 = _state(teacher), guard.states()
    outcome = guarded_update(cfg, task, teacher, x, 1 - right, 1, torch.device("cpu"), guard)
    assert outcome.startswith("rolled back") and "4 folds" in outcome, outcome
    assert _same(teacher0, _state(teacher))
    assert all(_same(a, b) for a, b in zip(shadows0, guard.states(), strict=True))
    noisy = right * 0.9 + 0.05
    assert guarded_update(cfg, task, teacher, x, noisy, 2, torch.device("cpu"),
                          guard) == "applied"
    assert not any(_same(a, b) for a, b in zip(shadows0, guard.states(), strict=True))


def test_fold_guard_settings_are_checked():
    import pytest

    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher-folds=1"):
        FedConfig(teacher_folds=1)
    with pytest.raises(ConfigError, match="set one of them"):
        FedConfig(teacher_folds=5, teacher_validation=0.2)
    from coordinator.teacher import FoldGuard

    task, _, _ = _task_and_teacher()
    assert FoldGuard.build(FedConfig(), task, torch.device("cpu")) is None


def test_with_folds_a_tie_is_rolled_back_where_a_held_out_share_lets_it_pass():
    """Classes apart by a wide margin: every shadow is already right on its fold, so even
    the right labels cannot raise the pooled accuracy. The folds want evidence of a gain;
    a single held-out share takes an update that does not lower its accuracy."""
    import dataclasses

    from coordinator.teacher import FoldGuard, hold_out

    task, teacher, x = _task_and_teacher()
    x = x.clone()
    x[:, 0] = torch.sign(x[:, 0]) * (2 + x[:, 0].abs())
    task = dataclasses.replace(task, public_x=x, teacher_x=x, test_x=x, private_x=x)
    right = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()]
    common = dict(teacher_family="probe", backbone="mpnet", teacher_targets="hard",
                  teacher_anchor_epochs=0, teacher_lr=0.05, teacher_distill_epochs=5,
                  teacher_distill_lr=0.01)
    cfg = FedConfig(teacher_folds=4, **common)
    guard = FoldGuard.build(cfg, task, torch.device("cpu"))
    assert guard is not None and guard.score(cfg, torch.device("cpu")) == 1.0
    outcome = guarded_update(cfg, task, teacher, x, right, 1, torch.device("cpu"), guard)
    assert outcome.startswith("rolled back: the update did not raise"), outcome
    held_cfg = FedConfig(teacher_validation=0.25, **common)
    assert guarded_update(held_cfg, hold_out(held_cfg, task), teacher, x, right, 1,
                          torch.device("cpu")) == "applied"


def test_teacher_fold_alpha_asks_a_sign_test_of_the_rise():
    """A right update that lifts the pooled accuracy by a few labels: enough for the
    rise rule, not for a sign test at 0.01 (no test of a handful of flips reaches it)."""
    from coordinator.teacher import FoldGuard, _sign_test

    assert _sign_test(5, 0) == 1 / 32 and _sign_test(3, 2) == 0.5 and _sign_test(0, 0) == 1
    task, teacher, x = _task_and_teacher()
    right = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).long().numpy()]
    common = dict(teacher_folds=4, teacher_family="probe", backbone="mpnet",
                  teacher_targets="hard", teacher_anchor_epochs=0, teacher_epochs=60,
                  teacher_lr=0.05, teacher_distill_epochs=5, teacher_distill_lr=0.01)
    outcomes = []
    for alpha in (1.0, 0.01):
        cfg = FedConfig(teacher_fold_alpha=alpha, **common)
        guard = FoldGuard.build(cfg, task, torch.device("cpu"))
        outcomes.append(guarded_update(cfg, task, teacher, x, right, 1, torch.device("cpu"),
                                       guard))
    assert outcomes[0] == "applied"
    assert outcomes[1].startswith("rolled back") and "sign test" in outcomes[1], outcomes[1]
