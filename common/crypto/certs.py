"""TLS certificates and SuperNode keys for a deployed federation (``fedistill certs``).

Flower's Deployment Engine needs three things (FLOWER.md, Deployment):

- a CA certificate that every party trusts (``--root-certificates`` on a SuperNode,
  ``root-certificates`` for the ``flwr`` CLI, ``--ssl-ca-certfile`` on the SuperLink);
- a SuperLink certificate signed by that CA whose *subjectAltName* names every host and
  IP the nodes dial: gRPC checks the SAN, not the common name, and without it both the
  CLI and the SuperLink's own ServerApp process fail the handshake;
- one EC key pair per node, in OpenSSH format on a NIST curve (we use P-384): the public
  half is registered with ``flwr supernode register``, the private half stays on the node.

Every private key is written with mode 0600 (created so, never widened afterwards), and
existing files are kept unless ``force`` is given, so that adding nodes later re-uses
the CA the others already trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "superlink.crt", "superlink.key"
NODES_DIR = "nodes"
LOOPBACK = ["127.0.0.1", "localhost"]
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest server-certificate lifetime browsers and most TLS stacks accept


@dataclass
class CertBundle:
    """Paths of what :func:`write_certs` produced (or found and kept)."""

    directory: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def node_keys(self) -> list[Path]:
        """Every node's private key file, sorted by name."""
        return node_private_keys(self.directory)


def node_private_keys(directory: Path) -> list[Path]:
    folder = Path(directory) / NODES_DIR
    return sorted(p for p in folder.glob("node-*") if p.suffix != ".pub") if folder.is_dir() else []


def node_public_keys(directory: Path) -> list[Path]:
    """Every ``nodes/*.pub`` under a certificate directory (what the coordinator registers)."""
    folder = Path(directory) / NODES_DIR
    return sorted(folder.glob("*.pub")) if folder.is_dir() else []


# ---------------------------------------------------------------- pure builders


def parse_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries: an IP address where the host parses as one, a DNS name otherwise."""
    names: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip()
        if not host:
            continue
        if "://" in host or "/" in host or " " in host:
            raise ConfigError(
                f"host {raw!r} is not a bare host name or IP address; give e.g. "
                "--hosts 127.0.0.1,localhost,coordinator.example.org (no scheme, no port)."
            )
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if ":" in host:  # not an IPv6 address, so a HOST:PORT
                raise ConfigError(f"host {raw!r} has a port; --hosts takes names and IPs only "
                                  "(the port is the coordinator's --port).") from None
            names.append(x509.DNSName(host))
    if not names:
        raise ConfigError("--hosts is empty: give every host name or IP the nodes will dial.")
    return names


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def make_ca(key: ec.EllipticCurvePrivateKey, common_name: str = "fedistill CA",
            days: int = CA_DAYS) -> x509.Certificate:
    """A self-signed CA certificate that may sign server certificates only (pathlen 0)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     key: ec.EllipticCurvePrivateKey, hosts: Sequence[str],
                     days: int = SERVER_DAYS) -> x509.Certificate:
    """The SuperLink's certificate: signed by the CA, with a SAN for every host and IP."""
    sans = parse_hosts(hosts)
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip())])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def openssh_pair(key: ec.EllipticCurvePrivateKey, comment: str) -> tuple[bytes, bytes]:
    """(private, public) in OpenSSH format: what ``flower-supernode`` and ``flwr`` load."""
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b" " + comment.encode() + b"\n"


def san_hosts(cert: x509.Certificate) -> list[str]:
    """The hosts and IPs a certificate's SAN names (for messages and tests)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + list(
        san.get_values_for_type(x509.DNSName))


# ---------------------------------------------------------------- files


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to a file created with mode 0600 (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; an old tmp keeps its mode
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def write_certs(out: str | Path, hosts: Sequence[str], nodes: int, *,
                force: bool = False) -> CertBundle:
    """Create (or complete) a certificate directory: CA, SuperLink cert, ``nodes`` node keys.

    Files that exist are kept unless ``force``: re-running with a larger ``nodes`` adds
    keys for the new nodes under the same CA. A new SuperLink certificate is issued when
    it is missing or its SAN does not cover ``hosts``.
    """
    if nodes < 0:
        raise ConfigError(f"--nodes must be 0 or more; got {nodes}.")
    parse_hosts(hosts)  # validate before writing anything
    # The coordinator's own processes (the flwr CLI, and the SuperExec that Flower starts
    # for the ServerApp) dial a SuperLink bound to 0.0.0.0 on 127.0.0.1: always in the SAN.
    hosts = list(dict.fromkeys([h.strip() for h in hosts if h.strip()] + LOOPBACK))
    bundle = CertBundle(Path(out))
    bundle.directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ensure_ca(bundle, force)
    _ensure_server(bundle, ca_key, ca_cert, hosts, force)
    for i in range(nodes):
        private = bundle.directory / NODES_DIR / f"node-{i}"
        public = private.with_name(private.name + ".pub")
        if private.exists() and public.exists() and not force:
            bundle.kept += [private, public]
            continue
        priv_bytes, pub_bytes = openssh_pair(new_ec_key(), f"fedistill-node-{i}")
        write_secret(private, priv_bytes)
        write_public(public, pub_bytes)
        bundle.created += [private, public]
    return bundle


def _ensure_ca(bundle: CertBundle, force: bool
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = bundle.directory / CA_CERT, bundle.directory / CA_KEY
    if cert_path.exists() and key_path.exists() and not force:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an EC private key; remove the directory "
                              "or pass --force to create a new CA.")
        bundle.kept += [cert_path, key_path]
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert_path.exists() != key_path.exists() and not force:
        raise ConfigError(f"{bundle.directory} holds only one of {CA_CERT}/{CA_KEY}; restore "
                          "the other or pass --force to create a new CA (and new node trust).")
    key = new_ec_key()
    cert = make_ca(key)
    write_secret(key_path, _pem_key(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    bundle.created += [cert_path, key_path]
    return key, cert


def _ensure_server(bundle: CertBundle, ca_key: ec.EllipticCurvePrivateKey,
                   ca_cert: x509.Certificate, hosts: Sequence[str], force: bool) -> None:
    cert_path, key_path = bundle.server_cert, bundle.server_key
    if cert_path.exists() and key_path.exists() and not force:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        wanted = {str(n.value) for n in parse_hosts(hosts)}
        if wanted <= set(san_hosts(cert)) and cert.issuer == ca_cert.subject:
            bundle.kept += [cert_path, key_path]
            return
    key = new_ec_key()
    cert = make_server_cert(ca_key, ca_cert, key, hosts)
    write_secret(key_path, _pem_key(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    bundle.created += [cert_path, key_path]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
