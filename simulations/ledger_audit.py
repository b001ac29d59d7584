"""Auditing privacy ledgers: verify them, recompute ε from their events, report.

An auditor trusts neither the coordinator nor the numbers a client logged. So:

- :func:`verify_ledger` checks the file byte for byte (canonical lines, hash chain) and
  every record's Ed25519 signature against the client's public key, and names the first
  bad record with its position;
- :func:`audit_ledgers` recomputes every record's ε from the recorded events, with the
  recorded accountant and with RDP as a cross-check, compares it with the ε the record
  claims (a difference above 1e-6 is a finding), and summarises budgets across clients;
- :func:`write_report` writes the table as JSON and CSV and plots ε over rounds.

Nothing here imports ``client``: the auditor sees only files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import opacus
from rich.table import Table

from common.crypto.keys import (
    LEDGER_PUBLIC_KEY_FILE,
    key_fingerprint,
    ledger_verifier,
    load_public_key,
)
from common.errors import ConfigError, CryptoError, LedgerError
from common.privacy.accounting import check_budget, epsilon_from_events
from common.privacy.ledger import LedgerRecord, PrivacyLedger

log = logging.getLogger(__name__)

TOLERANCE = 1e-6  # |claimed ε - recomputed ε| above this is a finding (issue 6)


# ---------------------------------------------------------------- locating ledgers
def resolve_ledgers(paths: Sequence[Path]) -> list[Path]:
    """Ledger files named by ``paths``: a file, a client directory, or a run directory."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            if (path / "ledger.jsonl").exists():
                found.append(path / "ledger.jsonl")
                continue
            inside = sorted(path.glob("clients/*/ledger.jsonl"))
            if not inside:
                raise ConfigError(
                    f"{path} is a directory without ledger.jsonl or clients/*/ledger.jsonl; "
                    "pass ledger files, client directories or a run directory."
                )
            found.extend(inside)
        else:
            found.append(path)
    return found


# ---------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one ledger against one public key."""

    ledger: str
    ok: bool
    records: int  # records that verified (all of them when ok)
    public_key: str | None  # the key file used
    fingerprint: str | None  # sha256 of the raw public key
    bad_record: int | None  # index of the first bad record (= bad_line - 1)
    bad_line: int | None  # its 1-based line number
    torn: bool  # the file does not end in a newline: a write was interrupted
    message: str


def verify_ledger(path: Path, public_key: Path | None = None) -> VerifyResult:
    """Check the file, the hash chain and every signature of the ledger at ``path``.

    ``public_key`` defaults to ``ledger_key.pub`` beside the ledger. A missing key, a
    missing or empty ledger, or an unsigned record is a failure: a ledger whose
    signatures were not checked is not verified.
    """
    key_path = public_key if public_key is not None else path.parent / LEDGER_PUBLIC_KEY_FILE

    def fail(message: str, *, records: int = 0, line: int | None = None,
             torn: bool = False, fingerprint: str | None = None) -> VerifyResult:
        return VerifyResult(str(path), False, records, str(key_path), fingerprint,
                            None if line is None else line - 1, line, torn, message)

    if not path.is_file():
        return fail(f"{path}: no such ledger file")
    data = path.read_bytes()
    torn = bool(data) and not data.endswith(b"\n")
    try:
        key = load_public_key(key_path)
    except CryptoError as exc:
        return fail(str(exc), torn=torn)
    fingerprint = key_fingerprint(key)
    try:
        count = PrivacyLedger(path).verify(ledger_verifier(key))
    except LedgerError as exc:
        records = exc.line - 1 if exc.line is not None else 0
        return fail(str(exc), records=records, line=exc.line, torn=torn,
                    fingerprint=fingerprint)
    if count == 0:
        return fail(f"{path}: the ledger is empty; there is nothing to verify",
                    fingerprint=fingerprint)
    return VerifyResult(str(path), True, count, str(key_path), fingerprint, None, None, False,
                        f"{count} records: canonical lines, hash chain and signatures valid")


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


# ---------------------------------------------------------------- report
Severity = Literal["error", "note"]


@dataclass(frozen=True)
class Finding:
    """Something an auditor must look at: ``error`` fails the audit, ``note`` informs."""

    ledger: str
    severity: Severity
    record: int | None
    message: str


@dataclass(frozen=True)
class RecordAudit:
    """One record: its event, the ε it claims, and ε recomputed up to and including it."""

    index: int
    run_id: str
    round: int
    timestamp: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    accountant_version: str
    delta: float
    epsilon_claimed: float | None  # None: the client recorded a non-finite ε
    epsilon_recomputed: float  # with the record's own accountant and δ
    epsilon_rdp: float  # RDP cross-check at the record's δ
    difference: float | None  # |claimed - recomputed|; None when either is not finite


