"""``fedistill audit``: verify ledgers, recompute and report ε, audit students empirically.

``verify`` and ``report`` fail closed: whatever the audit could not prove is a failure.

Exit codes:

- 0: everything was checked and checks out.
- 1: the audit found a problem: a ledger that is empty, torn, corrupt, off its hash
  chain, or not signed by the key; no public key for a ledger (``report`` accepts that
  with ``--allow-unsigned``, as a note); a record whose δ differs from the first
  record's; a claimed ε its events do not support; a client over ``--budget``; Opacus
  and dp_accounting disagreeing on RDP; a ledger shorter than, rolled back from, or
  signed by another key than the coordinator recorded (``--coordinator-metrics``); or
  (``mia``) an ε lower bound above the claimed ε.
- 2: bad usage or unreadable input: a path that does not exist or cannot be read, a
  ``--public-key`` file that does not exist, a wrong number of keys, an invalid budget,
  or a coordinator metrics file that cannot be read or parsed.

Every exit is a ``SystemExit``, not ``typer.Exit``: the ``fedistill`` entry point runs
the app with ``standalone_mode=False``, where click turns ``typer.Exit(1)`` into a return
value that the entry point drops, so the process exited 0 after printing FAILED.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.errors import FedistillError
from simulations.dpsgd_audit_cli import dpsgd_command
from simulations.softlabel_audit_cli import softlabel_command

if TYPE_CHECKING:  # the heavy modules load only when a command runs
    from common.privacy.auditing import AttackMetrics
    from simulations.ledger_verify import Finding
    from simulations.mia import CanaryAuditResult, StudentAuditResult

audit_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Audit privacy: verify ledgers, recompute ε, and bound ε empirically.",
)
console = Console()

LedgerArgs = Annotated[
    list[Path],
    typer.Argument(help="Ledger files, client directories or run directories.",
                   show_default=False),
]
PublicKeyOpt = Annotated[
    list[Path] | None,
    typer.Option("--public-key", help="Client public key(s): one for all ledgers or one per "
                 "ledger, in order (default: ledger_key.pub beside each ledger)."),
]


MetricsOpt = Annotated[
    Path | None,
    typer.Option("--coordinator-metrics", help="The coordinator's metrics.jsonl: compare "
                 "each ledger with the heads, record counts and key fingerprints it recorded "
                 "(truncation, rollback, a swapped key)."),
]


def _exit(code: int) -> SystemExit:
    """An exit that keeps its code under the entry point's ``standalone_mode=False``."""
    return SystemExit(code)


def _fail(exc: Exception) -> SystemExit:
    console.print(f"[red]error:[/red] {exc}")
    return _exit(2)


def _print_findings(findings: Sequence[Finding]) -> None:
    for finding in findings:
        colour = "red" if finding.severity == "error" else "yellow"
        where = "" if finding.record is None else f" (record {finding.record})"
        console.print(f"[{colour}]{finding.severity}[/{colour}] {finding.ledger}{where}: "
                      f"{finding.message}")


@audit_app.command("verify")
def verify_command(
    ledgers: LedgerArgs,
    public_key: PublicKeyOpt = None,
    coordinator_metrics: MetricsOpt = None,
) -> None:
    """Check each ledger's bytes, hash chain, every Ed25519 signature and its δ.

    Reports the first bad record of each ledger with its position. Exits 1 if any check
    fails (a missing key or ledger, an empty, torn or tampered ledger, a changed δ, a
    mismatch with the coordinator's heads), 2 on bad usage or unreadable input.
    """
    from simulations.ledger_report import verify_table
    from simulations.ledger_verify import (
        keys_for,
        load_coordinator_metrics,
        resolve_ledgers,
        verify_findings,
        verify_ledger,
    )

    try:
        paths = resolve_ledgers(ledgers)
        keys = keys_for(paths, public_key)
        heads = None if coordinator_metrics is None else load_coordinator_metrics(
            coordinator_metrics)
    except FedistillError as exc:
        raise _fail(exc) from None
    results = [verify_ledger(p, k) for p, k in zip(paths, keys, strict=True)]
    console.print(verify_table(results))
    bad = [r for r in results if not r.ok]
    for r in bad:
        where = "" if r.bad_record is None else f" at record {r.bad_record} (line {r.bad_line})"
        console.print(f"[red]FAILED[/red] {r.ledger}{where}: {r.message}")
    findings = verify_findings(results, heads)
    _print_findings(findings)
    errors = len(bad) + sum(f.severity == "error" for f in findings)
    if errors:
        console.print(f"[red]{errors} problem(s) in {len(results)} ledger(s): do not trust "
                      "their ε until each is resolved.[/red]")
        raise _exit(1)
    console.print(f"[green]{len(results)} ledger(s) verified.[/green]")


