"""The privacy ledger: durable appends, hash chain, torn/tampered files, budget property."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import opacus
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import LedgerError
from common.privacy.accounting import DpEvent, check_budget, epsilon_from_events
from common.privacy.ledger import GENESIS_HASH, PrivacyLedger, record_hash

DELTA = 1e-5
EVENTS = [DpEvent(1.0, 0.01, 100), DpEvent(1.2, 0.02, 50), DpEvent(0.9, 0.01, 80)]

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


def _fill(path: Path, events: list[DpEvent] = EVENTS, run_id: str = "run-a") -> PrivacyLedger:
    ledger = PrivacyLedger(path)
    for rnd, event in enumerate(events, start=1):
        ledger.append(
            run_id=run_id, round=rnd, client_id="c1", event=event, accountant="rdp", delta=DELTA
        )
    return ledger


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------- append and reload
def test_append_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "ledger.jsonl"  # parents are created
    written = _fill(path)

    reloaded = PrivacyLedger(path)
    records = reloaded.records()
    assert records == written.records()
    assert reloaded.events() == EVENTS
    assert [r.index for r in records] == [0, 1, 2]
    assert [r.round for r in records] == [1, 2, 3]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert {r.accountant_version for r in records} == {opacus.__version__}

    # One canonical JSON object per line; hash = sha256 of it without hash/signature.
    for line, record in zip(_lines(path), records, strict=True):
        raw = json.loads(line)
        assert line == json.dumps(raw, sort_keys=True, separators=(",", ":"))
        body = {k: v for k, v in raw.items() if k not in ("hash", "signature")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
        assert raw["hash"] == digest.hexdigest() == record.hash
        assert raw["signature"] is None


def test_epsilon_is_recomputed_from_events(tmp_path: Path) -> None:
    ledger = _fill(tmp_path / "l.jsonl")
    expected = epsilon_from_events(EVENTS, delta=DELTA, accountant="rdp")
    assert ledger.epsilon() == expected
    assert ledger.records()[-1].epsilon_after == expected
    assert [r.epsilon_after for r in ledger.records()] == [
        epsilon_from_events(EVENTS[: i + 1], delta=DELTA) for i in range(len(EVENTS))
    ]
    assert ledger.epsilon(delta=1e-6) == epsilon_from_events(EVENTS, delta=1e-6)
    assert PrivacyLedger(tmp_path / "missing.jsonl").epsilon() == 0.0


def test_stored_epsilon_is_never_trusted(tmp_path: Path) -> None:
    """A record with a valid hash but a false claimed ε: the ledger recomputes ε."""
    path = tmp_path / "l.jsonl"
    _fill(path, EVENTS[:1])
    raw = json.loads(_lines(path)[0])
    raw["epsilon_after"] = 0.0
    raw["hash"] = record_hash(raw)
    path.write_text(json.dumps(raw, sort_keys=True, separators=(",", ":")) + "\n")

    ledger = PrivacyLedger(path)
    ledger.verify()  # the chain is intact: the claim was made, just wrongly
    assert ledger.records()[0].epsilon_after == 0.0
    assert ledger.epsilon() == epsilon_from_events(EVENTS[:1], delta=DELTA) > 1.0


def test_fsync_after_each_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.jsonl"
    synced_sizes: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            synced_sizes.append(info.st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ledger = PrivacyLedger(path)
    for rnd in range(3):
        ledger.append(
            run_id="r", round=rnd, client_id="c", event=EVENTS[0], accountant="rdp", delta=DELTA
        )
        # The file was synced when it already held the whole new line.
        assert synced_sizes[-1] == path.stat().st_size
    assert len(synced_sizes) == 3


_FULL_DISK_APPEND = """
import resource, signal, sys
from common.errors import LedgerError
from common.privacy.accounting import DpEvent
from common.privacy.ledger import PrivacyLedger
ledger = PrivacyLedger(sys.argv[1])
# a real failing write(2): beyond RLIMIT_FSIZE the kernel answers EFBIG, as a full disk
# answers ENOSPC, part way through the new line (SIGXFSZ ignored so the write returns)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    ledger.append(run_id="run-a", round=9, client_id="c1", event=DpEvent(1.0, 0.01, 100),
                  accountant="rdp", delta=1e-5)
