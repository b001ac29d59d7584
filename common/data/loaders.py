"""File loaders, so that users bring their own data.

Formats: CSV / TSV / JSONL with a text and a label column (names configurable, optionally
bz2- or gzip-compressed), ``<label> <sentence>`` lines (SST-2 style), plain-text corpora,
CSV time series, and Hugging Face ``datasets`` (imported lazily: an optional extra).

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
    chunk_text,
    forecast_roles,
    labeled_roles,
    lm_roles,
)
from common.errors import DataError

log = logging.getLogger(__name__)

TEXT_FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "lines")
_SUFFIX_FORMAT = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_COMPRESSED = {".bz2": bz2.open, ".gz": gzip.open}
_TIME_COLUMNS = {"date", "time", "timestamp", "datetime", "ds"}
# csv's default field limit (128 KiB) is too small for long documents.
csv.field_size_limit(16 * 1024 * 1024)


# ------------------------------------------------------------------ opening files


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
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
    with _open_text(path) as handle:
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
    labels, names = encode_labels(raw, class_names)
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
    split, _ = read_labeled_split(
        path,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
        class_names=class_names,
    )
    return split


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


# ------------------------------------------------------------------ plain text corpora


def read_text_corpus(path: str | Path) -> str:
    """A plain-text corpus: one file, or every ``*.txt`` in a directory (sorted, joined)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{path} holds no *.txt files; put the corpus there as plain text.")
        return "\n\n".join(read_text_corpus(f) for f in files)
    with _open_text(path) as handle:
        text = handle.read()
    if not text.strip():
        raise DataError(f"{path} is empty; a text corpus needs some text.")
    return text


def text_corpus_dataset(
    name: str,
    path: Path,
    *,
    seed: int,
    doc_chars: int = 1000,
    group_docs: int = 20,
    test_tail: float | None = None,
    test_fraction: float = 0.1,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
    info: dict[str, Any] | None = None,
) -> DatasetRoles:
    """Language-modelling roles from plain text, cut into ~``doc_chars`` documents at lines.

    With ``test_tail`` (e.g. 0.1) the last share of the text is the test set (the usual
    split of Tiny Shakespeare); otherwise test documents are drawn at random.
    ``groups`` = document index // ``group_docs``: contiguous stretches of text, so the
    ``natural`` partition gives each client its own part of the corpus.
    """
    text = read_text_corpus(path)
    test_docs = None
    if test_tail is not None:
        if not 0.0 < test_tail < 1.0:
            raise DataError(f"test_tail must lie in (0, 1); got {test_tail}.")
        cut = text.rfind("\n", 0, int(len(text) * (1.0 - test_tail))) + 1 or int(
            len(text) * (1.0 - test_tail)
        )
        text, tail = text[:cut], text[cut:]
        test_docs = chunk_text(tail, doc_chars)
    docs = chunk_text(text, doc_chars)
    if group_docs < 1:
        raise DataError(f"group_docs must be at least 1; got {group_docs}.")
    return lm_roles(
        name,
        docs,
        seed=seed,
        groups=np.arange(len(docs)) // group_docs,
        test_documents=test_docs,
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={**(info or {}), "source": str(path), "doc_chars": doc_chars, "test_tail": test_tail},
    )


# ------------------------------------------------------------------ time series


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
    with _open_text(path) as handle:
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


# ------------------------------------------------------------------ Hugging Face datasets


def hf_dataset(
    name: str,
    source: str,
    *,
    seed: int,
    config: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    teacher_splits: Sequence[str] = ("validation", "dev"),
    test_fraction: float = 0.2,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """Text classification through Hugging Face ``datasets`` (optional; imported lazily).

    ``source`` is a directory written by ``save_to_disk`` (read offline with
    ``load_from_disk``) or a hub name (which needs the network at load time).
    """
    try:
        import datasets  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise DataError(
            f"{name!r} needs Hugging Face `datasets`, which is not installed: "
            "pip install datasets (or use a csv:/jsonl: file instead)."
        ) from exc
    path = Path(source).expanduser()
    try:
        if path.exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(source, config)
    except Exception as exc:  # datasets raises many types; all mean "cannot load"
        raise DataError(f"Cannot load Hugging Face dataset {source!r}: {exc}") from exc
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {train_split: loaded}
    if train_split not in parts:
        raise DataError(
            f"{source!r} has splits {sorted(parts)}; none is {train_split!r} (pass train_split=)."
        )
    train = parts[train_split]
    for column in (text_column, label_column):
        if column not in train.column_names:
            raise DataError(
                f"{source!r}: no column {column!r}; the columns are "
                f"{train.column_names}. Pass text_column=/label_column=."
            )
    feature = train.features[label_column]
    class_names = list(feature.names) if hasattr(feature, "names") else None

    def to_split(ds: Any, names: Sequence[str] | None) -> tuple[Split, tuple[str, ...]]:
        raw = [str(v) for v in ds[label_column]]
        labels, found = encode_labels(raw, names)
        return Split(tuple(str(t) for t in ds[text_column]), labels), found

    pool, names = to_split(train, class_names)
    test = to_split(parts[test_split], names)[0] if test_split in parts else None
    teacher_key = next((s for s in teacher_splits if s in parts), None)
    teacher = to_split(parts[teacher_key], names)[0] if teacher_key else None
    return labeled_roles(
        name,
        "classification",
        names,
        pool,
        seed=seed,
        test=test,
        teacher=teacher,
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={"source": f"hf:{source}"},
    )


def is_hf_disk_dir(path: Path) -> bool:
    """Whether ``path`` looks like a ``save_to_disk`` folder."""
    return any(
        (path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")
    )


__all__ = [
    "TEXT_FORMATS",
    "detect_format",
    "encode_labels",
    "find_data_file",
    "hf_dataset",
    "is_hf_disk_dir",
    "load_text_classification_dir",
    "read_labeled_split",
    "read_labeled_texts",
    "read_text_corpus",
    "read_time_series_csv",
    "text_classification_dataset",
    "text_corpus_dataset",
    "time_series_dataset",
]