@audit_app.command("report")
def report_command(
    ledgers: LedgerArgs,
    out: Annotated[Path, typer.Option(help="Directory for the JSON, CSV and PNG outputs.")],
    budget: Annotated[float | None, typer.Option(help="Each client's ε budget.")] = None,
    public_key: PublicKeyOpt = None,
    allow_unsigned: Annotated[bool, typer.Option(
        "--allow-unsigned", help="Audit ledgers without a public key: their signatures are "
        "not checked, which is reported as a note instead of an error.")] = False,
    coordinator_metrics: MetricsOpt = None,
) -> None:
    """Recompute every client's ε from its ledger's events (Opacus, and dp_accounting's
    RDP and PLD as an independent second accountant) and compare with its claims."""
    from simulations.ledger_audit import audit_ledgers
    from simulations.ledger_report import report_table, write_report
    from simulations.ledger_verify import resolve_ledgers

    try:
        report = audit_ledgers(resolve_ledgers(ledgers), budget=budget, public_keys=public_key,
                               allow_unsigned=allow_unsigned,
                               coordinator_metrics=coordinator_metrics)
    except FedistillError as exc:
        raise _fail(exc) from None
    paths = write_report(report, out)
    console.print(report_table(report))
    _print_findings(report.findings)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    if not report.ok:
        errors = sum(f.severity == "error" for f in report.findings)
        console.print(f"[red]{errors} error(s): the audit does not support these ledgers' ε "
                      "claims; resolve each error above and audit again.[/red]")
        raise _exit(1)


@audit_app.command("mia")
def mia_command(
    run: Annotated[Path | None, typer.Option(help="A `fedistill simulate` run directory "
                                             "whose student to attack.")] = None,
    client: Annotated[str | None, typer.Option(help="With --run: the client, e.g. "
                                               "client-0.")] = None,
    dataset: Annotated[str, typer.Option(help="Canary experiment: dataset.")] = "rotten-tomatoes",
    epsilon: Annotated[float, typer.Option(help="Canary experiment: ε to train at "
                                           "(inf = no DP).")] = math.inf,
    delta: Annotated[float, typer.Option(help="δ of the claim and the bound.")] = 1e-5,
    canaries: Annotated[int, typer.Option(help="m canaries, each in with prob. 1/2.")] = 200,
    train_size: Annotated[int, typer.Option(help="Ordinary training examples.")] = 500,
    guesses: Annotated[int, typer.Option(help="Guesses per side (0 = canaries/4).")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    confidence: Annotated[float, typer.Option(help="Confidence of the bound.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of coins, data and training.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write mia.json here.")] = None,
) -> None:
    """Membership-inference audit: a student in a run, or a one-run canary experiment.

    With --run and --client: the loss-threshold attack on that client's student. Without:
    train a tiny CNN once with canaries and bound ε from below (Steinke et al. 2023).
    Exits 1 when the lower bound exceeds the claimed ε.
    """
    import torch

    from simulations.mia import CanaryAuditConfig, audit_run_student, run_canary_audit

    torch.set_num_threads(1)
    try:
        if run is not None or client is not None:
            if run is None or client is None:
                raise typer.BadParameter("--run and --client go together.")
            result = audit_run_student(run, client, seed=seed)
            payload = result.to_dict()
            console.print(_student_table(result))
            console.print(f"[dim]{result.note}[/dim]")
            consistent = True
        else:
            cfg = CanaryAuditConfig(dataset=dataset, epsilon=epsilon, delta=delta,
                                    canaries=canaries, train_size=train_size, guesses=guesses,
                                    epochs=epochs, confidence=confidence, seed=seed)
            with console.status("training a student with canaries ..."):
                canary = run_canary_audit(cfg)
            payload = canary.to_dict()
            console.print(_canary_table(canary))
            consistent = canary.consistent
    except FedistillError as exc:
        raise _fail(exc) from None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "mia.json").write_text(json.dumps(payload, indent=2, allow_nan=False))
        console.print(f"wrote {out / 'mia.json'}")
    if not consistent:
        console.print("[red]The ε lower bound exceeds the claimed ε: the claim is false, "
                      "or the training does not do what the accountant assumes.[/red]")
        raise _exit(1)


def _attack_rows(table: Table, attack: AttackMetrics) -> None:
    table.add_row("members / non-members", f"{attack.members} / {attack.nonmembers}")
    table.add_row("loss-threshold AUC (0.5 = chance)", f"{attack.auc:.3f}")
    table.add_row("TPR at 1% FPR", f"{attack.tpr_at_1pct_fpr:.3f}")
    table.add_row("attacker advantage (0 = chance)", f"{attack.advantage:.3f}")


def _student_table(result: StudentAuditResult) -> Table:
    table = Table(title=f"MIA: {result.client}'s {result.family} student in {result.run}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    _attack_rows(table, result.attack)
    eps = "-" if result.epsilon_claimed is None else f"{result.epsilon_claimed:.4g}"
    table.add_row(f"claimed ε (ledger, δ={result.delta})", eps)
    return table


def _canary_table(result: CanaryAuditResult) -> Table:
    one = result.one_run
    table = Table(title=f"One-run canary audit ({result.config['dataset']}, "
                        f"{result.config['family']} {result.config['size']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    _attack_rows(table, result.attack)
    table.add_row("canaries in / total", f"{result.included} / {one.canaries}")
    table.add_row("correct guesses / guesses", f"{one.correct} / {one.guesses}")
    table.add_row(f"ε lower bound ({one.confidence:.0%} conf., δ={one.delta:g})",
                  f"{one.epsilon_lower_bound:.3f}")
    sigma = "-" if result.noise_multiplier is None else f"{result.noise_multiplier:.3g}"
    table.add_row("σ / steps", f"{sigma} / {result.steps}")
    table.add_row("claimed ε (accountant)", f"{result.epsilon_claimed:.4g}")
    verdict = "[green]yes[/green]" if result.consistent else "[red]NO[/red]"
    table.add_row("lower bound ≤ claimed ε", verdict)
    return table


audit_app.command("dpsgd")(dpsgd_command)
audit_app.command("softlabels")(softlabel_command)
