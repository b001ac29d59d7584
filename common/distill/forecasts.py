"""Forecast knowledge: the H-step forecasts of the public windows, on the wire.

For a forecasting task a client's knowledge about one public window is its forecast, a
float vector of ``width = horizon × targets`` values in the dataset's standardised units
(common/data/roles.py ``forecast_roles``). A round's knowledge is an (m, width) matrix,
sent as ``{"forecasts": float32 or float16 (m, width)}``. The simplex encodings (int8,
top-k) do not apply: their codes assume rows of probabilities.

:func:`decode_forecasts` is the coordinator's gate for untrusted forecasts, as
``decode_knowledge`` is for probabilities: it returns a checked float32 matrix or raises
:class:`KnowledgeError` with a reason for the log, for any input whatsoever.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from common.errors import ConfigError, KnowledgeError

__all__ = ["FORECAST_BOUND", "FORECAST_ENCODINGS", "decode_forecasts", "encode_forecasts",
           "forecast_loss"]

FORECAST_ENCODINGS: tuple[str, ...] = ("float32", "float16")
KEY = "forecasts"
_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
# The largest |value| a forecast may hold, in standard deviations of the public and
# teacher segments. The built-in series stay within a few of them (every window of
# seattle-temps: -3.5..+2.0; of ETTh1: -3.9..+6.3); a reply far outside carries no
# forecast, only leverage over a mean, so it is refused like a NaN.
FORECAST_BOUND = 50.0


def encode_forecasts(forecasts: np.ndarray, encoding: str, *,
                     topk: int = 2) -> dict[str, np.ndarray]:
    """An (m, width) matrix of forecasts for the wire (``topk`` is unused: no top-k here).

    Raises
    ------
    ConfigError
        An encoding other than float32 / float16.
    ValueError
        ``forecasts`` is not a finite (m, width) matrix.
    """
    del topk
    if encoding not in FORECAST_ENCODINGS:
        raise ConfigError(f"encoding={encoding!r} does not apply to forecasts: use one of "
                          f"{', '.join(FORECAST_ENCODINGS)}.")
    arr = np.asarray(forecasts, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"forecasts must be a non-empty (m, width) matrix, found {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("forecasts must be finite")
    return {KEY: arr.astype(_DTYPES[encoding])}


def decode_forecasts(arrays: Mapping[str, np.ndarray], encoding: str, *, num_rows: int,
                     num_classes: int, bound: float = FORECAST_BOUND) -> np.ndarray:
    """Check and decode forecasts received from the network.

    ``num_classes`` is the row width (horizon × targets): the keyword is the one every
    knowledge decoder takes. Returns float32 (num_rows, width).

    Raises
    ------
    KnowledgeError
        Wrong keys, type, dtype or shape; a non-finite value; a value beyond ``bound``.
    ConfigError
        Bad ``num_rows`` / ``num_classes`` (the caller's own bug).
    """
    for name, value in (("num_rows", num_rows), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, found {value!r}")
    if not isinstance(encoding, str) or encoding not in FORECAST_ENCODINGS:
        raise KnowledgeError(f"unknown forecast encoding {encoding!r}; expected one of "
                             f"{FORECAST_ENCODINGS}")
    value = _the_array(arrays, encoding)
    if value.shape != (num_rows, num_classes):
        raise KnowledgeError(f"'{KEY}' has shape {value.shape}, expected "
                             f"{(num_rows, num_classes)}")
    forecasts = value.astype(np.float64)
    bad = ~np.isfinite(forecasts)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KnowledgeError(f"'{KEY}' has a non-finite value {forecasts[where]} at {where}")
    worst = np.unravel_index(int(np.argmax(np.abs(forecasts))), forecasts.shape)
    if abs(forecasts[worst]) > bound:
        raise KnowledgeError(f"'{KEY}' has {forecasts[worst]:.4g} at "
                             f"{tuple(int(i) for i in worst)}, beyond ±{bound:g} standard "
                             "deviations")
    return forecasts.astype(np.float32)


def _the_array(arrays: object, encoding: str) -> np.ndarray:
    """The payload's one array, of the encoding's dtype, or a KnowledgeError."""
    if not isinstance(arrays, Mapping):
        raise KnowledgeError(f"payload must be a mapping of arrays, found {type(arrays).__name__}")
    try:
        keys = [k if isinstance(k, str) else repr(k)[:40] for k in arrays.keys()]
        value = arrays[KEY] if keys == [KEY] else None
    except Exception as exc:  # a hostile Mapping: nothing to salvage
        raise KnowledgeError(f"payload cannot be read: {type(exc).__name__}") from exc
    if value is None:
        raise KnowledgeError(f"a forecast payload must have exactly the key '{KEY}'; "
                             f"found {sorted(keys)}")
    if not isinstance(value, np.ndarray):
        raise KnowledgeError(f"'{KEY}' must be a numpy array, found {type(value).__name__}")
    value = np.asarray(value)  # drop ndarray subclasses
    if value.dtype != _DTYPES[encoding]:
        raise KnowledgeError(f"'{KEY}' has dtype {value.dtype}, expected {_DTYPES[encoding]}")
    return value


def forecast_loss(student: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Regression distillation: the MSE between the student's forecasts and the target
    forecasts, averaged over windows and steps (``temperature`` softens nothing here)."""
    del temperature
    prediction = student.flatten(1)  # (B, width)
    target = target.to(prediction.dtype).flatten(1)
    if prediction.shape != target.shape:
        raise ValueError(f"student forecasts {tuple(prediction.shape)} and targets "
                         f"{tuple(target.shape)} must have the same shape")
    return torch.nn.functional.mse_loss(prediction, target)
