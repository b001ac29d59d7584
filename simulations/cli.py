"""The ``fedistill`` command line."""

from __future__ import annotations

import os
import shutil
import signal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.config import FedConfig, load_toml, parse_assignments
from common.errors import ConfigError, FedistillError
from simulations.audit_cli import audit_app
from simulations.data_cli import data_app
from simulations.deploy_cli import register_deploy_commands
from simulations.robustness import register_robustness_command

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Privacy-preserving federated distillation on Flower and Opacus.",
)
app.add_typer(data_app, name="data", help="Inspect the registered datasets.")
app.add_typer(audit_app, name="audit", help="Audit privacy: verify ledgers, report ε, MIA.")
register_deploy_commands(app)  # certs, coordinator, node, node-data (simulations/deploy_cli.py)
register_robustness_command(app)  # robustness (simulations/robustness.py)
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


def _fresh_out_dir(out: Path) -> None:
    """Start a fresh run in ``out``: clear an earlier fedistill run, refuse anything else."""
    if out.exists() and any(out.iterdir()):
        if not (out / "run_config.toml").exists():
            raise ConfigError(f"--out {out} is not empty and holds no fedistill run; "
                              "choose an empty or new directory.")
        console.print(f"[yellow]Replacing the earlier run in {out}[/yellow]")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


@app.command()
def simulate(
    preset: Annotated[str | None, typer.Option(help="A preset in simulations/presets.")] = None,
    config: Annotated[Path | None, typer.Option(help="A TOML file of run-config keys.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="key=value override.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/PRESET).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Run a baseline instead.")] = None,
    num_cpus: Annotated[int, typer.Option(help="CPUs per simulated client.")] = 1,
    num_gpus: Annotated[float, typer.Option(help="GPUs per simulated client.")] = 0.0,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log.")] = False,
    node_secrets: Annotated[Path | None, typer.Option(
        help="An earlier run directory whose simulated nodes' secrets to reuse: the DP "
             "sampling and noise, so the whole run, then repeat it exactly.")] = None,
) -> None:
    """Run a federation on Flower's Simulation Engine and report it."""
    if preset and config:
        raise ConfigError("Give --preset or --config, not both.")
    cfg = resolve_config(preset, config, set_ or [], out)
    out_dir = Path(cfg.out_dir)
    secrets = _read_node_secrets(node_secrets, cfg.num_clients) if node_secrets else {}
    _fresh_out_dir(out_dir)
    _write_node_secrets(out_dir, secrets)
    if baseline:
        from simulations.baselines import run_baseline

        summary = run_baseline(baseline, cfg, console=console)
    else:
        summary = _simulate(cfg, num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose)
    from simulations.report import summary_table

    console.print(summary_table(summary))
    console.print(f"Results in {out_dir.resolve()}")


def _read_node_secrets(run: Path, num_clients: int) -> dict[str, bytes]:
    """Each simulated node's secret in ``run`` (read before --out may replace that run)."""
    from common.privacy.secrets import NODE_SECRET_FILE, load_or_create_secret

    found = {}
    for k in range(num_clients):
        path = run / "clients" / f"client-{k}" / NODE_SECRET_FILE
        if not path.is_file():
            raise ConfigError(f"--node-secrets {run}: no {path}; give a run directory of "
                              f"`fedistill simulate` with {num_clients} clients.")
        found[f"client-{k}"] = load_or_create_secret(path)
    return found


def _write_node_secrets(out: Path, secrets: dict[str, bytes]) -> None:
    from common.privacy.secrets import NODE_SECRET_FILE

    for client, secret in secrets.items():
        path = out / "clients" / client / NODE_SECRET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)


def _simulate(cfg: FedConfig, *, num_cpus: int, num_gpus: float, verbose: bool) -> dict[str, Any]:
    from common.task import prepare_features, prepare_task
    from simulations.reference import tfidf_reference
    from simulations.report import finalize_summary, plot_run, read_metrics
    from simulations.runner import run_simulation

    # Load the data and build the tokenizer here first: an unknown or unusable dataset
    # then fails in seconds, before Flower starts, naming the value. The backbone's
    # features are computed here once, not by every simulated client at the same time.
    prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    if cfg.backbone:
        with console.status(f"encoding the dataset with backbone {cfg.backbone} (once; "
                            "cached for later runs)..."):
            prepare_features(cfg.dataset, cfg.seed, cfg.backbone, cfg.max_len)

    console.print(f"[bold]fedistill simulate[/bold]: {cfg.dataset}, {cfg.num_clients} clients, "
                  f"{cfg.rounds} rounds, ε budget {cfg.epsilon}, students {cfg.students}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("starting Flower (teacher pre-training)...", total=cfg.rounds)

        def on_record(record: dict[str, Any]) -> None:
            progress.update(bar, completed=record["round"], description=_describe(record))

        summary = run_simulation(cfg, num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose,
                                 on_record=on_record)
    out = Path(cfg.out_dir).resolve()
    summary["reference"] = tfidf_reference(cfg)
    summary = finalize_summary(out, summary)
    plot_run(out, read_metrics(out), cfg.epsilon)
    return summary


def _describe(record: dict[str, Any]) -> str:
    text = f"round {record['round']}: teacher {record['teacher_accuracy']:.3f}"
    if "ensemble_accuracy" in record:
        text += f" ensemble {record['ensemble_accuracy']:.3f}"
    if "epsilon_max" in record:
        text += f" ε_max {record['epsilon_max']:.2f}"
    return text


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point: project errors become one clear line and exit code 2."""
    # SIGTERM unwinds like Ctrl-C, so the runner still stops the processes it started.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # standalone_mode=False returns a command's typer.Exit code instead of exiting
        code = app(standalone_mode=False)
    except FedistillError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
