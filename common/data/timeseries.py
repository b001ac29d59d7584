"""CSV time series as forecasting data: a numeric column per variable, rows in time order.

One family of the file loaders (:mod:`common.data.loaders` has labeled text,
:mod:`common.data.corpus` plain-text corpora, :mod:`common.data.hf` Hugging Face datasets).
Errors name the file and line, as every loader's do.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.data.loaders import open_text
from common.data.roles import DatasetRoles, forecast_roles
from common.errors import DataError

_TIME_COLUMNS = {"date", "time", "timestamp", "datetime", "ds"}


def read_time_series_csv(
    path: str | Path,
    *,
    time_column: str | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """A CSV time series as a float array (T, C) and its column names.

    The time column (``time_column``, or one named date/time/timestamp/datetime/ds) is
    dropped; rows are assumed to be in time order. ``columns`` keeps only those.
    """
    path = Path(path).expanduser()
    rows: list[list[float]] = []
    with open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"{path} is empty: a time-series CSV needs a header row.")
            drop = (
                {time_column} if time_column else {h for h in header if h.lower() in _TIME_COLUMNS}
            )
            if time_column and time_column not in header:
                raise DataError(f"{path}: no time column {time_column!r}; columns are {header}.")
            keep = [h for h in header if h not in drop] if columns is None else list(columns)
            unknown = [c for c in keep if c not in header]
            if unknown or not keep:
                raise DataError(
                    f"{path}: column(s) {unknown or '(none left)'} not usable; the columns are "
                    f"{header}. Pass columns= / time_column= to choose."
                )
            idx = [header.index(c) for c in keep]
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, the header has "
                        f"{len(header)}."
                    )
                try:
                    rows.append([float(row[i]) for i in idx])
                except ValueError as exc:
                    raise DataError(
                        f"{path}, line {reader.line_num}: non-numeric value ({exc}); clean the "
                        "series or pass columns= to skip that column."
                    ) from exc
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}).") from exc
    if not rows:
        raise DataError(f"{path} has a header but no rows of data.")
    return np.asarray(rows, dtype=np.float64), keep


def time_series_dataset(
    name: str,
    path: Path,
    *,
    seed: int = 0,
    time_column: str | None = None,
    columns: Sequence[str] | None = None,
    target_columns: Sequence[str] | None = None,
    input_len: int = 96,
    horizon: int = 24,
    stride: int = 1,
    fractions: Sequence[float] = (0.5, 0.2, 0.1, 0.2),
    group_rows: int = 24 * 7,
    scale: bool = True,
    info: dict[str, Any] | None = None,
) -> DatasetRoles:
    """Forecasting roles from a CSV series (chronological segments; ``seed`` is unused)."""
    del seed  # chronological split: nothing random
    series, names = read_time_series_csv(path, time_column=time_column, columns=columns)
    return forecast_roles(
        name,
        series,
        names,
        target_columns=target_columns,
        input_len=input_len,
        horizon=horizon,
        stride=stride,
        fractions=fractions,
        group_rows=group_rows,
        scale=scale,
        info={**(info or {}), "source": str(path), "rows": len(series)},
    )
