"""Distillation losses against hand-written numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.distill.losses import kd_loss, sharpen, soften
from common.errors import ConfigError
from coordinator.aggregation import get_aggregator


def _np_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _np_kd(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    """T² · mean over examples of Σ_c p_c (log p_c - log q_c), with 0 · log 0 = 0."""
    q = _np_softmax(student / t).reshape(-1, student.shape[-1])
    p = teacher.reshape(-1, teacher.shape[-1])
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return float(t**2 * terms.sum() / p.shape[0])


RNG = np.random.default_rng(7)
CASES = [
    pytest.param(RNG.normal(size=(4, 5)), RNG.dirichlet(np.ones(5), 4), 1.0, id="T1"),
    pytest.param(RNG.normal(size=(4, 5)) * 3, RNG.dirichlet(np.ones(5), 4), 4.0, id="T4"),
    pytest.param(RNG.normal(size=(3, 6)), RNG.dirichlet(np.ones(6), 3), 0.5, id="T0.5"),
    pytest.param(
        RNG.normal(size=(2, 3)),
        np.array([[1.0, 0, 0], [0, 0.5, 0.5]]),
        2.0,
        id="teacher-with-zeros",
    ),
    pytest.param(
        RNG.normal(size=(2, 3, 4)), RNG.dirichlet(np.ones(4), (2, 3)), 3.0, id="sequence-BxTxC"
    ),
]


@pytest.mark.parametrize(("student", "teacher", "t"), CASES)
def test_kd_loss_matches_numpy_reference(
    student: np.ndarray, teacher: np.ndarray, t: float
) -> None:
    loss = kd_loss(torch.tensor(student), torch.tensor(teacher), t)
    assert loss.item() == pytest.approx(_np_kd(student, teacher, t), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("student", "teacher", "t"), CASES[:3])
def test_kd_gradient_is_hinton_form(student: np.ndarray, teacher: np.ndarray, t: float) -> None:
    """∂/∂z of T² KL = T (q - p) / B: the T² factor keeps the gradient's scale in T."""
    z = torch.tensor(student, requires_grad=True)
    kd_loss(z, torch.tensor(teacher), t).backward()
    expected = t * (_np_softmax(student / t) - teacher) / student.shape[0]
    np.testing.assert_allclose(z.grad.numpy(), expected, atol=1e-12)


def test_kd_loss_is_zero_when_student_matches_teacher() -> None:
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    t = 2.5
    student = t * np.log(teacher)  # softmax(student / T) == teacher
    assert kd_loss(torch.tensor(student), torch.tensor(teacher), t).item() == pytest.approx(
        0.0, abs=1e-12
    )


@pytest.mark.parametrize("t", [0.5, 1.0, 3.0])
def test_soften_matches_numpy(t: float) -> None:
    logits = RNG.normal(size=(5, 7)) * 4
    np.testing.assert_allclose(soften(torch.tensor(logits), t).numpy(), _np_softmax(logits / t))


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


SHARPEN_CASES = [
    pytest.param([[0.6, 0.4]], 0.5, [[0.36 / 0.52, 0.16 / 0.52]], id="square-T0.5"),
    pytest.param([[0.6, 0.4]], 1.0, [[0.6, 0.4]], id="identity-T1"),
    pytest.param([[0.5, 0.25, 0.25, 0.0]], 0.5, [[4 / 6, 1 / 6, 1 / 6, 0.0]], id="with-zero"),
    pytest.param([[0.9, 0.1]], 0.01, [[1.0, 0.0]], id="tiny-T-no-underflow"),
]


@pytest.mark.parametrize(("probs", "t", "expected"), SHARPEN_CASES)
def test_sharpen_matches_hand_computed(
    probs: list[list[float]], t: float, expected: list[list[float]]
) -> None:
    out = sharpen(torch.tensor(probs, dtype=torch.float64), t).numpy()
    np.testing.assert_allclose(out, np.array(expected), atol=1e-12)


def test_sharpen_lowers_entropy_and_keeps_ranking() -> None:
    mixed = RNG.dirichlet(np.ones(10), 50)
    sharp = sharpen(torch.tensor(mixed), 0.5).numpy()
    assert np.all(_entropy(sharp) < _entropy(mixed))
    assert np.array_equal(np.argsort(sharp, axis=1), np.argsort(mixed, axis=1))


def test_ds_fl_era_can_raise_entropy_where_sharpen_cannot() -> None:
    """DS-FL's ERA, softmax(p / T), bounds output ratios by exp(1/T): a row spread over
    many classes comes out *flatter* (why the aggregator also offers "power")."""
    row = np.array([[0.3, 0.3, 0.2, 0.1, 0.05, 0.05] + [0.0] * 14])  # 20 classes
    era = get_aggregator("dsfl", temperature=0.1, method="era")([row], [1])
    power = get_aggregator("dsfl", temperature=0.1)([row], [1])  # default: "power"
    assert _entropy(era)[0] > _entropy(row)[0] > _entropy(power)[0]


def test_sharpen_agrees_with_the_dsfl_power_aggregator() -> None:
    replies = [RNG.dirichlet(np.ones(6), 4) for _ in range(3)]
    aggregate = get_aggregator("dsfl", temperature=0.2, method="power")(replies, [1, 1, 1])
    reference = sharpen(torch.tensor(np.mean(replies, axis=0)), 0.2).numpy()
    np.testing.assert_allclose(aggregate, reference, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True])
def test_bad_temperature_is_rejected(bad: float) -> None:
    x = torch.zeros(2, 3)
    for call in (lambda: soften(x, bad), lambda: sharpen(x, bad), lambda: kd_loss(x, x, bad)):
        with pytest.raises(ConfigError, match=f"temperature.*{bad}"):
            call()


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\) and teacher_probs \(2, 4\)"):
        kd_loss(torch.zeros(2, 3), torch.full((2, 4), 0.25), 1.0)
