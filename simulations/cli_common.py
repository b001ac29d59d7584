"""What the ``fedistill`` sub-commands share: the console, presets and run directories.

The sub-command modules (simulate_cli, deploy_cli, robustness, ...) import from here and
never from ``simulations.cli``, which only assembles them.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from common.config import FedConfig, load_toml, parse_assignments
from common.errors import ConfigError

console = Console()


def preset_names() -> list[str]:
    folder = resources.files("simulations") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def resolve_config(preset: str | None, config: Path | None, sets: list[str],
                   out: Path | None) -> FedConfig:
    """Defaults < preset (or --config file) < --set overrides < --out; validated once."""
    values: dict[str, Any] = {}
    if config is not None:
        values.update(load_toml(config))
    else:
        name = preset or "default"
        path = resources.files("simulations") / "presets" / f"{name}.toml"
        if not path.is_file():
            known = ", ".join(preset_names())
            raise ConfigError(f"Unknown preset {name!r}; known presets: {known}.")
        values.update(load_toml(Path(str(path))))
    values.update(parse_assignments(sets))
    if out is not None:
        values["out-dir"] = str(out)
    elif "out-dir" not in values:
        values["out-dir"] = str(Path("runs") / (preset or (config.stem if config else "default")))
    return FedConfig.from_mapping(values)


def fresh_out_dir(out: Path) -> None:
    """Start a fresh run in ``out``: clear an earlier fedistill run, refuse anything else."""
    if out.exists() and any(out.iterdir()):
        if not (out / "run_config.toml").exists():
            raise ConfigError(f"--out {out} is not empty and holds no fedistill run; "
                              "choose an empty or new directory.")
        console.print(f"[yellow]Replacing the earlier run in {out}[/yellow]")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def describe(record: dict[str, Any]) -> str:
    """One line for a round's record in ``metrics.jsonl`` (the progress bar, node logs)."""
    name = record.get("metric", "accuracy")  # forecasts: mse
    label = "" if name == "accuracy" else f" {name}"
    text = f"round {record['round']}:{label} teacher {record[f'teacher_{name}']:.3f}"
    if f"ensemble_{name}" in record:
        text += f" ensemble {record[f'ensemble_{name}']:.3f}"
    if "epsilon_max" in record:
        text += f" ε_max {record['epsilon_max']:.2f}"
    if record.get("round", 0) > 0:
        text += f" · replies {record.get('replies')}/{record.get('sampled')}"
        if record.get("rejected"):
            text += f" · rejected {len(record['rejected'])}"
        if record.get("declined"):  # replied without a private step (budget, already spent)
            text += f" · declined the private step: {', '.join(record['declined'])}"
    return text
