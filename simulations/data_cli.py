"""``fedistill data``: list the datasets and describe one, offline.

``describe`` loads a dataset's four roles, prints their sizes and class balance, and
partitions the private pool as a simulation would, printing per-client statistics (and,
with ``--plot``, saving a bar chart), so a user can see a non-IID setting before running it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from common.data import (
    ROLE_NAMES,
    SCHEMES,
    DatasetRoles,
    dataset_entry,
    list_datasets,
    load_dataset,
    partition,
    partition_stats,
    partition_table,
    plot_partition,
    summarize_partition,
)
from common.errors import ConfigError, FedistillError

data_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Inspect the datasets: the four roles, class balance and client partitions (offline).",
)
console = Console()


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=1)


@data_app.command("list")
def list_command() -> None:
    """List the registered datasets (shared-folder ones marked when absent)."""
    from common.data.builtin import shared_data_dir

    table = Table(title="Datasets")
    for column in ("name", "task", "description", "available"):
        table.add_column(column)
    root = shared_data_dir()
    for name in list_datasets():
        entry = dataset_entry(name)
        ok = entry.shared is None or (root / entry.shared).is_dir()
        where = "offline" if entry.shared is None else f"{root / entry.shared}"
        table.add_row(
            name,
            entry.task,
            entry.description,
            f"[green]yes[/green] ({where})" if ok else f"[red]no[/red] ({where} absent)",
        )
    console.print(table)
    console.print("Also: csv:PATH, tsv:PATH, jsonl:PATH, text:PATH, hf:NAME_OR_DIR, or a folder.")


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` loader options; values parsed as int, float or bool where they look so."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects key=value; got {pair!r}.")
        value: Any = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        options[key.strip().replace("-", "_")] = value
    return options


def _roles_table(roles: DatasetRoles) -> Table:
    table = Table(title=f"{roles.name} ({roles.task})")
    table.add_column("role")
    table.add_column("examples", justify="right")
    table.add_column("labels")
    table.add_column("shape / characters")
    has_classes = roles.task in ("classification", "image")
    for role in ROLE_NAMES:
        split = roles.role(role)
        if split.labels is None:
            hidden = role == "public" and roles.task != "lm"
            balance = "hidden (never used)" if hidden else "none"
        elif has_classes:
            counts = np.bincount(split.labels, minlength=roles.num_classes)
            balance = " ".join(f"{n}={c}" for n, c in zip(roles.class_names, counts, strict=True))
        else:
            balance = f"targets {tuple(split.labels.shape[1:])}"
        if split.features is not None:
            shape = f"features {tuple(split.features.shape[1:])}"
        else:
            shape = f"{sum(len(t) for t in split.texts or ()):,} chars"
        table.add_row(role, f"{len(split):,}", balance, shape)
    return table


@data_app.command()
def describe(
    name: Annotated[str, typer.Argument(help="A registered dataset or a file spec.")],
    clients: Annotated[int, typer.Option(help="Clients to partition the private pool into.")] = 10,
    scheme: Annotated[str, typer.Option(help=f"Partition scheme: {', '.join(SCHEMES)}.")] = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (> 0).")] = 0.5,
    shards_per_client: Annotated[int, typer.Option(help="Shards per client.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the splits and the partition.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Save a partition bar chart here.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Loader option key=value (repeatable)."),
    ] = None,
) -> None:
    """Sizes of the four roles, class balance and the private pool's partition."""
    try:
        roles = load_dataset(name, seed=seed, **_parse_options(option or []))
        private = roles.private
        labels = private.labels if roles.task in ("classification", "image") else None
        parts = partition(
            labels if labels is not None else len(private),
            clients,
            scheme=scheme,  # type: ignore[arg-type]
            alpha=alpha,
            shards_per_client=shards_per_client,
            groups=private.groups,
            seed=seed,
        )
        stats = partition_stats(parts, labels, num_classes=roles.num_classes or None)
    except FedistillError as exc:
        raise _fail(exc) from exc
    console.print(_roles_table(roles))
    title = f"private pool: {scheme}, {clients} clients"
    if scheme == "dirichlet":
        title += f" (alpha={alpha})"
    console.print(partition_table(stats, class_names=roles.class_names or None, title=title))
    summary = summarize_partition(stats)
    line = (
        f"sizes min {summary['size_min']:.0f} / mean {summary['size_mean']:.1f} / "
        f"max {summary['size_max']:.0f}"
    )
    if "mean_label_entropy" in summary:
        line += f"; mean label entropy {summary['mean_label_entropy']:.2f} bits"
    console.print(line)
    if plot is not None:
        path = plot_partition(stats, plot, class_names=roles.class_names or None, title=title)
        console.print(f"Partition plot written to {path}")
