"""File loaders, so that users bring their own data: labeled text, and opening any file.

Formats here: CSV / TSV / JSONL with a text and a label column (names configurable,
optionally bz2- or gzip-compressed) and ``<label> <sentence>`` lines (SST-2 style). The
other families have a module each: plain-text corpora (:mod:`common.data.corpus`), CSV
time series (:mod:`common.data.timeseries`) and Hugging Face ``datasets``
(:mod:`common.data.hf`, imported lazily: an optional extra); they open files with
:func:`open_text`.

Every reader turns library errors (csv, json, unicode, bz2/gzip, missing files) into a
:class:`~common.errors.DataError` that names the file, the line where it knows it, and
what to do, so a user never reads a traceback from inside the csv module.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from common.data.roles import (
    DatasetRoles,
    Split,
    labeled_roles,
)
from common.errors import DataError

log = logging.getLogger(__name__)

TEXT_FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "lines")
_SUFFIX_FORMAT = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_COMPRESSED = {".bz2": bz2.open, ".gz": gzip.open}
# csv's default field limit (128 KiB) is too small for long documents.
csv.field_size_limit(16 * 1024 * 1024)


# ------------------------------------------------------------------ opening files


@contextmanager
def open_text(path: Path) -> Iterator[IO[str]]:
    """Open ``path`` as UTF-8 text (transparently .bz2/.gz), with a DataError if absent."""
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Check the path (it must be a file).")
    opener = _COMPRESSED.get(path.suffix.lower())
    try:
        if opener is None:
            handle: IO[str] = open(path, encoding="utf-8", newline="")  # noqa: SIM115
        else:
            handle = opener(path, "rt", encoding="utf-8", newline="")
        with handle:
            yield handle
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not valid UTF-8 text ({exc.reason}); re-save it as UTF-8."
        ) from exc
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"Cannot read {path}: {exc}. Is it truncated or mislabelled?") from exc


def detect_format(path: Path) -> str:
    """The text format named by the suffix (``.csv``, ``.tsv``, ``.jsonl``; .bz2/.gz allowed)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMAT.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise DataError(
            f"Cannot tell the format of {path} from its suffix; name it .csv, .tsv or .jsonl "
            f"or pass fmt= one of {TEXT_FORMATS}."
        )
    return fmt


# ------------------------------------------------------------------ labeled text


def _rows_delimited(
    handle: IO[str], path: Path, delimiter: str
) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(handle, delimiter=delimiter, strict=True)
    try:
        if not reader.fieldnames:
            raise DataError(f"{path} is empty: it has no header row. Add one, e.g. 'text,label'.")
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}, line {reader.line_num}: more fields than the header's "
                    f"{len(reader.fieldnames)} ({reader.fieldnames}); quote fields that contain "
                    f"the delimiter {delimiter!r}."
                )
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}).") from exc


