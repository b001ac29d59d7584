"""``fedistill compress RUN_DIR --out DIR``: a finished run's teacher as a deployable model.

Runs the recipes (common/compress/recipes.py) on the run's final teacher, end to end on
raw text, and writes ``compression.json`` (every measured row), ``COMPRESSION.md`` (the
table and the target verdicts) and ``pareto.png`` into ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from common.compress import CompressConfig, DistilSettings, LatencySettings, run_recipes
from simulations.cli_common import console
from simulations.compress_report import pareto_plot, table, verdict_lines, verdicts

compress_app = typer.Typer()


@compress_app.command()
def compress(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's --out folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the table, JSON and plot.")],
    recipe: Annotated[list[str] | None, typer.Option(
        help="Steps joined by '+', e.g. student=3+vocab+int8 (repeat; default: a set "
             "for the teacher's kind).")] = None,
    source: Annotated[str, typer.Option(
        help="What a student learns from: teacher or ensemble (the clients' students).")]
        = "teacher",
    threads: Annotated[int, typer.Option(help="CPU threads while timing.")] = 1,
    reps: Annotated[int, typer.Option(help="Timed calls at batch 1 (batch 32: reps/8).")]
        = 200,
    epochs: Annotated[int, typer.Option(
        help="Most distillation epochs on the public set; the one kept is chosen on a "
             "held-out part of it.")] = 3,
    validation: Annotated[float, typer.Option(
        help="Share of the public texts held out to choose the epoch.")] = 0.1,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the students' held-out split and shuffles (default: the run's).")]
        = None,
    test_limit: Annotated[int, typer.Option(help="Measure on the first N test texts "
                                                 "(0 = all).")] = 0,
) -> None:
    """Prune, quantize, factorize and distil a run's teacher; measure every step."""
    from simulations.compress_run import load_subject, run_config

    cfg = run_config(run_dir)  # refuses a missing folder or teacher before any work
    config = CompressConfig(
        recipes=tuple(recipe or ()), test_limit=test_limit,
        latency=LatencySettings(reps_batch1=reps, reps_batch32=max(reps // 8, 3),
                                threads=threads),
        distil=DistilSettings(epochs=epochs, validation=validation,
                              seed=cfg.seed if seed is None else seed))
    subject = load_subject(run_dir, source)
    rows = run_recipes(subject, config, progress=lambda r: console.print(f"· {r}"))
    result = {"run_dir": str(run_dir), "source": source, "teacher_family": cfg.teacher_family,
              "backbone": cfg.backbone, "dataset": cfg.dataset,
              "settings": settings_record(config), "rows": rows, "verdicts": verdicts(rows)}
    write_outputs(result, out)
    console.print("\n".join(table(rows) + [""] + verdict_lines(rows)))
    console.print(f"Wrote {out}/compression.json, COMPRESSION.md and pareto.png")


def settings_record(config: CompressConfig) -> dict[str, Any]:
    """How the numbers were taken (the page states it next to the table)."""
    return {"threads": config.latency.threads, "reps_batch1": config.latency.reps_batch1,
            "reps_batch32": config.latency.reps_batch32, "warmup": config.latency.warmup,
            "distil_epochs": config.distil.epochs, "distil_lr": config.distil.lr,
            "distil_validation": config.distil.validation, "distil_seed": config.distil.seed,
            "test_limit": config.test_limit, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            # the machine may be shared: its load while the numbers were taken
            "load_average": os.getloadavg()[0]}


def write_outputs(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compression.json").write_text(json.dumps(result, indent=1) + "\n")
    title = f"{result['dataset']}: compressing the {result['teacher_family']} teacher"
    pareto_plot(result["rows"], out / "pareto.png", title)
    (out / "COMPRESSION.md").write_text("\n".join(
        [f"# {title}", ""] + table(result["rows"]) + [""] + verdict_lines(result["rows"]))
        + "\n")
