"""Auditing privacy ledgers: verify them, recompute ε from their events, report.

An auditor trusts neither the coordinator nor the numbers a client logged, and nothing
that was not checked counts as checked (fail closed). So:

- :func:`verify_ledger` checks the file byte for byte (canonical lines, hash chain) and
  every record's Ed25519 signature against the client's public key, and names the first
  bad record with its position;
- a record whose δ differs from the first record's is refused by the ledger's parser
  (:class:`~common.privacy.ledger.PrivacyLedger`), so it fails both verify and report;
- :func:`coordinator_findings` compares a ledger with the heads the coordinator recorded
  in ``metrics.jsonl`` (truncation, rollback or rewrite, a swapped key);
- :func:`audit_ledgers` recomputes every record's ε from the recorded events, with the
  recorded accountant and with RDP as a cross-check, compares it with the ε the record
  claims (a difference above 1e-6 is a finding), recomputes each client's ε with a
  second library (:mod:`common.privacy.independent`, Google's ``dp_accounting``) and
  summarises budgets across clients;
- :func:`write_report` writes the table as JSON and CSV and plots ε over rounds.

Nothing here imports ``client`` or ``coordinator``: the auditor sees only files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import opacus
from opacus.accountants import RDPAccountant
from rich.table import Table

from common.crypto.keys import (
    LEDGER_PUBLIC_KEY_FILE,
    key_fingerprint,
    ledger_verifier,
    load_public_key,
)
from common.errors import ConfigError, CryptoError, LedgerError
from common.privacy.accounting import DpEvent, check_budget, epsilon_from_events
from common.privacy.independent import (
    DP_ACCOUNTING_VERSION,
    INTEGER_ORDERS,
    PLD_VALUE_DISCRETIZATION_INTERVAL,
    IndependentEpsilon,
    independent_epsilons,
)
from common.privacy.ledger import LedgerRecord, PrivacyLedger
from simulations.audit_output import json_safe

log = logging.getLogger(__name__)

# |claimed ε - recomputed ε|, and |Opacus ε - dp_accounting ε| at the integer RDP
# orders, above this are findings. Absolute, not relative: ε values are O(0.01 - 100)
# here, the two libraries agree to ~1e-11 (common/privacy/independent.py), and a
# fixed number is what an auditor can state ("to 1e-6").
TOLERANCE = 1e-6


# ---------------------------------------------------------------- locating ledgers
def resolve_ledgers(paths: Sequence[Path]) -> list[Path]:
    """Ledger files named by ``paths``: a file, a client directory, or a run directory.

    A path that does not exist or a file that cannot be read is bad input
    (:class:`ConfigError`, exit 2): the audit refuses to start rather than skip it.
    """
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or directory; pass ledger files, "
                              "client directories or a run directory that exist.")
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
    for ledger in found:
        if not os.access(ledger, os.R_OK):
            raise ConfigError(f"{ledger}: the ledger cannot be read (permission denied); "
                              "run the audit as a user who can read it.")
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
    missing, unreadable or empty ledger, or an unsigned record is a failure: a ledger
    whose signatures were not checked is not verified.
    """
    key_path = public_key if public_key is not None else path.parent / LEDGER_PUBLIC_KEY_FILE

    def fail(message: str, *, records: int = 0, line: int | None = None,
             torn: bool = False, fingerprint: str | None = None) -> VerifyResult:
        return VerifyResult(str(path), False, records, str(key_path), fingerprint,
                            None if line is None else line - 1, line, torn, message)

    if not path.is_file():
        return fail(f"{path}: no such ledger file; pass the client's ledger.jsonl")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return fail(f"{path}: cannot read the ledger ({exc}); run the audit as a user "
                    "who can read it")
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
        return fail(f"{path}: the ledger is empty; there is nothing to verify. A client "
                    "that spent ε has records: restore the ledger from a backup",
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


def verify_findings(
    results: Sequence[VerifyResult], coordinator: CoordinatorHeads | None = None
) -> list[Finding]:
    """What ``audit verify`` checks beyond bytes and signatures, on the ledgers that
    verified: with the coordinator's metrics, the heads it recorded."""
    if coordinator is None:
        return []
    return [
        finding
        for result in results
        if result.ok
        for finding in coordinator_findings(result.ledger,
                                            PrivacyLedger(result.ledger).records(),
                                            result.fingerprint, coordinator)
    ]


# ---------------------------------------------------------------- findings
Severity = Literal["error", "note"]


@dataclass(frozen=True)
class Finding:
    """Something an auditor must look at: ``error`` fails the audit, ``note`` informs."""

    ledger: str
    severity: Severity
    record: int | None
    message: str


# ---------------------------------------------------------------- coordinator heads
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class CoordinatorHead:
    """What the coordinator recorded about one client's ledger after one round."""

    round: int
    line: int  # 1-based line in metrics.jsonl
    head: str  # hash of the ledger's last record
    records: int  # the ledger's record count after that round
    key: str  # fingerprint of the key the client signed with


CoordinatorHeads = dict[str, list[CoordinatorHead]]  # by client id, in file order


def load_coordinator_metrics(path: Path) -> CoordinatorHeads:
    """The ledger heads in a coordinator's ``metrics.jsonl``, by client id.

    Round lines (those with ``"round"``) may carry ``"ledgers": {client_id: {"head",
    "records", "key"}}``. A file that cannot be read or parsed, a malformed entry, or a
    file with no entry at all is bad input (:class:`ConfigError`): a cross-check that
    could not run must not pass.
    """
    where = f"--coordinator-metrics {path}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc}); pass the run's "
                          "metrics.jsonl") from exc
    heads: CoordinatorHeads = {}
    for number, line in enumerate(lines, start=1):
        record = _metrics_line(where, number, line) if line.strip() else {}
        if "round" not in record:
            continue
        for client_id, raw in _ledgers_of(where, number, record).items():
            heads.setdefault(client_id, []).append(
                _coordinator_head(f"{where} line {number}, client {client_id!r}",
                                  record["round"], number, raw))
    if not heads:
        raise ConfigError(f"{where}: no round line carries a 'ledgers' entry, so there is "
                          "nothing to compare the ledgers with (a coordinator that does not "
                          "record ledger heads); drop --coordinator-metrics.")
    return heads


