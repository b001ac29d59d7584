"""Distillation losses: softened softmax, Hinton's KD loss, and temperature sharpening.

All of them act on the last dimension (classes) and work for any leading shape, so a
sequence model's (B, T, C) logits can be used as well as a classifier's (B, C). They are
applied to *public* data only, so they carry no privacy cost (see DESIGN.md, "One round").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import ConfigError

__all__ = ["kd_loss", "sharpen", "soften"]


def _check_temperature(temperature: float) -> None:
    if (
        not isinstance(temperature, int | float)
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ConfigError(f"temperature must be a finite number > 0, found {temperature!r}")


def soften(logits: Tensor, temperature: float) -> Tensor:
    """``softmax(logits / T)``: the teacher's knowledge at temperature ``T``.

    A temperature above 1 flattens the distribution and exposes the "dark knowledge" in
    the relative sizes of the small probabilities (Hinton, Vinyals & Dean 2015,
    "Distilling the Knowledge in a Neural Network", Sec. 2).
    """
    _check_temperature(temperature)
    return F.softmax(logits / temperature, dim=-1)


def kd_loss(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015 distillation loss: ``T² · KL(teacher ‖ softmax(student / T))``.

    ``teacher_probs`` are already softened at ``T`` (what the knowledge codec carries).
    The KL divergence is summed over classes and averaged over examples (``batchmean``,
    the true KL per example; every leading dimension counts as examples). The ``T²``
    factor keeps the gradient's scale independent of ``T`` (Hinton et al., Sec. 2), so
    the loss can be mixed with a hard-label loss without retuning its weight.

    Parameters
    ----------
    student_logits : Tensor
        (..., C) raw student outputs.
    teacher_probs : Tensor
        (..., C) teacher probabilities, rows on the simplex (zeros allowed).
    temperature : float
        T > 0.
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_probs "
            f"{tuple(teacher_probs.shape)} must have the same shape"
        )
    num_classes = student_logits.shape[-1]
    log_student = F.log_softmax(student_logits / temperature, dim=-1).reshape(-1, num_classes)
    target = teacher_probs.to(log_student.dtype).reshape(-1, num_classes)  # (N, C)
    # F.kl_div(input=log q, target=p) = Σ p (log p - log q), with 0 · log 0 = 0.
    kl = F.kl_div(log_student, target, reduction="batchmean")
    return kl * temperature**2


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """Temperature sharpening ``p^(1/T) / Σ_c p_c^(1/T)``, row-wise.

    For T < 1 this lowers the entropy of every non-uniform row and keeps its ranking
    (the "sharpen" of MixMatch, Berthelot et al. 2019); T = 1 is the identity.
    It is the guaranteed form of DS-FL's entropy reduction. DS-FL's own formula
    (Itahara et al. 2020, ERA) is ``softmax(mean / T)`` on probabilities; it is in
    ``coordinator.aggregation.dsfl`` and does *not* always lower entropy: a flat row
    over many classes can come out flatter. Computed in log space so that a small T
    cannot underflow every entry of a row to zero.
    """
    _check_temperature(temperature)
    return F.softmax(torch.log(probs) / temperature, dim=-1)
