"""File loaders: users' own CSV / TSV / JSONL / text / time-series / HF data, and every
malformed input turning into a DataError that names the file (and line) and what to do."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import numpy as np
import pytest

from common.data import (
    encode_labels,
    load_dataset,
    load_text_classification_dir,
    read_labeled_texts,
    read_time_series_csv,
)
from common.errors import ConfigError, DataError

POS = [
    "a great film",
    "wonderful acting",
    "loved it",
    "superb",
    "a joy",
    "brilliant work",
    "moving and funny",
    "top notch",
    "fine cast",
    "sharp script",
]
NEG = [
    "a dull mess",
    "boring",
    "awful plot",
    "badly acted",
    "a chore",
    "tedious",
    "flat and long",
    "weak",
    "clumsy",
    "forgettable",
]


def rows(n_repeat: int = 3) -> list[tuple[str, str]]:
    return [(t, "pos") for t in POS * n_repeat] + [(t, "neg") for t in NEG * n_repeat]


def write_csv(
    path: Path,
    data: list[tuple[str, str]],
    sep: str = ",",
    header: tuple[str, str] = ("review", "sentiment"),
) -> Path:
    lines = [sep.join(header)] + [
        f'"{t}"{sep}{y}' if sep == "," else f"{t}{sep}{y}" for t, y in data
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, data: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in data))
    return path


COLS = {"text_column": "review", "label_column": "sentiment"}


@pytest.mark.parametrize(
    ("spec", "writer", "options"),
    [
        pytest.param("csv", lambda p: write_csv(p / "d.csv", rows()), COLS, id="csv"),
        pytest.param("tsv", lambda p: write_csv(p / "d.tsv", rows(), sep="\t"), COLS, id="tsv"),
        pytest.param("jsonl", lambda p: write_jsonl(p / "d.jsonl", rows()), {}, id="jsonl"),
        pytest.param("", lambda p: write_jsonl(p / "d.jsonl", rows()), {}, id="bare path"),
    ],
)
def test_labeled_file_specs(tmp_path: Path, spec: str, writer, options: dict) -> None:
    path = writer(tmp_path)
    name = f"{spec}:{path}" if spec else str(path)
    roles = load_dataset(name, seed=3, **options)
    assert roles.task == "classification" and roles.class_names == ("neg", "pos")
    assert sum(roles.sizes().values()) == 60
    assert roles.public.labels is None
    assert set(roles.test.texts) <= set(POS + NEG)
    again = load_dataset(name, seed=3, **options)
    assert again.private.texts == roles.private.texts


def test_dir_with_train_test_dev_public(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", rows(3))
    write_jsonl(tmp_path / "test.jsonl", rows(1))
    write_jsonl(tmp_path / "dev.jsonl", rows(1)[:6])
    (tmp_path / "public.jsonl").write_text(json.dumps({"text": "unlabeled extra"}) + "\n")
    roles = load_dataset(str(tmp_path), public_fraction=0.25)
    sizes = roles.sizes()
    assert sizes["test"] == 20 and sizes["teacher"] == 6
    # public: 25% of each class's 30 train rows rounds to 8 (x2 classes) + the public file.
    assert sizes["public"] == 16 + 1 and sizes["private"] == 44
    assert "unlabeled extra" in roles.public.texts


def test_private_node_directory(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", rows(1), header=("text", "label"))
    split = load_text_classification_dir(tmp_path, class_names=("neg", "pos"))
    assert len(split) == 20 and split.labels.tolist() == [1] * 10 + [0] * 10
    # Integers index the agreed classes; an unknown label is named.
    (tmp_path / "train.csv").write_text("text,label\nhello,1\nbye,0\n")
    assert load_text_classification_dir(tmp_path, class_names=("neg", "pos")).labels.tolist() == [
        1,
        0,
    ]
    (tmp_path / "train.csv").write_text("text,label\nhello,meh\n")
    with pytest.raises(DataError, match="'meh' is not one of the classes"):
        load_text_classification_dir(tmp_path, class_names=("neg", "pos"))
    with pytest.raises(DataError, match="Private data directory not found"):
        load_text_classification_dir(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="expected a train.csv"):
        load_text_classification_dir(empty)


def test_encode_labels() -> None:
    assert encode_labels(["1", "0", "1"])[0].tolist() == [1, 0, 1]
    ids, names = encode_labels(["b", "a", "c"])
    assert ids.tolist() == [1, 0, 2] and names == ("a", "b", "c")
    ids, names = encode_labels(["5", "7"])
    assert ids.tolist() == [0, 1] and names == ("5", "7")


MALFORMED = [
    pytest.param(
        "bad.csv",
        'text,label\n"unclosed quote,1\nnext,0\n',
        {},
        "malformed CSV|line",
        id="csv unbalanced quote",
    ),
    pytest.param(
        "bad.csv",
        "text,label\nhello,1,extra\n",
        {},
        "more fields than the header",
        id="csv extra field",
    ),
    pytest.param("bad.csv", "", {}, "no header row", id="csv empty"),
    pytest.param("bad.csv", "text,label\n", {}, "holds no examples", id="csv header only"),
    pytest.param(
        "bad.csv", "text,label\nhello,\n", {}, "line 2: empty label", id="csv empty label"
    ),
    pytest.param(
        "bad.tsv",
        "sentence\tlabel\nhello\t1\n",
        {},
        "no column 'text'",
        id="tsv missing text column",
    ),
    pytest.param(
        "bad.csv", "text,y\nhello,1\n", {}, "no column 'label'", id="csv missing label column"
    ),
    pytest.param(
        "bad.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label"\n',
        {},
        "line 2: not valid JSON",
        id="jsonl broken line",
    ),
    pytest.param("bad.jsonl", '["a", 1]\n', {}, "expected a JSON object", id="jsonl not object"),
    pytest.param(
        "bad.txt",
        "1 fine\nnolabel\n",
        {"fmt": "lines"},
        "line 2: expected",
        id="lines without label",
    ),
    pytest.param("bad.xml", "<a/>", {}, "Cannot tell the format", id="unknown suffix"),
]


@pytest.mark.parametrize(("filename", "content", "options", "match"), MALFORMED)
def test_malformed_labeled_files(
    tmp_path: Path, filename: str, content: str, options: dict, match: str
) -> None:
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match) as info:
        read_labeled_texts(path, **options)
    assert str(path) in str(info.value), "the message must name the file"


def test_undecodable_and_compressed_files(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_labeled_texts(latin)
    good = tmp_path / "good.csv.bz2"
    good.write_bytes(bz2.compress(b"text,label\nhello,1\n"))
    assert read_labeled_texts(good)[0] == ["hello"]
    broken = tmp_path / "broken.csv.bz2"
    broken.write_bytes(b"BZh91AY&SY garbage")
    with pytest.raises(DataError, match="Cannot read"):
        read_labeled_texts(broken)
    with pytest.raises(DataError, match="not found"):
        read_labeled_texts(tmp_path / "missing.csv")


def test_text_corpus(tmp_path: Path) -> None:
    text = "".join(f"line {i} of a small corpus about ships and the sea\n" for i in range(400))
    (tmp_path / "corpus.txt").write_text(text)
    roles = load_dataset(f"text:{tmp_path / 'corpus.txt'}", doc_chars=300, test_tail=0.1)
    assert roles.task == "lm" and roles.test.texts[-1].rstrip().endswith("sea")
    assert "line 399" in roles.test.texts[-1]
    total = sum(
        len(t) for r in ("private", "public", "teacher", "test") for t in roles.role(r).texts
    )
    assert total >= 0.98 * len(text)
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text(text)
    (folder / "b.txt").write_text(text)
    assert load_dataset(str(folder), doc_chars=500).task == "lm"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"text:{tmp_path / 'empty.txt'}")


def write_series(path: Path, n: int = 600) -> Path:
    t = np.arange(n)
    lines = ["date,load,temp"] + [f"2020-01-01 {i},{np.sin(i / 10):.4f},{i * 0.01:.3f}" for i in t]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_time_series_csv(tmp_path: Path) -> None:
    path = write_series(tmp_path / "s.csv")
    series, names = read_time_series_csv(path)
    assert names == ["load", "temp"] and series.shape == (600, 2)
    roles = load_dataset(
        f"csv:{path}", task="forecast", input_len=24, horizon=8, target_columns=["load"]
    )
    assert roles.task == "forecast"
    assert roles.private.features.shape[1:] == (24, 2)
    assert roles.private.labels.shape[1:] == (8, 1)
    assert roles.public.labels is None
    # Windows are contiguous: the target follows the input in the (scaled) series.
    mean, std = roles.info["scaler"]["mean"][0], roles.info["scaler"]["std"][0]
    first_target = roles.private.labels[0, 0, 0] * std + mean
    assert first_target == pytest.approx(series[24, 0], abs=1e-4)
    # Scaling uses only the public and teacher segments (no private statistics).
    lo, hi = roles.info["segment_rows"]["public"][0], roles.info["segment_rows"]["teacher"][1]
    assert mean == pytest.approx(series[lo:hi, 0].mean())


@pytest.mark.parametrize(
    ("content", "options", "match"),
    [
        pytest.param("date,x\n1,2\n2,abc\n", {}, "line 3: non-numeric", id="non-numeric"),
        pytest.param("date,x\n1,2\n2\n", {}, "line 3: 1 fields", id="short row"),
        pytest.param("date,x\n", {}, "no rows", id="header only"),
        pytest.param("", {}, "needs a header", id="empty"),
        pytest.param("date,x\n1,2\n", {"columns": ["y"]}, r"column\(s\) \['y'\]", id="bad column"),
        pytest.param("t,x\n1,2\n", {"time_column": "date"}, "no time column", id="bad time col"),
    ],
)
def test_malformed_series(tmp_path: Path, content: str, options: dict, match: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_time_series_csv(path, **options)


def test_series_errors_through_load_dataset(tmp_path: Path) -> None:
    path = write_series(tmp_path / "s.csv", n=100)
    with pytest.raises(DataError, match="shorter than one window"):
        load_dataset(f"csv:{path}", task="forecast")
    with pytest.raises(DataError, match=r"target column\(s\) \['nope'\]"):
        load_dataset(
            f"csv:{path}", task="forecast", input_len=4, horizon=2, target_columns=["nope"]
        )
    with pytest.raises(ConfigError, match="time series must be a CSV"):
        load_dataset(f"jsonl:{path}", task="forecast")


def test_unusable_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(DataError, match="cannot tell what dataset"):
        load_dataset(str(tmp_path))


def test_hugging_face_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip(
        "datasets", reason="Hugging Face `datasets` is not installed (optional extra)"
    )
    data = rows(2)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def make(part: list[tuple[str, str]]):
        return datasets.Dataset.from_dict(
            {"text": [t for t, _ in part], "label": [int(y == "pos") for _, y in part]},
            features=features,
        )

    dd = datasets.DatasetDict({"train": make(data), "test": make(data[:10])})
    dd.save_to_disk(str(tmp_path / "hf"))
    for spec in (f"hf:{tmp_path / 'hf'}", str(tmp_path / "hf")):
        roles = load_dataset(spec)
        assert roles.class_names == ("neg", "pos")
        assert roles.sizes()["test"] == 10
        assert sum(roles.sizes().values()) == 50


def test_hf_missing_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_datasets(name: str, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match="pip install datasets"):
        load_dataset("hf:imdb")
