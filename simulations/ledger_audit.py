"""Auditing privacy ledgers: recompute ε from their events and compare it with their claims.

An auditor trusts neither the coordinator nor the numbers a client logged, and nothing
that was not checked counts as checked (fail closed). So:

- :mod:`simulations.ledger_verify` checks each ledger's bytes, hash chain and signatures,
  and compares it with the heads the coordinator recorded in ``metrics.jsonl``;
- a record whose δ differs from the first record's is refused by the ledger's parser
  (:class:`~common.privacy.ledger.PrivacyLedger`), so it fails both verify and report;
- :func:`audit_ledgers` (here) recomputes every record's ε from the recorded events, with
  the recorded accountant and with RDP as a cross-check, compares it with the ε the record
  claims (a difference above 1e-6 is a finding), recomputes each client's ε with a
  second library (:mod:`common.privacy.independent`, Google's ``dp_accounting``) and
  summarises budgets across clients;
- :mod:`simulations.ledger_report` writes the table as JSON and CSV and plots ε over rounds.

Nothing here imports ``client`` or ``coordinator``: the auditor sees only files.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import opacus
from opacus.accountants import RDPAccountant

from common.crypto.keys import LEDGER_PUBLIC_KEY_FILE
from common.errors import ConfigError, LedgerError
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
from simulations.ledger_verify import (
    CoordinatorHeads,
    Finding,
    coordinator_findings,
    keys_for,
    load_coordinator_metrics,
    verify_ledger,
)

log = logging.getLogger(__name__)

# |claimed ε - recomputed ε|, and |Opacus ε - dp_accounting ε| at the integer RDP
# orders, above this are findings. Absolute, not relative: ε values are O(0.01 - 100)
# here, the two libraries agree to ~1e-11 (common/privacy/independent.py), and a
# fixed number is what an auditor can state ("to 1e-6").
TOLERANCE = 1e-6


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