@dataclass
class ClientAudit:
    """Everything the report says about one ledger."""

    ledger: str
    client_id: str
    signatures: str  # "valid", "INVALID", "unchecked" (no public key) or "-" (unreadable)
    records: list[RecordAudit] = field(default_factory=list)
    accountant: str | None = None
    delta: float | None = None
    epsilon: float | None = None  # None: the ledger could not be read
    epsilon_rdp: float | None = None
    budget: float | None = None
    budget_left: float | None = None
    exhausted: bool | None = None  # another round like the last would pass the budget
    findings: list[Finding] = field(default_factory=list)


@dataclass
class AuditReport:
    """The report over all ledgers."""

    clients: list[ClientAudit]
    budget: float | None
    epsilon_max: float | None
    epsilon_median: float | None
    exhausted: list[str]
    opacus_version: str = opacus.__version__

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.clients for f in c.findings]

    @property
    def ok(self) -> bool:
        """No finding of severity ``error``."""
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "budget": self.budget,
            "epsilon_max": self.epsilon_max,
            "epsilon_median": self.epsilon_median,
            "exhausted": self.exhausted,
            "opacus_version": self.opacus_version,
            "tolerance": TOLERANCE,
            "clients": [_json_safe(asdict(c)) for c in self.clients],
            "findings": [asdict(f) for f in self.findings],
        }


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become strings ("inf"), so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _audit_records(
    path: Path, records: list[LedgerRecord], tolerance: float
) -> tuple[list[RecordAudit], list[Finding]]:
    """Recompute each record's ε from the events up to it; compare with its claim."""
    audits: list[RecordAudit] = []
    findings: list[Finding] = []
    events = [r.event for r in records]
    for i, rec in enumerate(records):
        prefix = events[: i + 1]
        eps = epsilon_from_events(prefix, delta=rec.delta, accountant=rec.accountant)
        eps_rdp = (eps if rec.accountant == "rdp"
                   else epsilon_from_events(prefix, delta=rec.delta, accountant="rdp"))
        claimed = rec.epsilon_after
        diff = abs(claimed - eps) if claimed is not None and math.isfinite(eps) else None
        if claimed is None and math.isfinite(eps):
            findings.append(Finding(str(path), "error", rec.index,
                                    f"record {rec.index} claims a non-finite ε, but its events "
                                    f"give ε={eps:.6g} ({rec.accountant})"))
        elif claimed is not None and not math.isfinite(eps):
            findings.append(Finding(str(path), "error", rec.index,
                                    f"record {rec.index} claims ε={claimed:.6g}, but its events "
                                    f"give a non-finite ε ({rec.accountant})"))
        elif diff is not None and diff > tolerance:
            findings.append(Finding(str(path), "error", rec.index,
                                    f"record {rec.index} claims ε={claimed:.9g}, recomputed "
                                    f"{eps:.9g} ({rec.accountant}, δ={rec.delta:g}): off by "
                                    f"{diff:.3g} > {tolerance:g}"))
        audits.append(RecordAudit(
            rec.index, rec.run_id, rec.round, rec.timestamp, rec.event.noise_multiplier,
            rec.event.sample_rate, rec.event.steps, rec.accountant, rec.accountant_version,
            rec.delta, claimed, eps, eps_rdp, diff,
        ))
    return audits, findings


def _consistency_notes(path: Path, records: list[LedgerRecord]) -> list[Finding]:
    """Things that do not falsify a claim but that an auditor should know."""
    notes: list[Finding] = []
    for label, values in (
        ("δ values", {r.delta for r in records}),
        ("accountants", {r.accountant for r in records}),
        ("client ids", {r.client_id for r in records}),
    ):
        if len(values) > 1:
            notes.append(Finding(str(path), "note", None,
                                 f"the records use several {label}: {sorted(map(str, values))}; "
                                 "the client's ε uses the last record's"))
    versions = {r.accountant_version for r in records} - {opacus.__version__}
    if versions:
        notes.append(Finding(str(path), "note", None,
                             f"records were accounted with Opacus {sorted(versions)}; "
                             f"recomputed with Opacus {opacus.__version__}"))
    return notes


