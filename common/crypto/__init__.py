"""Cryptography: TLS certificates and node keys (``certs``), and the Ed25519 keys that
sign each client's privacy-ledger records (``keys``, re-exported here)."""

from common.crypto.keys import (
    LEDGER_KEY_FILE,
    LEDGER_PUBLIC_KEY_FILE,
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

__all__ = [
    "LEDGER_KEY_FILE",
    "LEDGER_PUBLIC_KEY_FILE",
    "generate_private_key",
    "key_fingerprint",
    "ledger_signer",
    "ledger_verifier",
    "load_or_create_private_key",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "save_public_key",
    "sign_record_hash",
    "verify_record_hash",
]
