"""`fedistill audit verify/report` behind the CLI: tampering, torn records, ε recomputation."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import opacus.accountants.analysis.rdp as opacus_rdp
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

import common.privacy.ledger as ledger_module
import simulations.ledger_audit as ledger_audit
from common.crypto.keys import (
    LEDGER_PUBLIC_KEY_FILE,
    generate_private_key,
    key_fingerprint,
    ledger_signer,
    load_public_key,
    save_public_key,
    sign_record_hash,
)
from common.errors import ConfigError
from common.privacy.accounting import DpEvent, epsilon_from_events
from common.privacy.independent import DP_ACCOUNTING_VERSION, independent_epsilons
from common.privacy.ledger import PrivacyLedger, record_hash
from simulations.ledger_audit import audit_ledgers
from simulations.ledger_report import write_report
from simulations.ledger_verify import (
    load_coordinator_metrics,
    resolve_ledgers,
    verify_findings,
    verify_ledger,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
DELTA = 1e-5
# A repeated (σ, q) pair on purpose: the accounting merges them, Opacus' history does not.
# Few distinct pairs keep the tests fast (each costs Opacus' RDP ~40 ms on this CPU).
EVENTS = [DpEvent(1.1, 0.02, 40), DpEvent(0.9, 0.05, 25), DpEvent(1.1, 0.02, 60)]


def _ledger(directory: Path, events: list[DpEvent] = EVENTS, accountant: str = "rdp",
            client_id: str = "client-0") -> tuple[Path, object]:
    """A signed ledger with its public key beside it; returns (path, private key)."""
    key = generate_private_key()
    directory.mkdir(parents=True, exist_ok=True)
    save_public_key(key, directory / LEDGER_PUBLIC_KEY_FILE)
    ledger = PrivacyLedger(directory / "ledger.jsonl", signer=ledger_signer(key))
    for rnd, event in enumerate(events, start=1):
        ledger.append(run_id="run-1", round=rnd, client_id=client_id, event=event,
                      accountant=accountant, delta=DELTA)
    return ledger.path, key


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


# ---------------------------------------------------------------- verify
def test_intact_ledger_verifies(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path / "c0")
    result = verify_ledger(path)
    assert result.ok and result.records == len(EVENTS), result.message
    assert result.bad_record is None and not result.torn


def test_every_flipped_byte_is_detected_at_its_record(tmp_path: Path) -> None:
    """Flip each byte of a two-record ledger with several bit masks; every single change
    fails verification, and the first bad record is the one holding the changed byte.

    The masks include 0x20 (ASCII case: ``e``/``E`` in ``1e-05`` and ``a``/``A`` in hex
    decode to the same values, which only the canonical-line and strict-signature rules
    catch) and 0x01 (every digit, quote, brace, comma, colon and letter changes)."""
    path, _ = _ledger(tmp_path / "c0", EVENTS[:2])
    original = path.read_bytes()
    tampered = tmp_path / "c0" / "tampered.jsonl"
    missed: list[tuple[int, int]] = []
    misplaced: list[tuple[int, int, int | None]] = []
    for pos in range(len(original)):
        for mask in (0x01, 0x20):
            data = bytearray(original)
            data[pos] ^= mask
            tampered.write_bytes(bytes(data))
            result = verify_ledger(tampered, tmp_path / "c0" / LEDGER_PUBLIC_KEY_FILE)
            if result.ok:
                missed.append((pos, mask))
            elif result.bad_line != _line_of(original, pos):
                misplaced.append((pos, mask, result.bad_line))
    assert not missed, f"undetected flips (position, mask): {missed[:10]}"
    assert not misplaced, f"flips reported at the wrong record: {misplaced[:10]}"


def test_truncated_last_record_is_reported_as_torn(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path / "c0")
    original = path.read_bytes()
    last_start = original.rstrip(b"\n").rfind(b"\n") + 1
    for cut in range(last_start + 1, len(original)):  # every cut inside the last record
        path.write_bytes(original[:cut])
        result = verify_ledger(path)
        assert not result.ok and result.torn, cut
        assert (result.bad_record, result.bad_line, result.records) == (2, 3, 2), cut
        assert "torn" in result.message
    # Cutting the whole last record leaves a valid shorter chain: only a head hash kept
    # elsewhere could tell (see ledger.py), so the report shows the record count.
    path.write_bytes(original[:last_start])
    assert verify_ledger(path).records == 2


@pytest.mark.parametrize(
    ("label", "setup", "expect"),
    [
        ("no public key", "delete-key", "Cannot read the public key"),
        ("another client's key", "other-key", "record 0 has a missing or invalid signature"),
        ("unsigned records", "unsigned", "record 0 has a missing or invalid signature"),
        ("empty ledger", "empty", "empty"),
        ("missing ledger", "missing", "no such ledger"),
    ],
)
def test_verify_failures(tmp_path: Path, label: str, setup: str, expect: str) -> None:
    path, _ = _ledger(tmp_path / "c0", EVENTS[:2])
    key_path = tmp_path / "c0" / LEDGER_PUBLIC_KEY_FILE
    if setup == "delete-key":
        key_path.unlink()
    elif setup == "other-key":
        save_public_key(generate_private_key(), key_path)
    elif setup == "unsigned":
        path.unlink()
        PrivacyLedger(path).append(run_id="r", round=1, client_id="c", event=EVENTS[0],
                                   accountant="rdp", delta=DELTA)
    elif setup == "empty":
        path.write_bytes(b"")
    elif setup == "missing":
        path.unlink()
    result = verify_ledger(path)
    assert not result.ok, label
    assert expect in result.message, (label, result.message)


def test_resolve_ledgers_accepts_files_client_and_run_directories(tmp_path: Path) -> None:
    a, _ = _ledger(tmp_path / "run" / "clients" / "client-0", EVENTS[:1])
    b, _ = _ledger(tmp_path / "run" / "clients" / "client-1", EVENTS[:1])
    assert resolve_ledgers([tmp_path / "run"]) == [a, b]
    assert resolve_ledgers([a.parent, b]) == [a, b]


# ---------------------------------------------------------------- report: ε
def test_recomputed_epsilon_matches_a_fresh_opacus_accountant(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path / "c0")
    report = audit_ledgers([path])
    client = report.clients[0]
    assert report.ok, report.findings
    for i, record in enumerate(client.records):
        reference = RDPAccountant()  # Opacus' own accountant, one history entry per round
        reference.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in EVENTS[: i + 1]]
        expected = reference.get_epsilon(delta=DELTA)
        assert record.epsilon_recomputed == pytest.approx(expected, abs=1e-6)
        assert record.epsilon_rdp == pytest.approx(expected, abs=1e-6)
        assert record.difference is not None and record.difference <= 1e-6
    assert client.epsilon == pytest.approx(client.records[-1].epsilon_recomputed)


def test_prv_ledger_is_recomputed_with_prv_and_cross_checked_with_rdp(tmp_path: Path) -> None:
    events = EVENTS[:1]  # PRV costs ~0.5 s per ε on this CPU
    path, _ = _ledger(tmp_path / "c0", events, accountant="prv")
    client = audit_ledgers([path]).clients[0]
    reference = PRVAccountant()
    reference.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    assert client.accountant == "prv"
    assert client.epsilon == pytest.approx(reference.get_epsilon(delta=DELTA), abs=1e-6)
    assert client.epsilon < client.epsilon_rdp  # PRV is the tighter of the two here
    assert not client.findings


def _rewrite(path: Path, key: object, change: dict[int, dict]) -> None:
    """A client that lies: edit records, then re-hash, re-chain and re-sign them all."""
    raws = [json.loads(line) for line in path.read_text().splitlines()]
    prev = "0" * 64
    lines = []
    for i, raw in enumerate(raws):
        raw.update(change.get(i, {}))
        raw["prev_hash"] = prev
        raw["hash"] = record_hash(raw)
        raw["signature"] = sign_record_hash(key, raw["hash"])  # type: ignore[arg-type]
        prev = raw["hash"]
        lines.append(json.dumps(raw, sort_keys=True, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")


def test_claims_the_events_do_not_support_are_findings(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path / "c0")
    truth = audit_ledgers([path]).clients[0].records[1].epsilon_recomputed
    _rewrite(path, key, {1: {"epsilon_after": truth - 0.5}})  # under-claims record 1
    assert verify_ledger(path).ok  # validly signed: only recomputation can catch it
    report = audit_ledgers([path])
    errors = [f for f in report.findings if f.severity == "error"]
    assert not report.ok
    assert [f.record for f in errors] == [1]
    assert "record 1 claims" in errors[0].message


def test_a_claim_within_tolerance_is_not_a_finding(tmp_path: Path) -> None:
    path, key = _ledger(tmp_path / "c0", EVENTS[:2])
    truth = audit_ledgers([path]).clients[0].records[0].epsilon_recomputed
    _rewrite(path, key, {0: {"epsilon_after": truth + 5e-7}})
    assert audit_ledgers([path]).ok
    _rewrite(path, key, {0: {"epsilon_after": truth + 2e-6}})
    assert not audit_ledgers([path]).ok


# ---------------------------------------------------------------- report: budgets
def test_budget_summary_across_clients(tmp_path: Path) -> None:
    small, _ = _ledger(tmp_path / "a", EVENTS[:1], client_id="client-a")
    large, _ = _ledger(tmp_path / "b", EVENTS, client_id="client-b")
    mid, _ = _ledger(tmp_path / "c", EVENTS[:2], client_id="client-c")
    # the claims are right (other tests check that); reading them avoids recomputing
    eps = {f"client-{k}": PrivacyLedger(p).records()[-1].epsilon_after
           for k, p in (("a", small), ("b", large), ("c", mid))}
    # a budget between client-c's ε and client-b's: b is over (an error), c is exhausted
    # when another round like its last would pass the budget
    budget = (eps["client-c"] + eps["client-b"]) / 2
    report = audit_ledgers([small, large, mid], budget=budget)
    by_id = {c.client_id: c for c in report.clients}
    assert report.epsilon_max == pytest.approx(eps["client-b"])
    assert report.epsilon_median == pytest.approx(eps["client-c"])
    assert by_id["client-b"].budget_left == pytest.approx(budget - eps["client-b"])
    assert by_id["client-b"].budget_left < 0 and by_id["client-b"].exhausted
    assert by_id["client-a"].exhausted is False
    assert "client-b" in report.exhausted and "client-a" not in report.exhausted
    errors = [f for f in report.findings if f.severity == "error"]
    assert len(errors) == 1 and "exceeds the budget" in errors[0].message


def test_report_writes_json_csv_and_png(tmp_path: Path) -> None:
    a, _ = _ledger(tmp_path / "a", EVENTS[:2], client_id="client-a")
    b, _ = _ledger(tmp_path / "b", EVENTS, client_id="client-b")
    (tmp_path / "b" / LEDGER_PUBLIC_KEY_FILE).unlink()  # unchecked: a note, when allowed
    report = audit_ledgers([a, b], budget=20.0, allow_unsigned=True)
    paths = write_report(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["ok"] is True and data["budget"] == 20.0
    assert data["dp_accounting_version"] == DP_ACCOUNTING_VERSION
    assert [c["client_id"] for c in data["clients"]] == ["client-a", "client-b"]
    assert [c["signatures"] for c in data["clients"]] == ["valid", "unchecked"]
    assert len(data["clients"][1]["records"]) == len(EVENTS)
    # the second accountant's numbers, as the pure functions give them
    independent = independent_epsilons(EVENTS, delta=DELTA)
    assert data["clients"][1]["independent"] == asdict(independent)
    assert data["clients"][1]["independent"]["pld"] < data["clients"][1]["epsilon_rdp"]
    with paths["clients_csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["client_id"] for r in rows] == ["client-a", "client-b"]
    assert float(rows[1]["epsilon"]) == pytest.approx(report.clients[1].epsilon)
    assert float(rows[1]["epsilon_dpa_rdp"]) == pytest.approx(independent.rdp)
    assert float(rows[1]["epsilon_dpa_pld"]) == pytest.approx(independent.pld)
    assert float(rows[1]["epsilon_rdp_int"]) == pytest.approx(independent.rdp_integer,
                                                             abs=1e-6)
    with paths["records_csv"].open() as fh:
        assert len(list(csv.DictReader(fh))) == 2 + len(EVENTS)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_a_tampered_ledger_is_an_error_not_a_crash(tmp_path: Path) -> None:
    good, _ = _ledger(tmp_path / "a", EVENTS[:2], client_id="client-a")
    bad, _ = _ledger(tmp_path / "b", EVENTS[:2], client_id="client-b")
    bad.write_bytes(bad.read_bytes().replace(b'"steps":40', b'"steps":4', 1))
    report = audit_ledgers([good, bad])
    assert not report.ok
    assert report.clients[0].epsilon is not None and report.clients[1].epsilon is None
    assert report.findings[0].record == 0 and "hash mismatch" in report.findings[0].message
    write_report(report, tmp_path / "out")  # still writes what it could audit


# ---------------------------------------------------------------- fail closed
def _drop_last_record(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))


def _setup(case: str, directory: Path) -> tuple[Path, dict]:
    """A ledger broken in the way ``case`` names; returns (path, audit_ledgers kwargs)."""
    events = EVENTS[:2]
    path, _ = _ledger(directory, events)
    key_path = directory / LEDGER_PUBLIC_KEY_FILE
    kwargs: dict = {}
    if case == "missing public key":
        key_path.unlink()
    elif case == "empty ledger, unsigned allowed":
        key_path.unlink()
        path.write_bytes(b"")
        kwargs["allow_unsigned"] = True
    elif case == "missing ledger file":
        path.unlink()
    elif case == "broken chain":  # the first record removed
        path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[1:]))
    elif case == "bad signature":
        save_public_key(generate_private_key(), key_path)
    elif case == "torn file":
        path.write_bytes(path.read_bytes()[:-9])
    elif case == "budget passed":
        kwargs["budget"] = 0.5
    return path, kwargs


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing public key", "no public key at"),
        ("empty ledger, unsigned allowed", "the ledger is empty"),
        ("missing ledger file", "no such ledger file"),
        ("broken chain", "index is 1, expected 0"),
        ("bad signature", "missing or invalid signature"),
        ("torn file", "torn"),
        ("budget passed", "exceeds the budget"),
    ],
)
def test_report_fails_closed(tmp_path: Path, case: str, expect: str) -> None:
    """Whatever the audit could not prove is an error, never a note or a pass. Before,
    a missing key was a note (ok) and an empty unsigned ledger passed with ε = 0."""
    path, kwargs = _setup(case, tmp_path / "c0")
    report = audit_ledgers([path], **kwargs)
    errors = [f.message for f in report.findings if f.severity == "error"]
    assert not report.ok, case
    assert any(expect in m for m in errors), (case, errors)


def test_allow_unsigned_turns_a_missing_key_into_a_visible_note(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path / "c0", EVENTS[:2])
    (tmp_path / "c0" / LEDGER_PUBLIC_KEY_FILE).unlink()
    report = audit_ledgers([path], allow_unsigned=True)
    assert report.ok and report.clients[0].signatures == "unchecked"
    notes = [f.message for f in report.findings if f.severity == "note"]
    assert any("signatures NOT checked (--allow-unsigned)" in m for m in notes), notes


def test_a_record_with_another_delta_fails_verify_and_report(tmp_path: Path) -> None:
    """δ is fixed by the first record: a later record with another δ (honestly claimed,
    validly signed and chained) is an error at that record in both commands, never a
    note with ε at the last record's δ (a larger δ gives a smaller ε)."""
    path, key = _ledger(tmp_path / "c0")
    _rewrite(path, key, {2: {"delta": 1e-3,
                             "epsilon_after": epsilon_from_events(EVENTS, delta=1e-3)}})
    result = verify_ledger(path)
    assert (result.ok, result.bad_record) == (False, 2)
    report = audit_ledgers([path])
    errors = [f for f in report.findings if f.severity == "error"]
    assert [(f.record, "δ=0.001 differs from the first record's δ=1e-05" in f.message)
            for f in errors] == [(2, True)], errors
    assert report.clients[0].epsilon is None  # no ε is reported for such a ledger


