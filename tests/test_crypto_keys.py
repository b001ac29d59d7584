"""Ed25519 ledger keys: files, permissions, signatures, and the client's signed ledger."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.state import ClientState
from common.crypto.keys import (
    LEDGER_KEY_FILE,
    LEDGER_PUBLIC_KEY_FILE,
    SIGNATURE_CONTEXT,
    generate_private_key,
    key_fingerprint,
    ledger_signer,
    ledger_verifier,
    load_or_create_private_key,
    load_private_key,
    load_public_key,
    save_private_key,
    save_public_key,
    sign_record_hash,
    verify_record_hash,
)
from common.errors import CryptoError, LedgerError
from common.privacy.accounting import DpEvent
from common.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")
HASH = "ab" * 32


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- key files
def test_save_and_load_round_trip_with_private_mode(tmp_path: Path) -> None:
    key = generate_private_key()
    save_private_key(key, tmp_path / "k.pem")
    save_public_key(key, tmp_path / "k.pub")
    assert _mode(tmp_path / "k.pem") == 0o600
    loaded = load_private_key(tmp_path / "k.pem")
    public = load_public_key(tmp_path / "k.pub")
    assert key_fingerprint(loaded) == key_fingerprint(key) == key_fingerprint(public)
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem", "k.pub"]


def test_private_key_is_never_overwritten(tmp_path: Path) -> None:
    first = generate_private_key()
    save_private_key(first, tmp_path / "k.pem")
    with pytest.raises(CryptoError, match="refusing to overwrite"):
        save_private_key(generate_private_key(), tmp_path / "k.pem")
    assert key_fingerprint(load_private_key(tmp_path / "k.pem")) == key_fingerprint(first)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_private_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    save_private_key(generate_private_key(), tmp_path / "k.pem")
    os.chmod(tmp_path / "k.pem", mode)
    with pytest.raises(CryptoError, match="chmod 600"):
        load_private_key(tmp_path / "k.pem")


def test_wrong_key_type_and_garbage_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(pem)
    os.chmod(tmp_path / "ec.pem", 0o600)
    with pytest.raises(CryptoError, match="not an Ed25519 private key"):
        load_private_key(tmp_path / "ec.pem")
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(CryptoError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "ec.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(CryptoError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(CryptoError, match="--public-key"):
        load_public_key(tmp_path / "missing.pub")


def test_load_or_create_is_stable_and_checks_the_public_half(tmp_path: Path) -> None:
    priv, pub = tmp_path / "d" / "k.pem", tmp_path / "d" / "k.pub"
    first = load_or_create_private_key(priv, pub)
    again = load_or_create_private_key(priv, pub)
    assert key_fingerprint(first) == key_fingerprint(again) == key_fingerprint(
        load_public_key(pub))
    pub.unlink()  # a lost public key is rewritten from the private one
    load_or_create_private_key(priv, pub)
    assert key_fingerprint(load_public_key(pub)) == key_fingerprint(first)
    save_public_key(generate_private_key(), pub)  # a swapped public key is refused
    with pytest.raises(CryptoError, match="does not match"):
        load_or_create_private_key(priv, pub)


# ---------------------------------------------------------------- signatures
def test_sign_and_verify() -> None:
    key = generate_private_key()
    sig = sign_record_hash(key, HASH)
    assert len(sig) == 128 and sig == sig.lower()
    # the signed message is the context plus the raw digest (domain separation)
    key.public_key().verify(bytes.fromhex(sig), SIGNATURE_CONTEXT + bytes.fromhex(HASH))
    public = key.public_key()
    cases = {
        "valid": (HASH, sig, True),
        "other hash": ("cd" * 32, sig, False),
        "upper-case hex (same bytes, non-canonical)": (HASH, sig.upper(), False),
        "truncated": (HASH, sig[:-2], False),
        "not hex": (HASH, "zz" * 64, False),
        "malformed hash": ("AB" * 32, sig, False),
        "not a string": (HASH, None, False),
    }
    for label, (h, s, expected) in cases.items():
        assert verify_record_hash(public, h, s) is expected, label  # type: ignore[arg-type]
    other = generate_private_key().public_key()
    assert not verify_record_hash(other, HASH, sig)
    with pytest.raises(CryptoError, match="64 lowercase hex"):
        sign_record_hash(key, "xyz")


def test_signed_ledger_verifies_only_with_its_own_key(tmp_path: Path) -> None:
    key = generate_private_key()
    ledger = PrivacyLedger(tmp_path / "l.jsonl", signer=ledger_signer(key))
    for rnd in (1, 2):
        ledger.append(run_id="r", round=rnd, client_id="c", event=DpEvent(1.0, 0.1, 10),
                      accountant="rdp", delta=1e-5)
    assert ledger.verify(ledger_verifier(key.public_key())) == 2
    with pytest.raises(LedgerError, match="record 0 has a missing or invalid signature") as info:
        ledger.verify(ledger_verifier(generate_private_key().public_key()))
    assert info.value.line == 1


# ---------------------------------------------------------------- the client's state
def test_client_state_creates_a_key_and_signs_its_ledger(tmp_path: Path) -> None:
    state = ClientState(tmp_path / "client-0")
    assert _mode(tmp_path / "client-0" / LEDGER_KEY_FILE) == 0o600
    state.ledger.append(run_id="r", round=1, client_id="client-0",
                        event=DpEvent(1.0, 0.1, 10), accountant="rdp", delta=1e-5)
    # a restarted client loads the same key and keeps signing with it
    again = ClientState(tmp_path / "client-0")
    again.ledger.append(run_id="r", round=2, client_id="client-0",
                        event=DpEvent(1.0, 0.1, 10), accountant="rdp", delta=1e-5)
    public = load_public_key(tmp_path / "client-0" / LEDGER_PUBLIC_KEY_FILE)
    assert PrivacyLedger(again.ledger.path).verify(ledger_verifier(public)) == 2
    assert all(r.signature for r in again.ledger.records())