def audit_client(
    path: Path,
    *,
    public_key: Path | None = None,
    budget: float | None = None,
    tolerance: float = TOLERANCE,
) -> ClientAudit:
    """Audit one ledger: chain, signatures (when a key is known), ε, budget."""
    audit = ClientAudit(ledger=str(path), client_id=path.parent.name, signatures="")
    try:
        if not path.is_file():
            raise LedgerError(f"{path}: no such ledger file")
        records = PrivacyLedger(path).records()
    except LedgerError as exc:
        audit.signatures = "-"
        audit.findings.append(Finding(str(path), "error",
                                      None if exc.line is None else exc.line - 1, str(exc)))
        return audit
    key_path = public_key if public_key is not None else path.parent / LEDGER_PUBLIC_KEY_FILE
    if public_key is None and not key_path.exists():
        audit.signatures = "unchecked"
        audit.findings.append(Finding(str(path), "note", None,
                                      f"no public key at {key_path}: signatures not checked; "
                                      "run `fedistill audit verify` with --public-key"))
    else:
        result = verify_ledger(path, key_path)
        audit.signatures = "valid" if result.ok else "INVALID"
        if not result.ok:
            audit.findings.append(Finding(str(path), "error", result.bad_record, result.message))
    if not records:
        audit.epsilon, audit.epsilon_rdp, audit.exhausted = 0.0, 0.0, False
        audit.budget, audit.budget_left = budget, budget
        return audit

    audit.records, mismatches = _audit_records(path, records, tolerance)
    audit.findings.extend(mismatches)
    audit.findings.extend(_consistency_notes(path, records))
    last = records[-1]
    audit.client_id = last.client_id
    audit.accountant, audit.delta = last.accountant, last.delta
    audit.epsilon = audit.records[-1].epsilon_recomputed
    audit.epsilon_rdp = audit.records[-1].epsilon_rdp
    if budget is not None:
        audit.budget = budget
        audit.budget_left = budget - audit.epsilon
        if audit.epsilon > budget + tolerance:
            audit.findings.append(Finding(str(path), "error", None,
                                          f"ε={audit.epsilon:.6g} exceeds the budget {budget:g}"))
        # "Exhausted": the client cannot afford another round like its last one.
        events = [r.event for r in records]
        check = check_budget(events, events[-1], delta=last.delta, budget=budget,
                             accountant=last.accountant)
        audit.exhausted = not check.fits
    return audit


def audit_ledgers(
    paths: Sequence[Path],
    *,
    budget: float | None = None,
    public_keys: Sequence[Path] | None = None,
    tolerance: float = TOLERANCE,
) -> AuditReport:
    """Audit every ledger in ``paths`` (see :func:`audit_client`) and summarise.

    ``public_keys`` is empty/None (each ledger's ``ledger_key.pub``), one key for all, or
    one key per ledger, in order.
    """
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--budget must be a finite number > 0, found {budget!r}.")
    keys = _keys_for(paths, public_keys)
    clients = [
        audit_client(p, public_key=k, budget=budget, tolerance=tolerance)
        for p, k in zip(paths, keys, strict=True)
    ]
    eps = [c.epsilon for c in clients if c.epsilon is not None and math.isfinite(c.epsilon)]
    return AuditReport(
        clients=clients,
        budget=budget,
        epsilon_max=max(eps) if eps else None,
        epsilon_median=statistics.median(eps) if eps else None,
        exhausted=[c.client_id for c in clients if c.exhausted],
    )


def _keys_for(paths: Sequence[Path], public_keys: Sequence[Path] | None) -> list[Path | None]:
    if not public_keys:
        return [None] * len(paths)
    if len(public_keys) == 1:
        return [public_keys[0]] * len(paths)
    if len(public_keys) != len(paths):
        raise ConfigError(
            f"Got {len(public_keys)} --public-key values for {len(paths)} ledgers; give "
            "none (each ledger's ledger_key.pub), one for all, or one per ledger in order."
        )
    return list(public_keys)


# ---------------------------------------------------------------- outputs
_CLIENT_COLUMNS = ("ledger", "client_id", "records", "signatures", "accountant", "delta",
                   "epsilon", "epsilon_rdp", "budget", "budget_left", "exhausted", "errors",
                   "notes")
_RECORD_COLUMNS = ("ledger", "client_id", "index", "run_id", "round", "timestamp",
                   "noise_multiplier", "sample_rate", "steps", "accountant",
                   "accountant_version", "delta", "epsilon_claimed", "epsilon_recomputed",
                   "epsilon_rdp", "difference")


def _client_row(c: ClientAudit) -> dict[str, Any]:
    return {
        "ledger": c.ledger, "client_id": c.client_id, "records": len(c.records),
        "signatures": c.signatures, "accountant": c.accountant, "delta": c.delta,
        "epsilon": c.epsilon, "epsilon_rdp": c.epsilon_rdp, "budget": c.budget,
        "budget_left": c.budget_left, "exhausted": c.exhausted,
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
                           f"{', '.join(report.exhausted) or 'none'}"))
    table.add_column("client", no_wrap=True)
    for column in ("records", "signatures", "accountant", "δ", "ε", "ε (RDP)",
                   "budget left", "exhausted", "findings"):
        table.add_column(column, justify="right" if column in ("records", "ε") else "left")
    for c in report.clients:
        errors = sum(f.severity == "error" for f in c.findings)
        notes = len(c.findings) - errors
        table.add_row(
            c.client_id, str(len(c.records)), c.signatures, c.accountant or "-",
            _fmt(c.delta, "g"), _fmt(c.epsilon), _fmt(c.epsilon_rdp), _fmt(c.budget_left),
            "-" if c.exhausted is None else ("[red]yes[/red]" if c.exhausted else "no"),
            (f"[red]{errors} error(s)[/red] " if errors else "") + (f"{notes} note(s)"
                                                                    if notes else ""),
        )
    return table
