"""``fedistill simulate``: a federation on Flower's Simulation Engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.config import FedConfig
from common.errors import ConfigError
from simulations.cli_common import console, describe, fresh_out_dir, resolve_config

simulate_app = typer.Typer()


@simulate_app.command()
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
    fresh_out_dir(out_dir)
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
    from common.task import check_fits, prepare_features, prepare_task
    from simulations.reference import reference_for
    from simulations.report import finalize_summary, plot_run, read_metrics
    from simulations.runner import run_simulation

    # Load the data and build the tokenizer here first: an unknown or unusable dataset
    # then fails in seconds, before Flower starts, naming the value. The backbone's
    # features are computed here once, not by every simulated client at the same time.
    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    for family in (cfg.teacher_family, *cfg.student_families):
        check_fits(cfg, task, family)
    if cfg.backbone:
        with console.status(f"fetching backbone {cfg.backbone} and encoding the dataset with it "
                            "(once; cached for later runs)..."):
            prepare_features(cfg.dataset, cfg.seed, cfg.backbone, cfg.max_len,
                             cfg.encoder_dtype)

    console.print(f"[bold]fedistill simulate[/bold]: {cfg.dataset}, {cfg.num_clients} clients, "
                  f"{cfg.rounds} rounds, ε budget {cfg.epsilon}, students {cfg.students}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("starting Flower (teacher pre-training)...", total=cfg.rounds)

        def on_record(record: dict[str, Any]) -> None:
            progress.update(bar, completed=record["round"], description=describe(record))

        summary = run_simulation(cfg, num_cpus=num_cpus, num_gpus=num_gpus, verbose=verbose,
                                 on_record=on_record)
    out = Path(cfg.out_dir).resolve()
    summary["reference"] = reference_for(task.task)(cfg)
    summary = finalize_summary(out, summary)
    plot_run(out, read_metrics(out), cfg.epsilon)
    return summary