@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("missing file", lambda d: [d / "nope.jsonl"]),
        ("missing directory", lambda d: [d / "no-run"]),
        ("directory without ledgers", lambda d: [d]),
    ],
)
def test_resolve_ledgers_rejects_what_does_not_exist(tmp_path: Path, label: str, make) -> None:
    """Bad input is exit 2 before anything is audited (a missing file was passed on and
    reported like a failed ledger)."""
    with pytest.raises(ConfigError, match="no such file|without ledger.jsonl"):
        resolve_ledgers(make(tmp_path))


def test_an_explicit_public_key_that_does_not_exist_is_bad_usage(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path / "c0", EVENTS[:1])
    with pytest.raises(ConfigError, match="--public-key .*no such file"):
        audit_ledgers([path], public_keys=[tmp_path / "missing.pub"])


# ---------------------------------------------------------------- coordinator heads
def _write_metrics(out: Path, *ledgers: Path, extra: dict | None = None) -> Path:
    """The coordinator's metrics.jsonl: after round r, each client's head, its record
    count and its key fingerprint, taken from the ledgers as they are now."""
    seen = {}
    for path in ledgers:
        records = PrivacyLedger(path).records()
        fingerprint = key_fingerprint(load_public_key(path.parent / LEDGER_PUBLIC_KEY_FILE))
        seen[records[-1].client_id] = (records, fingerprint)
    lines = [json.dumps({"run_id": "run-1", "rounds": 5})]  # not a round line
    for rnd in range(1, max(len(r) for r, _ in seen.values()) + 1):
        heads = {cid: {"head": records[rnd - 1].hash, "records": rnd, "key": fingerprint}
                 for cid, (records, fingerprint) in seen.items() if len(records) >= rnd}
        lines.append(json.dumps({"round": rnd, "epsilon_max": 1.0, "ledgers": heads,
                                 **(extra or {})}))
    out.write_text("\n".join(lines) + "\n")
    return out


