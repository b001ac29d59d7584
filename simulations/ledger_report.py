"""The outputs of ``fedistill audit report`` and ``audit verify``: files, plot, terminal tables.

:func:`write_report` writes the report of :func:`simulations.ledger_audit.audit_ledgers`
as JSON and CSV and plots ε over rounds; :func:`report_table` and :func:`verify_table`
are what the two commands print.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from simulations.ledger_audit import TOLERANCE, AuditReport, ClientAudit
from simulations.ledger_verify import VerifyResult

# ---------------------------------------------------------------- outputs
_CLIENT_COLUMNS = ("ledger", "client_id", "records", "signatures", "key_fingerprint",
                   "accountant", "delta", "epsilon", "epsilon_rdp", "epsilon_rdp_int",
                   "epsilon_dpa_rdp", "epsilon_dpa_rdp_int", "epsilon_dpa_rdp_lower",
                   "epsilon_dpa_pld", "budget", "budget_left", "exhausted",
                   "coordinator_records", "errors", "notes")
_RECORD_COLUMNS = ("ledger", "client_id", "index", "run_id", "round", "timestamp",
                   "noise_multiplier", "sample_rate", "steps", "accountant",
                   "accountant_version", "delta", "epsilon_claimed", "epsilon_recomputed",
                   "epsilon_rdp", "difference")


def _client_row(c: ClientAudit) -> dict[str, Any]:
    ind = c.independent
    return {
        "ledger": c.ledger, "client_id": c.client_id, "records": len(c.records),
        "signatures": c.signatures, "key_fingerprint": c.key_fingerprint,
        "accountant": c.accountant, "delta": c.delta, "epsilon": c.epsilon,
        "epsilon_rdp": c.epsilon_rdp, "epsilon_rdp_int": c.epsilon_rdp_int,
        "epsilon_dpa_rdp": ind and ind.rdp, "epsilon_dpa_rdp_int": ind and ind.rdp_integer,
        "epsilon_dpa_rdp_lower": ind and ind.rdp_lower, "epsilon_dpa_pld": ind and ind.pld,
        "budget": c.budget, "budget_left": c.budget_left, "exhausted": c.exhausted,
        "coordinator_records": c.coordinator_records,
        "errors": sum(f.severity == "error" for f in c.findings),
        "notes": sum(f.severity == "note" for f in c.findings),
    }


def write_report(report: AuditReport, out: Path) -> dict[str, Path]:
    """Write ``audit_report.json``, ``audit_clients.csv``, ``audit_records.csv`` and
    ``epsilon_over_rounds.png`` into ``out``; return their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "audit_report.json",
        "clients_csv": out / "audit_clients.csv",
        "records_csv": out / "audit_records.csv",
        "plot": out / "epsilon_over_rounds.png",
    }
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    with paths["clients_csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CLIENT_COLUMNS)
        writer.writeheader()
        writer.writerows(_client_row(c) for c in report.clients)
    with paths["records_csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_RECORD_COLUMNS)
        writer.writeheader()
        for c in report.clients:
            for r in c.records:
                writer.writerow({"ledger": c.ledger, "client_id": c.client_id, **asdict(r)})
    plot_epsilon(report, paths["plot"])
    return paths


def plot_epsilon(report: AuditReport, path: Path) -> None:
    """ε (recomputed) after each ledger record, one line per client, and the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in report.clients:
        if not c.records:
            continue
        xs = [r.index + 1 for r in c.records]
        ax.plot(xs, [r.epsilon_recomputed for r in c.records], marker="o", ms=3,
                label=f"{c.client_id} ({c.accountant})")
        claimed = [(x, r.epsilon_claimed) for x, r in zip(xs, c.records, strict=True)
                   if r.difference is not None and r.difference > TOLERANCE]
        if claimed:  # claims that the events do not support
            ax.scatter(*zip(*claimed, strict=True), marker="x", color="red", zorder=3)
    if report.budget is not None:
        ax.axhline(report.budget, color="black", ls="--", lw=1,
                   label=f"budget ε={report.budget:g}")
    ax.set_xlabel("ledger record (rounds, across runs)")
    ax.set_ylabel("ε recomputed from the events")
    ax.set_title("Privacy spent per client (red x: claim not supported by events)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def report_table(report: AuditReport) -> Table:
    """The terminal table of ``fedistill audit report``."""
    table = Table(title="fedistill audit report: ε recomputed from the ledgers' events",
                  caption=(f"max ε {_fmt(report.epsilon_max)} · median ε "
                           f"{_fmt(report.epsilon_median)} · exhausted: "
                           f"{', '.join(report.exhausted) or 'none'} · Opacus "
                           f"{report.opacus_version}, dp_accounting "
                           f"{report.dp_accounting_version}"))
    table.add_column("client", no_wrap=True)
    for column in ("records", "signatures", "accountant", "δ", "ε", "ε RDP (Opacus)",
                   "ε RDP (dp_acc)", "ε PLD (dp_acc)", "budget left", "exhausted",
                   "findings"):
        table.add_column(column, justify="right" if column in ("records", "ε") else "left")
    for c in report.clients:
        errors = sum(f.severity == "error" for f in c.findings)
        notes = len(c.findings) - errors
        ind = c.independent
        table.add_row(
            c.client_id, str(len(c.records)), c.signatures, c.accountant or "-",
            _fmt(c.delta, "g"), _fmt(c.epsilon), _fmt(c.epsilon_rdp),
            _fmt(ind and ind.rdp), _fmt(ind and ind.pld), _fmt(c.budget_left),
            "-" if c.exhausted is None else ("[red]yes[/red]" if c.exhausted else "no"),
            (f"[red]{errors} error(s)[/red] " if errors else "") + (f"{notes} note(s)"
                                                                    if notes else ""),
        )
    return table


def verify_table(results: Sequence[VerifyResult]) -> Table:
    """The terminal table of ``fedistill audit verify``."""
    table = Table(title="fedistill audit verify")
    for column in ("ledger", "result", "records", "first bad", "key", "detail"):
        table.add_column(column)
    for r in results:
        first_bad = "" if r.bad_record is None else f"record {r.bad_record} (line {r.bad_line})"
        table.add_row(
            r.ledger,
            "[green]OK[/green]" if r.ok else ("[red]TORN[/red]" if r.torn else "[red]FAIL[/red]"),
            str(r.records),
            first_bad,
            (r.fingerprint or "-")[:19],
            r.message,
        )
    return table
