"""Ed25519 keys for signing privacy-ledger records, with the ``cryptography`` package.

Why signatures on top of the ledger's hash chain: anyone who can write the ledger file can
rebuild a consistent chain after editing it (sha256 needs no secret). A signature by the
client's private key over each record's hash means an auditor holding only the client's
*public* key can tell that the client wrote exactly these records. The key never leaves
the client's directory; the public key is what a client registers or hands to auditors.

What is signed: ``SIGNATURE_CONTEXT + bytes.fromhex(record_hash)``. The context prefix
(domain separation) keeps a ledger signature from being valid for any other message the
same key might ever sign. Signatures are stored as 128 lowercase hex characters, and the
verifier accepts only that exact form, so no two different ledger bytes carry the same
valid signature (upper-case hex would otherwise decode to the same bytes).

Files: the private key is PKCS#8 PEM, unencrypted, mode 0600 (a key readable by others is
refused on load, as OpenSSH does); the public key is SubjectPublicKeyInfo PEM.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from common.errors import CryptoError

__all__ = [
    "LEDGER_KEY_FILE",
    "LEDGER_PUBLIC_KEY_FILE",
    "SIGNATURE_CONTEXT",
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

# File names of a client's ledger key pair, beside its ledger.jsonl (client and auditor
# both need them, so they live here rather than in client/).
LEDGER_KEY_FILE = "ledger_key.pem"  # the Ed25519 signing key (private, mode 0600)
LEDGER_PUBLIC_KEY_FILE = "ledger_key.pub"  # its public half, for auditors
SIGNATURE_CONTEXT = b"fedistill/privacy-ledger/record/v1\x00"
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")


# ---------------------------------------------------------------- key files
def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key from the operating system's CSPRNG."""
    return Ed25519PrivateKey.generate()


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _write_new_file(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a unique temporary file beside ``path`` with ``mode``, fsync-ed.

    The file is created with ``mode`` from the start (``os.open``), so a private key is
    never readable by others, not even for a moment.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have cleared bits of ``mode``
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def save_private_key(key: Ed25519PrivateKey, path: str | os.PathLike[str]) -> None:
    """Save ``key`` to a new file ``path`` (mode 0600); never overwrites an existing key.

    Overwriting would orphan every record the old key signed, so an existing file is an
    error (:class:`CryptoError`). The file appears atomically (hard link of a complete
    temporary file), so a concurrent reader never sees half a key.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_new_file(target, _private_pem(key), 0o600)
    try:
        os.link(tmp, target)
    except FileExistsError as exc:
        raise CryptoError(
            f"{target} already exists; refusing to overwrite a private key (the records it "
            "signed could no longer be verified). Move it away first if you mean to rotate."
        ) from exc
    finally:
        tmp.unlink()


def save_public_key(
    key: Ed25519PublicKey | Ed25519PrivateKey, path: str | os.PathLike[str]
) -> None:
    """Save the public half of ``key`` to ``path`` (mode 0644), atomically replacing it."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_new_file(target, _public_pem(public), 0o644)
    os.replace(tmp, target)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key, refusing a file that group or others can access."""
    source = Path(path)
    try:
        mode = stat.S_IMODE(source.stat().st_mode)
        data = source.read_bytes()
    except OSError as exc:
        raise CryptoError(f"Cannot read the private key {source}: {exc}") from exc
    if mode & 0o077:
        raise CryptoError(
            f"The private key {source} has mode {mode:04o}: group or others can access it. "
            f"Run `chmod 600 {source}` (and consider the key leaked if others could read it)."
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CryptoError(
            f"{source} is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CryptoError(
            f"{source} holds a {type(key).__name__}, not an Ed25519 private key; "
            "ledger signatures use Ed25519 only."
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key (SubjectPublicKeyInfo PEM)."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise CryptoError(
            f"Cannot read the public key {source}: {exc}. Pass the client's public key "
            "with --public-key, or place it beside the ledger as ledger_key.pub."
        ) from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"{source} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CryptoError(
            f"{source} holds a {type(key).__name__}, not an Ed25519 public key."
        )
    return key


def load_or_create_private_key(
    path: str | os.PathLike[str], public_path: str | os.PathLike[str] | None = None
) -> Ed25519PrivateKey:
    """The key at ``path``, created on first use; also keeps ``public_path`` in step.

    Two processes racing to create the key end up with the same one: only one hard link
    wins, the loser loads the winner's key. An existing public key file that does not
    match the private key is an error, never silently replaced: an auditor may already
    hold it, and a mismatch means one of the two files was swapped.
    """
    target = Path(path)
    if not target.exists():
        try:
            save_private_key(generate_private_key(), target)
        except CryptoError:
            if not target.exists():  # pragma: no cover - a failure other than the race
                raise
    key = load_private_key(target)
    if public_path is not None:
        pub = Path(public_path)
        if pub.exists():
            on_disk = load_public_key(pub)
            if _raw_public(on_disk) != _raw_public(key.public_key()):
                raise CryptoError(
                    f"{pub} does not match the private key {target} (fingerprints "
                    f"{key_fingerprint(on_disk)} vs {key_fingerprint(key.public_key())}). "
                    "One of them was replaced; restore the right pair before appending."
                )
        else:
            save_public_key(key, pub)
    return key


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key: how reports name a key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return "sha256:" + hashlib.sha256(_raw_public(public)).hexdigest()


# ---------------------------------------------------------------- signatures
def _message(record_hash: str) -> bytes:
    if not isinstance(record_hash, str) or not _HASH_RE.fullmatch(record_hash):
        raise CryptoError(
            f"A record hash must be 64 lowercase hex characters, found {record_hash!r}."
        )
    return SIGNATURE_CONTEXT + bytes.fromhex(record_hash)


def sign_record_hash(key: Ed25519PrivateKey, record_hash: str) -> str:
    """The Ed25519 signature of a ledger record's hash, as 128 lowercase hex characters."""
    return key.sign(_message(record_hash)).hex()


def verify_record_hash(key: Ed25519PublicKey, record_hash: str, signature: str) -> bool:
    """True when ``signature`` is ``key``'s signature of ``record_hash``, in canonical form.

    Any other form (upper-case hex, wrong length, not a string, a malformed hash) is
    False rather than an error: to an auditor it is simply an invalid signature.
    """
    if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
        return False
    try:
        key.verify(bytes.fromhex(signature), _message(record_hash))
    except (InvalidSignature, CryptoError):
        return False
    return True


def ledger_signer(key: Ed25519PrivateKey) -> Callable[[str], str]:
    """The ``signer`` hook of :class:`~common.privacy.ledger.PrivacyLedger` for ``key``."""

    def sign(record_hash: str) -> str:
        return sign_record_hash(key, record_hash)

    return sign


def ledger_verifier(key: Ed25519PublicKey) -> Callable[[str, str], bool]:
    """The ``verifier`` hook of :meth:`PrivacyLedger.verify` for the public ``key``."""

    def verify(record_hash: str, signature: str) -> bool:
        return verify_record_hash(key, record_hash, signature)

    return verify
