"""The run configuration: parsed once, bad keys and values fail naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import FedConfig, load_toml, parse_assignments
from common.errors import ConfigError

PRESETS = Path(__file__).resolve().parent.parent / "simulations" / "presets"


def test_defaults_round_trip_through_run_config() -> None:
    cfg = FedConfig()
    assert FedConfig.from_mapping(cfg.to_run_config()) == cfg


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"epsilon": 0}, "epsilon=0"),
        ({"epsilon": -1.0}, "epsilon=-1.0"),
        ({"rounds": 0}, "rounds=0"),
        ({"students": "transformer,gru"}, "'gru'"),
        ({"dataset-name": "x"}, "Unknown configuration key 'dataset-name'"),
        ({"aggregation": "krum"}, "aggregation='krum'"),
        ({"rounds": 2.5}, "rounds=2.5"),
        ({"dp": "maybe"}, "dp='maybe'"),
        ({"trim-fraction": 0.5}, "trim-fraction=0.5"),
        ({"min-replies": 11}, "min-replies=11"),
        ({"delta": 1.5}, "delta=1.5"),
    ],
    ids=["eps-zero", "eps-negative", "zero-rounds", "unknown-student", "unknown-key",
         "unknown-aggregation", "fractional-int", "bad-bool", "trim-too-big",
         "min-replies-too-big", "delta-too-big"],
)
def test_bad_configuration_names_key_and_value(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        FedConfig.from_mapping(values)
    assert fragment in str(info.value)


def test_every_preset_parses() -> None:
    names = sorted(p.stem for p in PRESETS.glob("*.toml"))
    assert {"default", "quick", "sst2"} <= set(names)
    for path in PRESETS.glob("*.toml"):
        FedConfig.from_mapping(load_toml(path))


def test_set_assignments_take_toml_literals() -> None:
    parsed = parse_assignments(["rounds=3", "students=lstm", "dp=false", "epsilon=1.5"])
    assert parsed == {"rounds": 3, "students": "lstm", "dp": False, "epsilon": 1.5}
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["rounds"])


def test_students_assigned_round_robin() -> None:
    cfg = FedConfig(students="transformer,lstm,cnn")
    assert [cfg.student_for(i) for i in range(4)] == ["transformer", "lstm", "cnn", "transformer"]


def test_pyproject_lists_every_run_config_key_with_its_default() -> None:
    import tomllib

    root = PRESETS.parent.parent
    listed = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert listed == FedConfig().to_run_config()


def test_simulate_refuses_an_unknown_dataset_before_flower_starts(tmp_path: Path) -> None:
    import subprocess
    import sys

    cli = Path(sys.executable).parent / "fedistill"
    proc = subprocess.run([str(cli), "simulate", "--preset", "quick", "--out",
                           str(tmp_path / "run"), "--set", "dataset='no-such-data'"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no-such-data" in proc.stdout and "Known datasets" in proc.stdout
    assert not (tmp_path / "run" / "superlink.log").exists()  # Flower never started