except LedgerError as exc:
    print("refused:", exc)
"""


def test_a_full_disk_mid_append_leaves_the_ledger_whole(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    before = _fill(path).records()
    size = path.stat().st_size
    run = subprocess.run([sys.executable, "-c", _FULL_DISK_APPEND, str(path), str(size + 40)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("refused:") and "unchanged" in run.stdout
    assert PrivacyLedger(path).records() == before  # nothing torn, nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl", "ledger.jsonl.lock"]
    # with room again, the same round is appended once
    PrivacyLedger(path).append(run_id="run-a", round=9, client_id="c1", event=EVENTS[0],
                               accountant="rdp", delta=DELTA)
    assert len(PrivacyLedger(path).records()) == len(before) + 1


# ------------------------------------------------------------------- double rounds
def test_a_round_is_recorded_once(tmp_path: Path) -> None:
    ledger = _fill(tmp_path / "l.jsonl")
    assert ledger.has_round("run-a", 2)
    assert not ledger.has_round("run-a", 4)
    assert not ledger.has_round("run-b", 2)
    before = (tmp_path / "l.jsonl").read_bytes()
    with pytest.raises(LedgerError, match="round 2 of run 'run-a' is already recorded"):
        ledger.append(
            run_id="run-a",
            round=2,
            client_id="c1",
            event=EVENTS[0],
            accountant="rdp",
            delta=DELTA,
        )
    assert (tmp_path / "l.jsonl").read_bytes() == before
    # The same round number of another run is a different round.
    ledger.append(
        run_id="run-b", round=2, client_id="c1", event=EVENTS[0], accountant="rdp", delta=DELTA
    )
    assert ledger.epsilon() == epsilon_from_events([*EVENTS, EVENTS[0]], delta=DELTA)


# ---------------------------------------------------------------------- tampering
def _edit(index: int, change: Callable[[dict], None]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        raw = json.loads(lines[index])
        change(raw)
        lines[index] = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        return lines

    return apply


def _rehash(raw: dict) -> None:
    raw["event"]["steps"] = 1
    raw["hash"] = record_hash(raw)


TAMPERS = [
    pytest.param(
        _edit(1, lambda r: r["event"].update(steps=5)), r"record 1 .*hash mismatch", id="steps"
    ),
    pytest.param(
        _edit(1, lambda r: r["event"].update(noise_multiplier=9.0)),
        r"record 1 .*hash mismatch",
        id="noise-multiplier",
    ),
    pytest.param(_edit(2, lambda r: r.update(delta=0.1)), r"record 2 .*hash mismatch", id="delta"),
    pytest.param(
        _edit(0, lambda r: r.update(epsilon_after=0.01)),
        r"record 0 .*hash mismatch",
        id="claimed-epsilon",
    ),
    pytest.param(_edit(1, _rehash), r"record 2 .*prev_hash", id="edit-and-rehash"),
    pytest.param(lambda ls: [ls[0], ls[2]], r"record 1 .*index is 2", id="delete-middle"),
    pytest.param(lambda ls: [ls[1], ls[0], ls[2]], r"record 0 .*index is 1", id="swap"),
    pytest.param(
        _edit(1, lambda r: r["event"].update(steps=-5)), r"record 1 .*steps", id="invalid-event"
    ),
    pytest.param(
        _edit(1, lambda r: r.update(extra=1)), r"record 1 .*unexpected \['extra'\]", id="extra-key"
    ),
]


@pytest.mark.parametrize(("tamper", "message"), TAMPERS)
def test_tampering_is_detected_at_its_index(
    tmp_path: Path, tamper: Callable[[list[str]], list[str]], message: str
) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path).verify()
    path.write_text("\n".join(tamper(_lines(path))) + "\n")
    ledger = PrivacyLedger(path)
    with pytest.raises(LedgerError, match=message):
        ledger.verify()
    with pytest.raises(LedgerError, match=message):  # and ε is not computed from it
        ledger.epsilon()


# ------------------------------------------------------------------ torn and corrupt
def test_torn_last_record_is_reported_not_repaired(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = _fill(path)
    data = path.read_bytes()
    torn = data[: len(data) - 40]  # a crash mid-write: no trailing newline
    path.write_bytes(torn)
    with pytest.raises(LedgerError, match=r"last record \(line 3\) is torn"):
        ledger.records()
    with pytest.raises(LedgerError, match="torn"):
        ledger.append(
            run_id="run-a",
            round=9,
            client_id="c1",
            event=EVENTS[0],
            accountant="rdp",
            delta=DELTA,
        )
    assert path.read_bytes() == torn  # never dropped, never repaired


def test_invalid_json_on_last_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path)
    lines = _lines(path)
    lines[-1] = lines[-1][:30]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerError, match=r"last record \(line 3\) is torn or corrupt"):
        PrivacyLedger(path).verify()


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        pytest.param("{not json", r"line 2 is corrupt", id="invalid-json"),
        pytest.param("", r"line 2 is corrupt", id="blank-line"),
        pytest.param('{"a": NaN}', r"line 2 is corrupt", id="nan-constant"),
        pytest.param("[1, 2]", r"record 1 \(line 2\): expected a JSON object", id="array"),
    ],
)
def test_corruption_in_the_middle_names_the_line(
    tmp_path: Path, garbage: str, message: str
) -> None:
    path = tmp_path / "l.jsonl"
    _fill(path)
    lines = _lines(path)
    lines[1] = garbage
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerError, match=message):
        PrivacyLedger(path).verify()


# ---------------------------------------------------------------------- signatures
def test_signature_hook(tmp_path: Path) -> None:
    def sign(digest: str) -> str:
        return "sig:" + digest[::-1]

    def check(digest: str, signature: str) -> bool:
        return signature == sign(digest)

    path = tmp_path / "signed.jsonl"
    ledger = PrivacyLedger(path, signer=sign)
    record = ledger.append(
        run_id="r", round=1, client_id="c", event=EVENTS[0], accountant="rdp", delta=DELTA
    )
    assert record.signature == sign(record.hash)
    ledger.verify(verifier=check)
    with pytest.raises(LedgerError, match="record 0 has a missing or invalid signature"):
        ledger.verify(verifier=lambda digest, signature: False)
    unsigned = _fill(tmp_path / "unsigned.jsonl")
    with pytest.raises(LedgerError, match="record 0 has a missing or invalid signature"):
        unsigned.verify(verifier=check)


# ------------------------------------------------------------------------ property
@settings(max_examples=15, deadline=None)
@given(
    budget=st.floats(0.5, 8.0),
    plans=st.lists(
        st.builds(
            DpEvent,
            # A client keeps σ and q within a run; few distinct values keep RDP cheap.
            noise_multiplier=st.sampled_from([0.7, 1.0, 2.0]),
            sample_rate=st.sampled_from([0.01, 0.05]),
            steps=st.integers(0, 800),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_no_ledger_ever_passes_the_budget(budget: float, plans: list[DpEvent]) -> None:
    """A client that appends only plans that check_budget accepts never exceeds ε."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(Path(tmp) / "ledger.jsonl")
        for rnd, plan in enumerate(plans):
            check = check_budget(
                ledger.events(), plan, delta=DELTA, budget=budget, accountant="rdp"
            )
            if check.fits:
                ledger.append(
                    run_id="run",
                    round=rnd,
                    client_id="c",
                    event=plan,
                    accountant="rdp",
                    delta=DELTA,
                )
            spent = ledger.epsilon()
            assert spent == (check.epsilon_after if check.fits else check.epsilon_now)
            assert spent <= budget
        ledger.verify()
