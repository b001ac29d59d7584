"""`fedistill data` (the typer sub-app), run through typer's CliRunner, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.data import ensure_rotten_tomatoes
from simulations.data_cli import data_app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(data_app, list(args), env={"COLUMNS": "160"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_list() -> None:
    result = invoke("list")
    assert result.exit_code == 0
    for name in ("digits", "rotten-tomatoes", "python-docs", "seattle-temps", "sst2"):
        assert name in result.output


def test_describe_digits_dirichlet_with_plot(tmp_path: Path) -> None:
    plot = tmp_path / "partition.png"
    result = invoke(
        "describe",
        "digits",
        "--clients",
        "5",
        "--scheme",
        "dirichlet",
        "--alpha",
        "0.3",
        "--plot",
        str(plot),
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "private",
        "public",
        "teacher",
        "test",
        "719",
        "hidden (never used)",
        "dirichlet",
        "entropy",
    ):
        assert text in out, text
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_describe_rotten_tomatoes_natural() -> None:
    ensure_rotten_tomatoes()  # cached once (downloads only if missing)
    result = invoke("describe", "rotten-tomatoes", "--clients", "8", "--scheme", "natural")
    assert result.exit_code == 0, result.output
    assert "6,692" in result.output and "rotten=" in result.output and "fresh=" in result.output


@pytest.mark.parametrize("name", ["python-docs", "seattle-temps"])
def test_describe_unlabeled_tasks(name: str) -> None:
    result = invoke("describe", name, "--clients", "3")
    assert result.exit_code == 0, result.output
    assert "sizes min" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("describe", "imagenet"), "Known datasets", id="unknown dataset"),
        pytest.param(
            ("describe", "digits", "--scheme", "dirichlet", "--alpha", "0"),
            "alpha",
            id="alpha zero",
        ),
        pytest.param(
            ("describe", "digits", "--clients", "5000"),
            "at most 719 clients",
            id="too many clients",
        ),
        pytest.param(
            ("describe", "python-docs", "--scheme", "dirichlet"),
            "needs integer class labels",
            id="dirichlet on lm",
        ),
        pytest.param(("describe", "digits", "-o", "colour=red"), "colour", id="unknown option"),
        pytest.param(("describe", "digits", "-o", "nokey"), "key=value", id="bad option"),
    ],
)
def test_describe_errors_are_messages_not_tracebacks(args: tuple[str, ...], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 1
    assert "error:" in result.output and message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_option_values_are_parsed() -> None:
    result = invoke(
        "describe", "seattle-temps", "-o", "input_len=48", "-o", "horizon=12", "--clients", "2"
    )
    assert result.exit_code == 0, result.output
    assert "(48, 1)" in result.output and "(12, 1)" in result.output