def _tamper(case: str, path: Path, key: object) -> None:
    if case == "truncated":
        _drop_last_record(path)
    elif case == "rewritten":  # a harmless field, re-hashed and re-signed: chain valid
        _rewrite(path, key, {1: {"timestamp": "2020-01-01T00:00:00+00:00"}})
    elif case == "key swapped":  # a new ledger under a new key, both files replaced
        other = generate_private_key()
        _rewrite(path, other, {})
        save_public_key(other, path.parent / LEDGER_PUBLIC_KEY_FILE)


@pytest.mark.parametrize(
    ("case", "expect", "record"),
    [
        ("intact", None, None),
        ("truncated", "records were cut off its end", 2),
        ("rewritten", "the ledger was rolled back or rewritten", 1),
        ("key swapped", "its public key were replaced together", None),
    ],
)
def test_ledgers_are_checked_against_the_coordinator_heads(
    tmp_path: Path, case: str, expect: str | None, record: int | None
) -> None:
    """Each tampering leaves a ledger that verifies on its own; only the heads the
    coordinator recorded show it (before, there was no way to pass them)."""
    path, key = _ledger(tmp_path / "c0")
    other, _ = _ledger(tmp_path / "c1", EVENTS[:1], client_id="client-1")
    metrics = _write_metrics(tmp_path / "metrics.jsonl", path, other)
    _tamper(case, path, key)
    assert verify_ledger(path).ok, case
    report = audit_ledgers([path], coordinator_metrics=metrics)  # client-1 not audited
    errors = [f for f in report.findings if f.severity == "error"]
    assert report.clients[0].coordinator_records == len(EVENTS)
    if expect is None:
        assert report.ok, report.findings
        assert not report.findings
    else:
        assert [(expect in f.message, f.record) for f in errors] == [(True, record)], errors
    verified = verify_findings([verify_ledger(path)], load_coordinator_metrics(metrics))
    assert [f.message for f in verified if f.severity == "error"] == [f.message for f in errors]