def _metrics_line(where: str, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"{where}: line {number} is not JSON ({exc}); pass the "
                          "coordinator's metrics.jsonl unmodified.") from exc
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: line {number} is not a JSON object.")
    return record


def _ledgers_of(where: str, number: int, record: dict[str, Any]) -> dict[str, Any]:
    ledgers = record.get("ledgers", {})
    if not isinstance(ledgers, dict):
        raise ConfigError(f"{where}: line {number}: 'ledgers' must be an object mapping "
                          f"client ids to ledger heads, found {type(ledgers).__name__}.")
    if isinstance(record["round"], bool) or not isinstance(record["round"], int):
        raise ConfigError(f"{where}: line {number}: 'round' must be an integer, "
                          f"found {record['round']!r}.")
    return ledgers


def _coordinator_head(where: str, rnd: int, number: int, raw: object) -> CoordinatorHead:
    if not isinstance(raw, dict) or set(raw) != {"head", "records", "key"}:
        raise ConfigError(f"{where}: expected an object with keys head, records and key, "
                          f"found {raw!r}.")
    head, records, key = raw["head"], raw["records"], raw["key"]
    if not (isinstance(head, str) and _HEX64.fullmatch(head)):
        raise ConfigError(f"{where}: head={head!r} is not a sha256 hex digest.")
    if isinstance(records, bool) or not isinstance(records, int) or records < 0:
        raise ConfigError(f"{where}: records={records!r} is not a count >= 0.")
    if not (isinstance(key, str) and _FINGERPRINT.fullmatch(key)):
        raise ConfigError(f"{where}: key={key!r} is not a key fingerprint (sha256:<hex>).")
    return CoordinatorHead(rnd, number, head, records, key)


