"""DS-FL entropy-reduced aggregation: mean, then a low-temperature sharpening."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from coordinator.aggregation.utils import stack_replies

__all__ = ["DSFL_METHODS", "DsFl", "dsfl"]

# "power": p^(1/T) sharpening, which always lowers entropy for T < 1 (the default);
# "era": the paper's exact formula, which needs a small T (about 0.1) to sharpen at all.
DSFL_METHODS: tuple[str, ...] = ("power", "era")


def _check_params(temperature: float, method: str) -> None:
    if (
        not isinstance(temperature, int | float)
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ConfigError(
            f"DS-FL temperature must be a finite number > 0, found {temperature!r} "
            "(values below 1 sharpen; 0.1 is the usual choice)"
        )
    if method not in DSFL_METHODS:
        raise ConfigError(
            f"Unknown DS-FL method {method!r}; choose one of {', '.join(DSFL_METHODS)}."
        )


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)  # stable: the largest exponent is 0
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def dsfl(
    replies: Sequence[np.ndarray],
    counts: Sequence[int],
    *,
    temperature: float = 0.1,
    method: str = "power",
) -> np.ndarray:
    """Mean of K (m, C) replies, sharpened row-wise at temperature ``T``.

    Itahara et al. 2020 ("Distillation-Based Semi-Supervised Federated Learning for
    Communication-Efficient Collaborative Training with Non-IID Private Data", IEEE
    Trans. Mobile Computing): with non-IID clients the mean of their soft labels has
    high entropy, which slows distillation; entropy reduction restores a confident
    target while keeping the ranking of classes.

    - ``"power"`` (default): ``mean^(1/T)`` renormalised, the same as
      ``common.distill.losses.sharpen``; for any T < 1 it lowers the entropy of every
      non-uniform row and keeps the ranking.
    - ``"era"``: the paper's entropy reduction aggregation, ``softmax(mean / T)``
      applied to the averaged *probabilities*. Its output ratios are bounded by
      ``exp(1/T)``, so unless T is small (the usual 0.1) it *raises* the entropy of
      rows spread over many classes (see tests/test_losses.py); with T = 0.5 a
      row's largest entry can be at most e^2 = 7.4 times its smallest.

    Parameters
    ----------
    temperature : float
        T > 0 (default: 0.1); T >= 1 flattens instead of sharpening.
    method : str
        One of :data:`DSFL_METHODS` (default: ``"power"``).
    """
    _check_params(temperature, method)
    avg = stack_replies(replies, counts).mean(axis=0)  # (m, C)
    if method == "era":
        return _softmax_rows(avg / temperature).astype(np.float32)
    with np.errstate(divide="ignore"):  # log 0 = -inf -> weight 0, as 0^(1/T) = 0
        return _softmax_rows(np.log(avg) / temperature).astype(np.float32)


@dataclass(frozen=True)
class DsFl:
    """The :func:`dsfl` rule as an ``Aggregator``.

    Parameters
    ----------
    temperature : float
        Sharpening temperature, > 0 (default: 0.1).
    method : str
        ``"power"`` (sharpening) or ``"era"`` (the paper's softmax of the mean)
        (default: ``"power"``).
    """

    temperature: float = 0.1
    method: str = "power"

    def __post_init__(self) -> None:
        _check_params(self.temperature, self.method)

    def __call__(self, replies: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        return dsfl(replies, counts, temperature=self.temperature, method=self.method)