def test_a_ledger_the_coordinator_never_saw_is_a_note(tmp_path: Path) -> None:
    path, _ = _ledger(tmp_path / "c0", EVENTS[:1])
    other, _ = _ledger(tmp_path / "c1", EVENTS[:1], client_id="client-1")
    report = audit_ledgers([path], coordinator_metrics=_write_metrics(tmp_path / "m", other))
    assert report.ok
    assert [f.severity for f in report.findings] == ["note"]
    assert "never appears in the coordinator's metrics" in report.findings[0].message


@pytest.mark.parametrize(
    ("label", "content", "match"),
    [
        ("not JSON", '{"round": 1, "ledgers": {}}\n{"round": 2,', "line 2 is not JSON"),
        ("bad head", '{"round": 1, "ledgers": {"c": {"head": "xy", "records": 1, '
                     '"key": "sha256:' + "0" * 64 + '"}}}\n', "not a sha256 hex digest"),
        ("bad count", '{"round": 1, "ledgers": {"c": {"head": "' + "a" * 64 + '", '
                      '"records": -1, "key": "sha256:' + "0" * 64 + '"}}}\n', "count >= 0"),
        ("no heads at all", '{"round": 1, "epsilon_max": 1.0}\n', "no round line carries"),
    ],
)
def test_unusable_coordinator_metrics_are_bad_input(tmp_path: Path, label: str, content: str,
                                                    match: str) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_coordinator_metrics(metrics)
    with pytest.raises(ConfigError, match="cannot read it"):
        load_coordinator_metrics(tmp_path / "absent.jsonl")


