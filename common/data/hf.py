"""Text classification through Hugging Face ``datasets`` (an optional extra, imported lazily).

One family of the file loaders (:mod:`common.data.loaders` has labeled text files, whose
label encoding this reuses).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.loaders import encode_labels
from common.data.roles import DatasetRoles, Split, labeled_roles
from common.errors import DataError


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