def coordinator_findings(
    ledger: str,
    records: Sequence[LedgerRecord],
    fingerprint: str | None,
    heads: CoordinatorHeads,
) -> list[Finding]:
    """Compare a ledger with every head the coordinator recorded for its client.

    The client is the last record's ``client_id``. ``fingerprint`` is that of the key the
    ledger was verified with (None: signatures were not checked). A client the
    coordinator never saw is a note; a client the coordinator saw without a ledger
    here is not looked at (it may simply not be audited).
    """
    if not records:
        return []
    client_id = records[-1].client_id
    entries = heads.get(client_id)
    if not entries:
        return [Finding(ledger, "note", None,
                        f"client {client_id!r} never appears in the coordinator's metrics: "
                        "its ledger could not be compared with a recorded head (a client of "
                        "another run, or one whose replies the coordinator never kept)")]
    return [*_truncation(ledger, records, entries), *_rollback(ledger, records, entries),
            *_key_swap(ledger, client_id, fingerprint, entries)]


def _truncation(ledger: str, records: Sequence[LedgerRecord],
                entries: list[CoordinatorHead]) -> list[Finding]:
    latest = max(entries, key=lambda e: e.records)
    if latest.records <= len(records):
        return []
    return [Finding(ledger, "error", len(records),
                    f"the ledger has {len(records)} records, but the coordinator saw "
                    f"{latest.records} after round {latest.round} (metrics line "
                    f"{latest.line}): records were cut off its end, and their ε was spent. "
                    "Restore the ledger from a backup before trusting its ε")]


def _rollback(ledger: str, records: Sequence[LedgerRecord],
              entries: list[CoordinatorHead]) -> list[Finding]:
    bad = sorted((e for e in entries if 0 < e.records <= len(records)
                  and records[e.records - 1].hash != e.head), key=lambda e: e.records)
    if not bad:
        return []
    first, index = bad[0], bad[0].records - 1
    more = f" ({len(bad) - 1} later rounds disagree too)" if len(bad) > 1 else ""
    return [Finding(ledger, "error", index,
                    f"record {index} has hash {records[index].hash[:12]}..., but after round "
                    f"{first.round} the coordinator recorded head {first.head[:12]}... for "
                    f"{first.records} records (metrics line {first.line}){more}: the ledger "
                    "was rolled back or rewritten. Restore the ledger the coordinator saw; "
                    f"records from {index} on are not the ones the client reported")]


def _key_swap(ledger: str, client_id: str, fingerprint: str | None,
              entries: list[CoordinatorHead]) -> list[Finding]:
    if fingerprint is None:
        return [Finding(ledger, "note", None,
                        f"signatures were not checked (--allow-unsigned), so the key the "
                        f"coordinator recorded for {client_id!r} ({entries[-1].key[:19]}...) "
                        "was not compared; pass the client's public key to compare it")]
    other = [e for e in entries if e.key != fingerprint]
    if not other:
        return []
    rounds = ", ".join(str(e.round) for e in other[:5]) + (" ..." if len(other) > 5 else "")
    return [Finding(ledger, "error", None,
                    f"the ledger verifies with key {fingerprint[:19]}..., but the coordinator "
                    f"recorded key {other[0].key[:19]}... for {client_id!r} (rounds {rounds}): "
                    "the ledger and its public key were replaced together. Audit with the "
                    "key the client registered (--public-key), and distrust this ledger")]


# ---------------------------------------------------------------- report
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
    epsilon_recomputed: float  # with the record's own accountant and δ (what it claimed)
    epsilon_rdp: float  # RDP cross-check at the record's δ
    difference: float | None  # |claimed - recomputed|; None when either is not finite


