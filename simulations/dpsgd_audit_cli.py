"""``fedistill audit dpsgd``: the command line and terminal table of the white-box DP-SGD audit.

The experiment is :func:`simulations.dpsgd_audit.run_dpsgd_audit`; this module parses the
options into a :class:`~simulations.dpsgd_audit.DpsgdAuditConfig`, prints the result and
exits with the verdict.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from common.errors import FedistillError
from simulations.dpsgd_audit import AUDITORS, DpsgdAuditConfig, DpsgdAuditResult, run_dpsgd_audit


def _result_table(result: DpsgdAuditResult):  # noqa: ANN202 - a rich Table
    from rich.table import Table

    table = Table(title=f"White-box DP-SGD audit: claimed ε = {result.epsilon_claimed:.4g} "
                        f"(δ = {result.config['delta']:g}), "
                        f"{result.config['canaries']} canaries")
    table.add_column("auditor", no_wrap=True)
    for column in ("in / out", "right / guesses", "ε lower bound", "ceiling", "ideal (sim.)"):
        table.add_column(column, justify="right")
    for a in result.auditors:
        table.add_row(a.name, f"{a.k_pos} / {a.k_neg}", f"{a.audit.correct} / {a.audit.guesses}",
                      f"{a.audit.epsilon_lower_bound:.3f}", f"{a.ceiling:.3f}",
                      f"{a.simulated:.3f}")
    return table


def dpsgd_command(
    epsilon: Annotated[float | None, typer.Option(
        help="Claimed ε at --delta; σ is calibrated to it (default 8 unless "
             "--noise-multiplier).")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(
        help="Claim σ instead of ε (ε is then the accountant's for it).")] = None,
    actual_noise_multiplier: Annotated[float | None, typer.Option(
        help="σ given to dp_train (default: the claimed σ). Lower it to check that the "
             "audit catches a run with less noise than claimed.")] = None,
    delta: Annotated[float, typer.Option(help="δ of the claim and the bound.")] = 1e-5,
    canaries: Annotated[int, typer.Option(help="m Dirac canaries, each in with prob. "
                                               "1/2.")] = 1000,
    ordinary: Annotated[int, typer.Option(help="Ordinary examples.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Expected batch size (q = 1 / "
                                                 "ceil(n / batch)).")] = 100,
    steps: Annotated[int, typer.Option(help="DP-SGD steps (one dp_train call).")] = 100,
    lr: Annotated[float, typer.Option(help="SGD learning rate (small keeps canaries "
                                           "clipped to C).")] = 1e-3,
    accountant: Annotated[str, typer.Option(help="Accountant of the claim: rdp or "
                                                 "prv.")] = "rdp",
    k_pos: Annotated[int | None, typer.Option(help="Guesses 'in' for every auditor "
                                                   "(default: chosen on a simulated "
                                                   "claimed run).")] = None,
    k_neg: Annotated[int | None, typer.Option(help="Guesses 'out' (with --k-pos).")] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the bounds.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Public seed: coins, data, the simulation.")] = 0,
    sampling_seed: Annotated[int | None, typer.Option(
        help="Poisson sampling seed (default: fresh). Only the 'known' auditors get "
             "it.")] = None,
    noise_seed: Annotated[int | None, typer.Option(
        help="Noise seed, for a reproducible run (default: fresh). No auditor gets "
             "it.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write dpsgd_audit.json here.")] = None,
) -> None:
    """White-box audit of dp_train with Dirac canaries (Nasr et al. 2023; one run).

    Exits 1 when an auditor of the deployed threat model (sampling secret) bounds ε above
    the claim, 2 on bad input.
    """
    import torch
    from rich.console import Console

    from simulations.audit_output import finish_audit

    console = Console()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    try:
        if epsilon is None and noise_multiplier is None:
            epsilon = 8.0
        cfg = DpsgdAuditConfig(
            epsilon=epsilon, noise_multiplier=noise_multiplier,
            actual_noise_multiplier=actual_noise_multiplier, delta=delta, canaries=canaries,
            ordinary=ordinary, batch_size=batch_size, steps=steps, lr=lr,
            accountant=accountant, k_pos=k_pos, k_neg=k_neg, confidence=confidence,
            seed=seed, sampling_seed=sampling_seed, noise_seed=noise_seed)
        with console.status("training with Dirac canaries through dp_train ..."):
            result = run_dpsgd_audit(cfg)
    except FedistillError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    console.print(_result_table(result))
    for name, threat in AUDITORS.items():
        console.print(f"  {name}: {threat}")
    console.print("  ceiling: the bound with every one of these guesses right; ideal: the "
                  "same rule on a simulated run of the claimed mechanism")
    console.print(
        f"σ claimed {result.noise_multiplier_claimed:.4g} / run "
        f"{result.noise_multiplier_run:.4g}, q = {result.sample_rate:.4g}, "
        f"steps = {result.steps}, canaries in = {result.included} / {cfg.canaries}, "
        f"ceiling with all {cfg.canaries} guessed right = {result.ceiling_all:.3f}, "
        f"{result.seconds:.1f} s")
    finish_audit(console, notes=result.notes, out=out, filename="dpsgd_audit.json",
                 payload=result.to_dict(), consistent=result.consistent,
                 failure="An auditor with secret sampling bounds ε above the claim: the "
                         "claim is false, or dp_train does not do what the accountant "
                         "assumes.")
