"""A client's privacy ledger: an append-only, hash-chained JSON-lines file.

One record per round a client trained in, holding the DP mechanism event it spent. The
ledger is the client's memory of its budget across rounds *and* runs, and the auditor's
evidence: ε is always recomputed from the recorded events (``dp_accounting`` style); the
``epsilon_after`` stored in each record is only what the client claimed at the time.

File format (one canonical JSON object per line: sorted keys, no spaces, UTF-8)::

    {"accountant": "rdp", "accountant_version": "1.6.0", "client_id": "c7",
     "delta": 1e-05, "epsilon_after": 0.42,
     "event": {"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 50},
     "hash": "<sha256 hex>", "index": 0, "prev_hash": "000...0", "round": 1,
     "run_id": "r-2024", "signature": null, "timestamp": "2024-...+00:00"}

- ``hash`` = sha256 of the canonical JSON of the record without ``hash`` and
  ``signature``; ``prev_hash`` is the previous record's ``hash`` (64 zeros for the first),
  so editing, inserting, reordering or deleting a record in the middle breaks the chain.
- ``signature`` signs ``hash`` (that is why it is outside it): with a ``signer`` (for
  example :func:`common.crypto.ledger_signer`, Ed25519) it is 128 hex characters, else
  ``null``. :meth:`PrivacyLedger.verify` with a ``verifier`` (for example
  :func:`common.crypto.ledger_verifier` of the client's public key) checks every one.
- Every line must be byte-for-byte the canonical JSON of what it decodes to. Without this
  rule some edits would change the bytes but not the decoded record (``1e-05`` ->
  ``1E-05``, ``\\u00e9`` escapes), so neither the hash nor the signature would notice.
- A chain alone cannot reveal that the *last* records were cut off; that needs the head
  hash kept elsewhere (for example by the coordinator or the auditor).

Crash safety: an append writes the whole ledger plus the new line to a temporary file
beside it, ``fsync``-s it and renames it over the ledger (then ``fsync``-s the folder), so
a crash or a full disk leaves either the old ledger or the new one, never half a record.
A torn last line can still come from elsewhere (a copy cut short, an older version); it is
reported with :class:`LedgerError`, never dropped or repaired silently, because a torn
record may be the evidence of a round whose ε was spent.

This module stays whole although it is over 500 lines: it is the ledger format and its
checks (canonical bytes, hash chain, signatures, one δ, crash-safe appends), and the code
that writes a record must not drift apart from the code that checks it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import opacus

from common.errors import ConfigError, LedgerError
from common.privacy.accounting import ACCOUNTANTS, DpEvent, epsilon_from_events

try:  # POSIX advisory locks keep two writers from interleaving appends.
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["GENESIS_HASH", "LedgerRecord", "PrivacyLedger", "record_hash"]

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
_RECORD_KEYS = frozenset(
    {
        "index",
        "run_id",
        "round",
        "client_id",
        "event",
        "accountant",
        "accountant_version",
        "delta",
        "epsilon_after",
        "timestamp",
        "prev_hash",
        "hash",
        "signature",
    }
)
_EVENT_KEYS = frozenset({"noise_multiplier", "sample_rate", "steps"})
_UNHASHED_KEYS = ("hash", "signature")


def _canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, ASCII, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def record_hash(fields: dict[str, Any]) -> str:
    """sha256 hex of a record's canonical JSON without ``hash`` and ``signature``."""
    body = {k: v for k, v in fields.items() if k not in _UNHASHED_KEYS}
    return hashlib.sha256(_canonical_json(body).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class LedgerRecord:
    """One ledger line: the DP event a client spent in one round of one run."""

    index: int
    run_id: str
    round: int
    client_id: str
    event: DpEvent
    accountant: str
    accountant_version: str
    delta: float
    epsilon_after: float | None  # claimed at append time; None when ε was not finite
    timestamp: str
    prev_hash: str
    hash: str
    signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written to disk (JSON types only)."""
        return {
            "index": self.index,
            "run_id": self.run_id,
            "round": self.round,
            "client_id": self.client_id,
            "event": {
                "noise_multiplier": self.event.noise_multiplier,
                "sample_rate": self.event.sample_rate,
                "steps": self.event.steps,
            },
            "accountant": self.accountant,
            "accountant_version": self.accountant_version,
            "delta": self.delta,
            "epsilon_after": self.epsilon_after,
            "timestamp": self.timestamp,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, raw: object, *, where: str) -> LedgerRecord:
        """Parse and type-check one decoded JSON line; ``where`` locates it in errors."""
        if not isinstance(raw, dict):
            raise LedgerError(f"{where}: expected a JSON object, found {type(raw).__name__}")
        if set(raw) != _RECORD_KEYS:
            missing = sorted(_RECORD_KEYS - set(raw))
            extra = sorted(set(raw) - _RECORD_KEYS)
            raise LedgerError(f"{where}: wrong keys (missing {missing}, unexpected {extra})")
        event = raw["event"]
        if not isinstance(event, dict) or set(event) != _EVENT_KEYS:
            raise LedgerError(
                f"{where}: 'event' must be an object with keys "
                f"{sorted(_EVENT_KEYS)}, found {event!r}"
            )
        _expect(where, raw, "index", int)
        _expect(where, raw, "round", int)
        for key in (
            "run_id",
            "client_id",
            "accountant",
            "accountant_version",
            "timestamp",
            "prev_hash",
            "hash",
        ):
            _expect(where, raw, key, str)
        _expect(where, raw, "delta", float)
        if raw["epsilon_after"] is not None:
            _expect(where, raw, "epsilon_after", float, int)
        if raw["signature"] is not None:
            _expect(where, raw, "signature", str)
        if not 0 < raw["delta"] < 1:
            raise LedgerError(f"{where}: 'delta' must be in (0, 1), found {raw['delta']!r}")
        if raw["accountant"] not in ACCOUNTANTS:
            raise LedgerError(f"{where}: unknown accountant {raw['accountant']!r}")
        try:
            dp_event = DpEvent(**event)
        except ConfigError as exc:
            raise LedgerError(f"{where}: invalid event: {exc}") from exc
        return cls(
            index=raw["index"],
            run_id=raw["run_id"],
            round=raw["round"],
            client_id=raw["client_id"],
            event=dp_event,
            accountant=raw["accountant"],
            accountant_version=raw["accountant_version"],
            delta=raw["delta"],
            epsilon_after=raw["epsilon_after"],
            timestamp=raw["timestamp"],
            prev_hash=raw["prev_hash"],
            hash=raw["hash"],
            signature=raw["signature"],
        )


def _expect(where: str, raw: dict[str, Any], key: str, *types: type) -> None:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise LedgerError(f"{where}: '{key}' must be {names}, found {value!r}")


def _reject_constant(name: str) -> None:
    """json.loads hook: NaN/Infinity are not JSON and never written by this module."""
    raise ValueError(f"non-standard JSON constant {name}")


class PrivacyLedger:
    """The per-client privacy ledger at ``path`` (created on the first append).

    Every read parses the whole file and verifies the hash chain, so a torn, corrupt or
    tampered ledger raises :class:`LedgerError` instead of yielding a wrong ε.

    Parameters
    ----------
    path : str | os.PathLike[str]
        The JSON-lines file.
    signer : Callable[[str], str] | None
        Signs a record's ``hash`` (hex) and returns the signature as text, stored in
        ``signature`` (default: None, records are unsigned).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, signer: Callable[[str], str] | None = None
    ) -> None:
        self.path = Path(path)
        self._signer = signer

    # ------------------------------------------------------------------ reading
    def records(self) -> list[LedgerRecord]:
        """All records, in order, after checking the file and its hash chain."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with handle:
            if fcntl is not None:  # shared lock: never read an append half-way
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            return self._parse(handle.read())

    def events(self) -> list[DpEvent]:
        """The DP events spent, in order."""
        return [record.event for record in self.records()]

    def has_round(self, run_id: str, round: int) -> bool:
        """Whether ``round`` of ``run_id`` is already recorded (so must not be again)."""
        return any(r.run_id == run_id and r.round == round for r in self.records())

    def epsilon(self, delta: float | None = None, accountant: str | None = None) -> float:
        """ε recomputed from the recorded events, never read from stored numbers.

        ``delta`` defaults to the ledger's δ (its first record's: δ never changes),
        ``accountant`` to the latest record's; an empty ledger has spent nothing (0.0).
        """
        records = self.records()
        if not records:
            return 0.0
        return epsilon_from_events(
            [r.event for r in records],
            delta=records[0].delta if delta is None else delta,
            accountant=records[-1].accountant if accountant is None else accountant,
        )

    def delta(self) -> float | None:
        """The ledger's δ, fixed by its first record; None for an empty ledger."""
        records = self.records()
        return records[0].delta if records else None

    def head(self) -> tuple[str, int]:
        """The last record's hash and the number of records (what a reply carries, so the
        coordinator can later catch a truncated or rolled-back ledger)."""
        records = self.records()
        return (records[-1].hash if records else GENESIS_HASH), len(records)

    def verify(self, verifier: Callable[[str, str], bool] | None = None) -> int:
        """Check the file, the hash chain and, with ``verifier``, every signature.

        Parameters
        ----------
        verifier : Callable[[str, str], bool] | None
            ``verifier(hash_hex, signature)`` is True when the signature is valid
            (default: None, signatures are not checked).

        Returns
        -------
        int
            The number of records checked.

        Raises
        ------
        LedgerError
            Naming the first bad record index (or line number for unparsable lines), with
            that line in :attr:`LedgerError.line`.
        """
        records = self.records()
        if verifier is None:
            return len(records)
        for record in records:
            if record.signature is None:
                raise LedgerError(
                    f"{self.path}: record {record.index} has a missing or invalid signature "
                    f"(line {record.index + 1}): it is not signed, but every record must "
                    "carry the client's signature",
                    line=record.index + 1,
                )
            if not verifier(record.hash, record.signature):
                raise LedgerError(
                    f"{self.path}: record {record.index} has a missing or invalid signature "
                    f"(line {record.index + 1}): it was altered, or signed by another key "
                    "than the one given",
                    line=record.index + 1,
                )
        return len(records)

    # ------------------------------------------------------------------ writing
    def append(
        self,
        *,
        run_id: str,
        round: int,
        client_id: str,
        event: DpEvent,
        accountant: str,
        delta: float,
    ) -> LedgerRecord:
        """Durably append the event of ``round`` of ``run_id`` and return its record.

        ``epsilon_after`` is recomputed over every recorded event plus this one. The
        new ledger is durable (written, ``fsync``-ed, renamed) before this returns.

        Raises
        ------
        LedgerError
            If the ledger is torn, corrupt or tampered with, if this round of this
            run is already recorded (check :meth:`has_round` first to be idempotent), or
            if the new ledger could not be written (a full disk): then nothing changed.
        """
        _check_append_args(run_id, round, client_id, event)
        with self._locked():
            data = self.path.read_bytes() if self.path.exists() else b""
            existing = self._parse(data)
            if any(r.run_id == run_id and r.round == round for r in existing):
                raise LedgerError(
                    f"{self.path}: round {round} of run {run_id!r} is already recorded; "
                    "a round's ε must be spent only once (use has_round to skip it)"
                )
            if existing and float(delta) != existing[0].delta:
                raise LedgerError(
                    f"{self.path}: δ={delta!r} differs from the ledger's δ="
                    f"{existing[0].delta!r} (fixed by its first record): a budget is one "
                    "(ε, δ) pair, and a larger δ later would make spent ε look smaller"
                )
            eps = epsilon_from_events(
                [*(r.event for r in existing), event], delta=delta, accountant=accountant
            )
            record = self._new_record(
                existing, run_id, round, client_id, event, accountant, delta, eps
            )
            line = _canonical_json(record.to_dict()) + "\n"
            self._replace(data + line.encode("ascii"))
        log.debug("ledger %s: appended round %s of run %s (ε=%.4g)", self.path, round, run_id, eps)
        return record

    # ------------------------------------------------------------------ helpers
    def _new_record(
        self,
        existing: list[LedgerRecord],
        run_id: str,
        round: int,
        client_id: str,
        event: DpEvent,
        accountant: str,
        delta: float,
        eps: float,
    ) -> LedgerRecord:
        fields: dict[str, Any] = {
            "index": len(existing),
            "run_id": run_id,
            "round": round,
            "client_id": client_id,
            "event": {
                "noise_multiplier": event.noise_multiplier,
                "sample_rate": event.sample_rate,
                "steps": event.steps,
            },
            "accountant": accountant,
            "accountant_version": opacus.__version__,
            "delta": float(delta),
            "epsilon_after": eps if math.isfinite(eps) else None,
            "timestamp": datetime.now(UTC).isoformat(),
            "prev_hash": existing[-1].hash if existing else GENESIS_HASH,
        }
        fields["hash"] = record_hash(fields)
        fields["signature"] = self._signer(fields["hash"]) if self._signer else None
        return LedgerRecord.from_dict(fields, where="new record")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One appender at a time; the lock lives in its own file because the ledger's
        inode changes with every rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _replace(self, content: bytes) -> None:
        """Write ``content`` beside the ledger, make it durable, rename it over the ledger."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise LedgerError(f"{self.path}: the new record could not be written ({exc}); "
                              "the ledger is unchanged and no ε was spent") from exc
        _fsync_directory(self.path.parent)

    def _parse(self, data: bytes) -> list[LedgerRecord]:
        """Parse the whole file and verify its hash chain."""
        if not data:
            return []
        lines = data.split(b"\n")
        if lines[-1] != b"":
            raise LedgerError(
                f"{self.path}: the last record (line {len(lines)}) is torn: it has no "
                "trailing newline, so a write was interrupted. The ledger is left as it is "
                "for inspection; restore it from a backup or have it audited.",
                line=len(lines),
            )
        lines.pop()
        records: list[LedgerRecord] = []
        seen_rounds: set[tuple[str, int]] = set()
        prev_hash = GENESIS_HASH
        for number, line in enumerate(lines, start=1):
            try:
                record = self._check_line(line, number, len(lines), prev_hash, seen_rounds,
                                          records[0].delta if records else None)
            except LedgerError as exc:
                if exc.line is not None:
                    raise
                raise LedgerError(str(exc), line=number) from exc
            seen_rounds.add((record.run_id, record.round))
            records.append(record)
            prev_hash = record.hash
        return records

    def _check_line(
        self,
        line: bytes,
        number: int,
        total: int,
        prev_hash: str,
        seen_rounds: set[tuple[str, int]],
        first_delta: float | None = None,
    ) -> LedgerRecord:
        """Parse line ``number`` and check it against the chain so far."""
        raw = self._decode_line(line, number, last=number == total)
        where = f"{self.path}: record {number - 1} (line {number})"
        record = LedgerRecord.from_dict(raw, where=where)
        if line != _canonical_json(raw).encode("ascii"):
            raise LedgerError(
                f"{where}: the line is not in canonical JSON form (sorted keys, no spaces, "
                "ASCII, shortest numbers): it was edited after it was written"
            )
        if record.index != number - 1:
            raise LedgerError(f"{where}: index is {record.index}, expected {number - 1}")
        if record.prev_hash != prev_hash:
            raise LedgerError(
                f"{where}: prev_hash {record.prev_hash[:12]}... does not match the "
                f"previous record's hash {prev_hash[:12]}... (records removed, "
                "inserted or reordered)"
            )
        computed = record_hash(raw)
        if record.hash != computed:
            raise LedgerError(
                f"{where}: hash mismatch (stored {record.hash[:12]}..., computed "
                f"{computed[:12]}...): the record was modified after it was written"
            )
        if (record.run_id, record.round) in seen_rounds:
            raise LedgerError(
                f"{where}: round {record.round} of run {record.run_id!r} is recorded twice"
            )
        if first_delta is not None and record.delta != first_delta:
            raise LedgerError(
                f"{where}: δ={record.delta!r} differs from the first record's δ="
                f"{first_delta!r}; a ledger's δ is fixed by its first record"
            )
        return record

    def _decode_line(self, line: bytes, number: int, *, last: bool) -> object:
        try:
            return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            if last:
                raise LedgerError(
                    f"{self.path}: the last record (line {number}) is torn or corrupt: "
                    f"{exc}. The ledger is left as it is for inspection; restore it from "
                    "a backup or have it audited."
                ) from exc
            raise LedgerError(f"{self.path}: line {number} is corrupt: {exc}") from exc


def _check_append_args(run_id: str, round: int, client_id: str, event: DpEvent) -> None:
    if not isinstance(run_id, str) or not run_id:
        raise ConfigError(f"run_id must be a non-empty string, found {run_id!r}")
    if not isinstance(round, int) or isinstance(round, bool) or round < 0:
        raise ConfigError(f"round must be an integer >= 0, found {round!r}")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"client_id must be a non-empty string, found {client_id!r}")
    if not isinstance(event, DpEvent):
        raise ConfigError(f"event must be a DpEvent, found {type(event).__name__}")


def _fsync_directory(directory: Path) -> None:
    """Make the renamed ledger's directory entry durable too (POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