@dataclass
class ClientAudit:
    """Everything the report says about one ledger."""

    ledger: str
    client_id: str
    # "valid", "INVALID", "missing key", "unchecked" (--allow-unsigned) or "-" (unreadable)
    signatures: str
    records: list[RecordAudit] = field(default_factory=list)
    key_fingerprint: str | None = None  # of the key the signatures were checked with
    accountant: str | None = None
    delta: float | None = None  # the ledger's δ, fixed by its first record
    epsilon: float | None = None  # Opacus, the ledger's accountant; None: not audited
    epsilon_rdp: float | None = None  # Opacus RDP at all its orders
    epsilon_rdp_int: float | None = None  # Opacus RDP at the integer orders only
    independent: IndependentEpsilon | None = None  # dp_accounting RDP and PLD
    budget: float | None = None
    budget_left: float | None = None
    exhausted: bool | None = None  # another round like the last would pass the budget
    coordinator_records: int | None = None  # most records the coordinator saw
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
    dp_accounting_version: str = DP_ACCOUNTING_VERSION

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
            "dp_accounting_version": self.dp_accounting_version,
            "tolerance": TOLERANCE,
            "independent_accountant": {
                "rdp_orders": "opacus RDPAccountant.DEFAULT_ALPHAS",
                "agreement_orders": list(INTEGER_ORDERS),
                "pld_value_discretization_interval": PLD_VALUE_DISCRETIZATION_INTERVAL,
            },
            "clients": [json_safe(asdict(c)) for c in self.clients],
            "findings": [asdict(f) for f in self.findings],
        }




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


# ---------------------------------------------------------------- the second accountant
def _opacus_rdp_at(events: Sequence[DpEvent], delta: float, orders: Sequence[float]) -> float:
    """Opacus' RDP ε of ``events``, minimised over ``orders`` only."""
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events if e.steps]
    if not history:
        return 0.0
    engine = RDPAccountant()
    engine.history = history
    with warnings.catch_warnings():  # the best order at 2 or 63 is expected here
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        return float(engine.get_epsilon(delta=delta, alphas=list(orders)))


