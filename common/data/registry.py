"""Datasets by name: the built-in registry and file-based specs.

``load_dataset(name)`` accepts a registered name (``fedistill data list``), or a spec for
data the user brings:

- ``csv:PATH`` / ``tsv:PATH`` / ``jsonl:PATH``: labeled texts (``text_column=``,
  ``label_column=``); with ``task="forecast"`` a CSV is read as a time series instead;
- ``text:PATH``: a plain-text corpus (file, or folder of ``*.txt``) for language modelling;
- ``hf:NAME_OR_DIR``: Hugging Face ``datasets`` (optional; a ``save_to_disk`` folder
  loads offline);
- a bare path: a file (format by suffix) or a folder holding ``train.*`` (plus optional
  ``test.*``, ``dev.*``/``validation.*``, ``public.*``), a ``save_to_disk`` folder, or
  ``*.txt`` files.

Options are checked against the loader's keyword arguments before anything is read, so a
misspelt option is a ConfigError naming the accepted ones, not a TypeError.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from common.data.catalog import _REGISTRY, SPEC_PREFIXES, DatasetEntry, Loader
from common.data.roles import DatasetRoles
from common.errors import ConfigError, DataError


def _registry() -> dict[str, DatasetEntry]:
    # The built-ins register themselves (in catalog.py) when builtin.py is first imported.
    from common.data import builtin  # noqa: F401

    return _REGISTRY


def list_datasets() -> list[str]:
    """Names of the registered datasets (the shared-folder ones included, available or not)."""
    return sorted(_registry())


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry for ``name`` (DataError listing the known names if unknown)."""
    registry = _registry()
    if name not in registry:
        raise DataError(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(registry))}; or give "
            f"a file spec ({', '.join(p + 'PATH' for p in SPEC_PREFIXES)}) or a path."
        )
    return registry[name]


def call_with_options(loader: Loader, what: str, **kwargs: Any) -> DatasetRoles:
    """Call ``loader`` after checking every keyword is one it accepts."""
    params = inspect.signature(loader).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(
                f"{what}: unknown option(s) {unknown}; accepted options are {accepted}."
            )
    return loader(**kwargs)


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> DatasetRoles:
    """Build the four roles (private, public, teacher, test) of a dataset.

    Parameters
    ----------
    name
        A registered name (see :func:`list_datasets`) or a file spec (module docstring).
    seed
        Seed of every random split; the same seed gives the same roles (default: 0).
    cache_dir
        Where fetched/derived data is cached (default: $FEDISTILL_DATA_DIR, else
        ~/.cache/fedistill).
    **options
        Loader-specific options (split fractions, column names, window lengths, ...).
    """
    if not isinstance(name, str) or not name:
        raise DataError(f"A dataset name must be a non-empty string; got {name!r}.")
    if name in _registry():
        entry = _REGISTRY[name]
        return call_with_options(
            entry.loader, f"dataset {name!r}", seed=seed, cache_dir=cache_dir, **options
        )
    prefix = next((p for p in SPEC_PREFIXES if name.startswith(p)), None)
    if prefix is None and not Path(name).expanduser().exists():
        if "/" in name or "." in name:
            raise DataError(f"Dataset path not found: {name}. Check the path.")
        dataset_entry(name)  # raises the "unknown dataset" error with the known names
    return _load_spec(name, prefix, seed=seed, options=options)


def _load_spec(
    name: str, prefix: str | None, *, seed: int, options: dict[str, Any]
) -> DatasetRoles:
    from common.data import corpus, hf, loaders, timeseries

    target = name[len(prefix) :] if prefix else name
    path = Path(target).expanduser()
    kind = prefix[:-1] if prefix else None
    task = options.pop("task", None)
    if kind == "hf":
        return call_with_options(
            hf.hf_dataset, name, name=name, source=target, seed=seed, **options
        )
    if not path.exists():
        raise DataError(f"Dataset path not found: {path} (from spec {name!r}). Check the path.")
    if kind is None and path.is_dir():
        return _load_dir(name, path, seed=seed, task=task, options=options)
    if kind is None:
        kind = "text" if path.suffix.lower() == ".txt" else loaders.detect_format(path)
    if task == "forecast":
        if kind not in ("csv",):
            raise ConfigError(f"{name!r}: a time series must be a CSV file (csv:PATH).")
        return call_with_options(
            timeseries.time_series_dataset, name, name=name, path=path, seed=seed, **options
        )
    if kind == "text" or task == "lm":
        return call_with_options(
            corpus.text_corpus_dataset, name, name=name, path=path, seed=seed, **options
        )
    if task not in (None, "classification"):
        raise ConfigError(f"{name!r}: task must be classification, lm or forecast; got {task!r}.")
    options.setdefault("fmt", kind)
    return call_with_options(
        loaders.text_classification_dataset, name, name=name, train=path, seed=seed, **options
    )


def _load_dir(
    name: str, path: Path, *, seed: int, task: str | None, options: dict[str, Any]
) -> DatasetRoles:
    from common.data import corpus, hf, loaders

    if hf.is_hf_disk_dir(path):
        return call_with_options(
            hf.hf_dataset, name, name=name, source=str(path), seed=seed, **options
        )
    train = loaders.find_data_file(path, ["train"])
    if train is not None and task in (None, "classification"):
        return call_with_options(
            loaders.text_classification_dataset,
            name,
            name=name,
            train=train,
            seed=seed,
            test=loaders.find_data_file(path, ["test"]),
            dev=loaders.find_data_file(path, ["dev", "validation", "valid", "val"]),
            public=loaders.find_data_file(path, ["public"]),
            **options,
        )
    if any(path.glob("*.txt")) and task in (None, "lm"):
        return call_with_options(
            corpus.text_corpus_dataset, name, name=name, path=path, seed=seed, **options
        )
    raise DataError(
        f"{path}: cannot tell what dataset this folder holds. Expected train.csv/.tsv/.jsonl "
        "(optional test.*, dev.*, public.*), a Hugging Face save_to_disk folder, or *.txt files."
    )