def _rows_jsonl(handle: IO[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_num, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {line_num}: not valid JSON ({exc.msg}); JSONL needs one JSON "
                "object per line."
            ) from exc
        if not isinstance(row, dict):
            raise DataError(
                f"{path}, line {line_num}: expected a JSON object, got {type(row).__name__}."
            )
        yield line_num, row


def _rows_lines(handle: IO[str], path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    for line_num, line in enumerate(handle, start=1):
        line = line.strip()
        if not line:
            continue
        label, sep, text = line.partition(" ")
        if not sep:
            raise DataError(
                f"{path}, line {line_num}: expected '<label> <sentence>', got {line[:60]!r}."
            )
        yield line_num, {"label": label, "text": text}


def read_labeled_texts(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    group_column: str | None = None,
    fmt: str | None = None,
) -> tuple[list[str], list[str] | None, list[str] | None]:
    """Read (texts, raw labels, raw groups) from a CSV / TSV / JSONL / lines file.

    Rows with an empty text are skipped (and counted in the log); a row with a text but
    no label is an error, since silently dropping labels would change the class balance.
    ``label_column=None`` reads texts only (public or unlabeled files).
    """
    path = Path(path).expanduser()
    fmt = fmt or detect_format(path)
    if fmt not in TEXT_FORMATS:
        raise DataError(f"Unknown text format {fmt!r} for {path}; use one of {TEXT_FORMATS}.")
    if fmt == "lines":
        text_column, label_column = "text", label_column and "label"
    texts: list[str] = []
    labels: list[str] = []
    groups: list[str] = []
    skipped = 0
    with open_text(path) as handle:
        rows: Iterator[tuple[int, dict[str, Any]]]
        if fmt in ("csv", "tsv"):
            rows = _rows_delimited(handle, path, "," if fmt == "csv" else "\t")
        elif fmt == "jsonl":
            rows = _rows_jsonl(handle, path)
        else:
            rows = _rows_lines(handle, path)
        for line_num, row in rows:
            for column in (text_column, label_column, group_column):
                if column is not None and column not in row:
                    raise DataError(
                        f"{path}, line {line_num}: no column {column!r}; the columns are "
                        f"{sorted(row)}. Pass text_column=/label_column= to name yours."
                    )
            text = "" if row[text_column] is None else str(row[text_column]).strip()
            if not text:
                skipped += 1
                continue
            texts.append(text)
            if label_column is not None:
                label = row[label_column]
                if label is None or str(label).strip() == "":
                    raise DataError(
                        f"{path}, line {line_num}: empty label in column {label_column!r}; "
                        "fill it in or drop the row."
                    )
                labels.append(str(label).strip())
            if group_column is not None:
                groups.append(str(row[group_column]))
    if skipped:
        log.info("%s: skipped %d rows with an empty text", path, skipped)
    if not texts:
        raise DataError(f"{path} holds no examples (no rows with a non-empty {text_column!r}).")
    return (
        texts,
        labels if label_column is not None else None,
        groups if group_column is not None else None,
    )


def encode_labels(
    raw: Sequence[str], class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to ids 0..K-1 and return (ids, class names).

    With ``class_names`` (a federation's agreed label space) each raw label must be one of
    them, or, if it is an integer, a valid index into them. Without, integer labels 0..K-1
    are kept as they are; other labels are numbered in sorted order.
    """
    if class_names is not None:
        names = tuple(str(c) for c in class_names)
        lookup = {n: i for i, n in enumerate(names)}
        ids = []
        for value in raw:
            if value in lookup:
                ids.append(lookup[value])
            elif value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
                ids.append(int(value))
            else:
                raise DataError(
                    f"Label {value!r} is not one of the classes {names}; fix the label or pass "
                    "the right class_names."
                )
        return np.asarray(ids, dtype=np.int64), names
    unique = sorted(set(raw))
    if all(u.lstrip("-").isdigit() for u in unique):
        values = sorted({int(u) for u in unique})
        if values == list(range(len(values))):
            return np.asarray([int(v) for v in raw], dtype=np.int64), tuple(map(str, values))
        unique = [str(v) for v in values]
    lookup = {n: i for i, n in enumerate(unique)}
    return np.asarray([lookup[v] for v in raw], dtype=np.int64), tuple(unique)


def _groups_to_ids(raw: Sequence[str] | None) -> np.ndarray | None:
    """Dense integer ids for a natural key (sorted order, so the mapping is stable)."""
    if raw is None:
        return None
    lookup = {g: i for i, g in enumerate(sorted(set(raw)))}
    return np.asarray([lookup[g] for g in raw], dtype=np.int64)


def read_labeled_split(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    class_names: Sequence[str] | None = None,
    fmt: str | None = None,
) -> tuple[Split, tuple[str, ...]]:
    """One labeled file as a :class:`Split` plus its class names."""
    texts, raw, groups = read_labeled_texts(
        path,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
        fmt=fmt,
    )
    assert raw is not None  # label_column is given
    try:
        labels, names = encode_labels(raw, class_names)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return Split(tuple(texts), labels, groups=_groups_to_ids(groups)), names


_DATA_SUFFIXES = (
    ".csv",
    ".tsv",
    ".jsonl",
    ".ndjson",
    ".csv.gz",
    ".tsv.gz",
    ".jsonl.gz",
    ".csv.bz2",
    ".tsv.bz2",
    ".jsonl.bz2",
)


def find_data_file(directory: Path, stems: Sequence[str]) -> Path | None:
    """The first ``<stem><suffix>`` that exists in ``directory`` (stems tried in order)."""
    for stem in stems:
        for suffix in _DATA_SUFFIXES:
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_text_classification_dir(
    directory: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Split:
    """A deployed node's private data: ``train.csv`` / ``.tsv`` / ``.jsonl`` in ``directory``.

    If there is no ``train.*`` but exactly one data file, that file is used. Pass the
    federation's ``class_names`` so that every node maps labels to the same ids.
    """
    split, _ = read_labeled_split(
        node_data_file(directory),
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
        class_names=class_names,
    )
    return split


def node_data_file(directory: str | Path) -> Path:
    """The ``train.*`` file in a node's data directory, or its one data file."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(
            f"Private data directory not found: {directory}. Create it and put a "
            "train.csv (columns text,label) inside."
        )
    path = find_data_file(directory, ["train"])
    if path is None:
        files = [p for p in sorted(directory.iterdir()) if p.name.endswith(_DATA_SUFFIXES)]
        if len(files) != 1:
            raise DataError(
                f"{directory}: expected a train.csv, train.tsv or train.jsonl (or exactly one "
                f"data file); found {[p.name for p in files] or 'none'}."
            )
        path = files[0]
    return path


def text_classification_dataset(
    name: str,
    train: Path,
    *,
    seed: int,
    test: Path | None = None,
    dev: Path | None = None,
    public: Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    class_names: Sequence[str] | None = None,
    fmt: str | None = None,
    test_fraction: float = 0.2,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
    info: dict[str, Any] | None = None,
) -> DatasetRoles:
    """Roles from labeled text files: a test file is the test set, a dev file the teacher set.

    Whatever role has no file of its own is drawn from ``train`` by a seeded, stratified
    split. A ``public`` file (labels ignored) is added to the public transfer set.
    """
    cols = {"text_column": text_column, "label_column": label_column, "fmt": fmt}
    pool, names = read_labeled_split(
        train, group_column=group_column, class_names=class_names, **cols
    )
    test_split = None if test is None else read_labeled_split(test, class_names=names, **cols)[0]
    dev_split = None if dev is None else read_labeled_split(dev, class_names=names, **cols)[0]
    roles = labeled_roles(
        name,
        "classification",
        names,
        pool,
        seed=seed,
        test=test_split,
        teacher=dev_split,
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={
            **(info or {}),
            "source": {
                "train": str(train),
                "test": str(test),
                "dev": str(dev),
                "public": str(public),
            },
        },
    )
    if public is not None:
        extra, _, _ = read_labeled_texts(
            public, text_column=text_column, label_column=None, fmt=fmt
        )
        assert roles.public.texts is not None
        merged = Split(roles.public.texts + tuple(extra), None)
        info2 = dict(roles.info)
        info2["sizes"] = {**info2["sizes"], "public": len(merged)}
        roles = replace(roles, public=merged, info=info2)
    return roles


__all__ = [
    "TEXT_FORMATS",
    "detect_format",
    "encode_labels",
    "find_data_file",
    "load_text_classification_dir",
    "node_data_file",
    "open_text",
    "read_labeled_split",
    "read_labeled_texts",
    "text_classification_dataset",
]
