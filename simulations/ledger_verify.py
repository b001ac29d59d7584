"""Verifying privacy ledgers: their bytes, hash chain and signatures, and the coordinator's heads.

The first half of the ledger audit (:mod:`simulations.ledger_audit` recomputes ε):

- :func:`resolve_ledgers` and :func:`keys_for` find the ledgers and the key to check each with;
- :func:`verify_ledger` checks the file byte for byte (canonical lines, hash chain) and
  every record's Ed25519 signature against the client's public key, and names the first
  bad record with its position;
- :func:`coordinator_findings` compares a ledger with the heads the coordinator recorded
  in ``metrics.jsonl`` (:func:`load_coordinator_metrics`): truncation, rollback or
  rewrite, a swapped key.

Nothing here imports ``client`` or ``coordinator``: the auditor sees only files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.crypto.keys import (
    LEDGER_PUBLIC_KEY_FILE,
    key_fingerprint,
    ledger_verifier,
    load_public_key,
)
from common.errors import ConfigError, CryptoError, LedgerError
from common.privacy.ledger import LedgerRecord, PrivacyLedger


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