# ---------------------------------------------------------------- the second accountant
def _scale_opacus_rdp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opacus' RDP maths under-reports by 20 %, for the client and the auditor alike."""
    real = opacus_rdp.compute_rdp
    monkeypatch.setattr(opacus_rdp, "compute_rdp",
                        lambda **kw: np.asarray(real(**kw)) * 0.8)


def _halve_ledger_accountant(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's accountant (the one path both client and auditor call) halves RDP ε."""
    def fake(events, *, delta, accountant="rdp"):
        eps = epsilon_from_events(events, delta=delta, accountant=accountant)
        return eps * 0.5 if accountant == "rdp" else eps

    monkeypatch.setattr(ledger_module, "epsilon_from_events", fake)
    monkeypatch.setattr(ledger_audit, "epsilon_from_events", fake)


@pytest.mark.parametrize(
    ("label", "tamper", "expect"),
    [
        ("honest accountants", None, None),
        ("Opacus RDP maths", _scale_opacus_rdp, "disagree on RDP at the integer orders"),
        ("ledger accountant", _halve_ledger_accountant, "under-reports ε"),
    ],
)
def test_a_tampered_accountant_is_caught_by_the_independent_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, label: str, tamper, expect: str | None
) -> None:
    """The client wrote its claims with the same broken accountant the auditor uses, so
    every claim matches its recomputation: only dp_accounting can tell."""
    if tamper is not None:
        tamper(monkeypatch)
    path, _ = _ledger(tmp_path / "c0")
    report = audit_ledgers([path])
    errors = [f.message for f in report.findings if f.severity == "error"]
    assert all(r.difference is not None and r.difference <= 1e-6
               for r in report.clients[0].records), label
    if expect is None:
        assert report.ok, errors
    else:
        assert any(expect in m for m in errors), (label, errors)
