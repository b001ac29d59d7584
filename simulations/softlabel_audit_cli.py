"""``fedistill audit softlabels``: the command line and terminal table of the soft-label audit.

The experiment is :func:`simulations.softlabel_audit.run_softlabel_audit`; this module
reads the run's settings (a preset plus ``--set``), builds the
:class:`~simulations.softlabel_audit.SoftlabelAuditConfig`, prints the result and exits
with the verdict.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated

import typer

from common.config import FedConfig
from common.errors import ConfigError, FedistillError
from simulations.softlabel_audit import AUDITORS, SoftlabelAuditConfig, run_softlabel_audit
from simulations.softlabel_audit_stats import SoftlabelAuditResult


def load_run_config(preset: str, sets: list[str]) -> FedConfig:
    """A preset name (simulations/presets) or a TOML path, then ``--set`` overrides."""
    from importlib import resources

    from common.config import load_toml, parse_assignments

    path = Path(preset)
    if not path.suffix:
        path = Path(str(resources.files("simulations") / "presets" / f"{preset}.toml"))
    if not path.is_file():
        raise ConfigError(f"--preset {preset!r} is neither a preset in simulations/presets "
                          "nor a TOML file.")
    return FedConfig.from_mapping({**load_toml(path), **parse_assignments(sets)})


def _result_table(result: SoftlabelAuditResult):  # noqa: ANN202 - a rich Table
    from rich.table import Table

    claim = ("∞ (no DP)" if not math.isfinite(result.epsilon_claimed)
             else f"{result.epsilon_claimed:.4g}")
    table = Table(title=f"Soft-label audit: claimed ε = {claim} (δ = "
                        f"{result.config['run']['delta']:g}), {result.family} student, "
                        f"{result.config['canaries']} canaries, {result.rounds} round(s)")
    table.add_column("auditor", no_wrap=True)
    for column in ("AUC", "TPR@1%FPR", "right / guesses", "ε lower bound", "ceiling"):
        table.add_column(column, justify="right")
    for a in result.auditors:
        table.add_row(a.name, f"{a.attack.auc:.3f}", f"{a.attack.tpr_at_1pct_fpr:.3f}",
                      f"{a.audit.correct} / {a.audit.guesses}",
                      f"{a.audit.epsilon_lower_bound:.3f}", f"{a.ceiling:.3f}")
    return table


def softlabel_command(
    preset: Annotated[str, typer.Option(
        help="The run's settings: a preset in simulations/presets or a TOML file.")] = "default",
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a run setting, KEY=VALUE (e.g. dp-trainable=all, dp=false, "
                      "epsilon=1, rounds=1); repeatable.")] = None,
    client: Annotated[int, typer.Option(help="Partition id whose private data and student "
                                             "family stand in.")] = 0,
    family: Annotated[str | None, typer.Option(
        help="Student family (default: the run's for --client).")] = None,
    canaries: Annotated[int, typer.Option(help="m canaries, each in the private data with "
                                               "prob. 1/2.")] = 256,
    canary_kind: Annotated[str, typer.Option(
        help="rare: unique sequences of rare tokens; text: real public texts.")] = "rare",
    canary_tokens: Annotated[int, typer.Option(help="Tokens per rare canary.")] = 8,
    canary_label: Annotated[str, typer.Option(
        help="random: a public coin per canary; flip: the teacher's least likely "
             "class.")] = "random",
    actual_noise_multiplier: Annotated[float | None, typer.Option(
        help="σ given to dp_train (default: the planned σ). Lower it to check that the "
             "audit catches a client that adds less noise than it claims.")] = None,
    guesses: Annotated[int, typer.Option(help="Guesses per side, fixed in advance (0 = "
                                              "canaries // 4).")] = 0,
    confidence: Annotated[float, typer.Option(help="Confidence of the larger bound.")] = 0.95,
    teacher_epochs: Annotated[int, typer.Option(help="Epochs of the fixed tiny-CNN "
                                                     "teacher.")] = 3,
    secret_seed: Annotated[int | None, typer.Option(
        help="Seed of the client's secret, for a reproducible run (default: fresh, "
             "unknown to everyone).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write softlabel_audit.json here.")] = None,
) -> None:
    """Audit the soft labels a client sends: canaries in its private data, one run.

    Exits 1 when an ε lower bound exceeds the claimed ε, 2 on bad input.
    """
    import torch
    from rich.console import Console

    from simulations.audit_output import finish_audit

    console = Console()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
    warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook.*")
    try:
        cfg = SoftlabelAuditConfig(
            run=load_run_config(preset, set_ or []), client=client, family=family,
            canaries=canaries, canary_kind=canary_kind, canary_tokens=canary_tokens,
            canary_label=canary_label,
            actual_noise_multiplier=actual_noise_multiplier, guesses=guesses,
            confidence=confidence, teacher_epochs=teacher_epochs, secret_seed=secret_seed)
        with console.status("running the client's rounds with canaries ..."):
            result = run_softlabel_audit(cfg)
    except FedistillError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    console.print(_result_table(result))
    for name, sees in AUDITORS.items():
        console.print(f"  {name}: {sees}")
    run = cfg.run
    mechanism = ("no DP (train_supervised, as dp = false)" if not run.dp else
                 f"σ planned {result.noise_multiplier:.4g} / run "
                 f"{result.noise_multiplier_run:.4g}, q = {result.sample_rate:.4g}")
    console.print(
        f"{mechanism}, {result.steps_per_round} steps x {result.rounds} round(s), "
        f"dp-trainable = {run.dp_trainable}, ε of one round = {result.epsilon_round:.4g}, "
        f"n = {result.private_examples} ({result.included} / {cfg.canaries} canaries in), "
        f"ceiling with all {cfg.canaries} guessed right = {result.ceiling_all:.3f}, "
        f"{result.seconds:.1f} s")
    finish_audit(console, notes=result.notes, out=out, filename="softlabel_audit.json",
                 payload=result.to_dict(), consistent=result.consistent,
                 failure="An ε lower bound exceeds the claimed ε: the client's soft labels "
                         "leak more than its ledger says.")