def _close(a: float, b: float, tolerance: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b
    return abs(a - b) <= tolerance


def rdp_agreement_findings(
    ledger: str,
    epsilon_rdp: float,
    epsilon_rdp_int: float,
    independent: IndependentEpsilon,
    tolerance: float = TOLERANCE,
) -> list[Finding]:
    """Opacus' RDP ε against dp_accounting's (see :mod:`common.privacy.independent`).

    At the integer orders the two compute the same closed form and must agree to
    ``tolerance``; over all of Opacus' orders its ε must lie between dp_accounting's
    lower bound and its integer-order ε.
    """
    d, lib = independent.delta, f"dp_accounting {DP_ACCOUNTING_VERSION}"
    if independent.kl_bound_used:
        return [Finding(ledger, "note", None,
                        f"the RDP is below δ²={d * d:g} at some order, where {lib} uses the "
                        "KL bound (ε = 0) and Opacus does not: their RDP ε are not compared "
                        f"(Opacus {epsilon_rdp:.6g}, {lib} {independent.rdp:.6g})")]
    findings = []
    if not _close(epsilon_rdp_int, independent.rdp_integer, tolerance):
        findings.append(Finding(ledger, "error", None,
                                f"Opacus and {lib} disagree on RDP at the integer orders 2-63: "
                                f"ε={epsilon_rdp_int:.9g} vs {independent.rdp_integer:.9g} "
                                f"(δ={d:g}), more than {tolerance:g} apart. One accountant is "
                                "wrong or was tampered with: reinstall opacus and dp-accounting "
                                "from the registry and audit again"))
    if epsilon_rdp > independent.rdp_integer + tolerance:
        findings.append(Finding(ledger, "error", None,
                                f"Opacus' RDP ε={epsilon_rdp:.9g} exceeds {lib}'s "
                                f"{independent.rdp_integer:.9g} at the integer orders alone "
                                "(more orders can only lower ε): Opacus' accountant is "
                                "inconsistent; reinstall it and audit again"))
    elif epsilon_rdp < independent.rdp_lower - tolerance:
        findings.append(Finding(ledger, "error", None,
                                f"Opacus' RDP ε={epsilon_rdp:.9g} is below "
                                f"{independent.rdp_lower:.9g}, the least that exact RDP at its "
                                f"orders can give ({lib}, δ={d:g}): the accountant under-"
                                "reports ε; reinstall opacus and audit again"))
    return findings


# ---------------------------------------------------------------- one client
def audit_client(
    path: Path,
    *,
    public_key: Path | None = None,
    budget: float | None = None,
    tolerance: float = TOLERANCE,
    allow_unsigned: bool = False,
    coordinator: CoordinatorHeads | None = None,
) -> ClientAudit:
    """Audit one ledger: file and chain, signatures, δ, ε with two libraries, budget and,
    with ``coordinator``, the heads the coordinator recorded.

    A missing public key is an error unless ``allow_unsigned`` (then a note).
    """
    audit = ClientAudit(ledger=str(path), client_id=path.parent.name, signatures="-")
    records = _read_records(audit, path)
    if not records:
        return audit
    fingerprint = _check_signatures(audit, path, public_key, allow_unsigned)
    audit.client_id = records[-1].client_id
    audit.records, mismatches = _audit_records(path, records, tolerance)
    audit.findings.extend(mismatches)
    audit.findings.extend(_consistency_notes(path, records))
    _recompute_client_epsilon(audit, path, records, tolerance)
    if budget is not None and audit.epsilon is not None and audit.delta is not None:
        _check_client_budget(audit, records, budget, tolerance)
    if coordinator is not None:
        entries = coordinator.get(audit.client_id, [])
        audit.coordinator_records = max((e.records for e in entries), default=None)
        audit.findings.extend(coordinator_findings(str(path), records, fingerprint,
                                                   coordinator))
    return audit


def _read_records(audit: ClientAudit, path: Path) -> list[LedgerRecord]:
    """The ledger's records; [] with an error finding when there is nothing to audit."""
    try:
        if not path.is_file():
            raise LedgerError(f"{path}: no such ledger file; pass the client's ledger.jsonl")
        records = PrivacyLedger(path).records()
    except LedgerError as exc:
        line = None if exc.line is None else exc.line - 1
        audit.findings.append(Finding(str(path), "error", line, str(exc)))
        return []
    except OSError as exc:
        audit.findings.append(Finding(str(path), "error", None,
                                      f"{path}: cannot read the ledger ({exc}); run the audit "
                                      "as a user who can read it"))
        return []
    if not records:
        audit.findings.append(Finding(str(path), "error", None,
                                      f"{path}: the ledger is empty; there is nothing to audit. "
                                      "A client that spent ε has records: restore the ledger "
                                      "from a backup"))
    return records


def _check_signatures(audit: ClientAudit, path: Path, public_key: Path | None,
                      allow_unsigned: bool) -> str | None:
    """Verify the signatures; return the key's fingerprint (None: none checked)."""
    key_path = public_key if public_key is not None else path.parent / LEDGER_PUBLIC_KEY_FILE
    if public_key is None and not key_path.exists():
        audit.signatures = "unchecked" if allow_unsigned else "missing key"
        if allow_unsigned:
            message = (f"no public key at {key_path}: signatures NOT checked "
                       "(--allow-unsigned), so anyone who could write the file could have "
                       "written these records")
        else:
            message = (f"no public key at {key_path}: the signatures cannot be checked, so "
                       "the ledger is not proven to be the client's. Pass the client's key "
                       "with --public-key or place it beside the ledger as ledger_key.pub "
                       "(or pass --allow-unsigned to audit the ε alone)")
        audit.findings.append(Finding(str(path), "note" if allow_unsigned else "error",
                                      None, message))
        return None
    result = verify_ledger(path, key_path)
    audit.signatures = "valid" if result.ok else "INVALID"
    audit.key_fingerprint = result.fingerprint
    if not result.ok:
        audit.findings.append(Finding(str(path), "error", result.bad_record, result.message))
    return result.fingerprint


def _recompute_client_epsilon(audit: ClientAudit, path: Path, records: list[LedgerRecord],
                              tolerance: float) -> None:
    """The client's ε with Opacus and with dp_accounting, and the findings of comparing
    the two. δ is the first record's: the ledger's parser refuses any other."""
    events = [r.event for r in records]
    audit.accountant, audit.delta = records[-1].accountant, records[0].delta
    audit.epsilon = audit.records[-1].epsilon_recomputed
    audit.epsilon_rdp = audit.records[-1].epsilon_rdp
    audit.epsilon_rdp_int = _opacus_rdp_at(events, audit.delta, INTEGER_ORDERS)
    audit.independent = independent_epsilons(events, delta=audit.delta)
    audit.findings.extend(rdp_agreement_findings(str(path), audit.epsilon_rdp,
                                                 audit.epsilon_rdp_int, audit.independent,
                                                 tolerance))


def _check_client_budget(audit: ClientAudit, records: list[LedgerRecord], budget: float,
                         tolerance: float) -> None:
    """Budget left, over budget (an error), and exhausted, at the ledger's δ."""
    epsilon, delta = audit.epsilon or 0.0, audit.delta or records[0].delta
    audit.budget, audit.budget_left = budget, budget - epsilon
    if epsilon > budget + tolerance:
        audit.findings.append(Finding(audit.ledger, "error", None,
                                      f"ε={epsilon:.6g} exceeds the budget {budget:g} "
                                      f"(δ={delta:g}): the client spent more than it was "
                                      "allowed to"))
    # "Exhausted": the client cannot afford another round like its last one.
    events = [r.event for r in records]
    check = check_budget(events, events[-1], delta=delta, budget=budget,
                         accountant=records[-1].accountant)
    audit.exhausted = not check.fits


# ---------------------------------------------------------------- all clients
def audit_ledgers(
    paths: Sequence[Path],
    *,
    budget: float | None = None,
    public_keys: Sequence[Path] | None = None,
    tolerance: float = TOLERANCE,
    allow_unsigned: bool = False,
    coordinator_metrics: Path | None = None,
) -> AuditReport:
    """Audit every ledger in ``paths`` (see :func:`audit_client`) and summarise.

    ``public_keys`` is empty/None (each ledger's ``ledger_key.pub``), one key for all, or
    one key per ledger, in order. ``coordinator_metrics`` is the run's ``metrics.jsonl``.
    """
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--budget must be a finite number > 0, found {budget!r}.")
    keys = keys_for(paths, public_keys)
    heads = None if coordinator_metrics is None else load_coordinator_metrics(coordinator_metrics)
    clients = [
        audit_client(p, public_key=k, budget=budget, tolerance=tolerance,
                     allow_unsigned=allow_unsigned, coordinator=heads)
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


def keys_for(paths: Sequence[Path], public_keys: Sequence[Path] | None) -> list[Path | None]:
    """The ``--public-key`` to check each ledger with: none given (None each: the ledger's
    own ledger_key.pub), one for all, or one per ledger in order."""
    if not public_keys:
        return [None] * len(paths)
    for key in public_keys:
        if not key.is_file():
            raise ConfigError(f"--public-key {key}: no such file; pass the client's "
                              "ledger_key.pub.")
    if len(public_keys) == 1:
        return [public_keys[0]] * len(paths)
    if len(public_keys) != len(paths):
        raise ConfigError(
            f"Got {len(public_keys)} --public-key values for {len(paths)} ledgers; give "
            "none (each ledger's ledger_key.pub), one for all, or one per ledger in order."
        )
    return list(public_keys)


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
