"""What ``fedistill node`` checks before it starts Flower's SuperNode.

Flower reports a wrong address, a TLS mismatch or bad data only as endless
"Connection attempt failed" lines or as a failed round minutes later. A node operator
should learn each of them at start, in one line that names the cause and the fix:

- the SuperLink address: the host resolves, something answers at HOST:PORT (waiting a
  bounded time for a coordinator that is still starting), and it speaks TLS exactly when
  this node uses TLS, with a certificate the node's CA verifies for that host;
- the node's data: its file parses, has the text and label columns, every row a label,
  and (with the federation's class names) every label a known class;
- its partition id lies within the number of partitions.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.data.loaders import node_data_file, read_labeled_split
from common.errors import ConfigError, FedistillError

PROBE_TIMEOUT = 5.0  # one TCP connect or TLS handshake
PROBE_RETRY_DELAY = 2.0


class SuperLinkUnreachable(FedistillError):
    """Nothing answered at the SuperLink's address within the node's wait."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(address: str, default_port: int) -> Address:
    """HOST:PORT, with the port in 1..65535; a clear error for anything else."""
    if "://" in address:
        raise ConfigError(f"--superlink {address!r}: give HOST:PORT without a scheme.")
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")  # [::1]:9092
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--superlink {address!r} is not HOST:PORT (for example "
                          f"coordinator.example.org:{default_port}).")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"--superlink {address!r}: port {port} is out of range (1-65535).")
    return Address(host, int(port))


def check_port_number(port: int, option: str = "--port") -> int:
    if not 0 < port < 65536:
        raise ConfigError(f"{option} {port} is out of range (1-65535).")
    return port


# ---------------------------------------------------------------- the SuperLink's address


def probe_superlink(address: Address, ca: Path | None, *, wait: float,
                    say: Callable[[str], None]) -> None:
    """Check that the SuperLink at ``address`` can be reached the way this node will dial.

    ``ca`` None means a plaintext node (``--insecure``). Raises ConfigError for what
    waiting cannot fix (an unknown host, a TLS mismatch, a certificate the CA does not
    verify) and SuperLinkUnreachable when nothing answered within ``wait`` seconds.
    """
    try:
        socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--superlink {address}: the host {address.host!r} does not resolve "
                          f"({exc.strerror}); check the coordinator's name or IP.") from None
    with _connect(address, wait, say) as sock:
        speaks_tls = _speaks_tls(sock, address, ca)
    if ca is not None and speaks_tls is False:
        raise ConfigError(f"the SuperLink at {address} does not speak TLS (was the coordinator "
                          "started with --insecure?). Start it with --certs, or, on a trusted "
                          "loopback only, start this node with --insecure.")
    if ca is None and speaks_tls:
        raise ConfigError(f"the SuperLink at {address} speaks TLS: start this node with "
                          "--root-certificates CA.crt --key NODE_KEY instead of --insecure.")


def _connect(address: Address, wait: float, say: Callable[[str], None]) -> socket.socket:
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return socket.create_connection((address.host, address.port), timeout=PROBE_TIMEOUT)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if time.monotonic() + PROBE_RETRY_DELAY > deadline:
                raise SuperLinkUnreachable(
                    f"nothing answers at {address} ({reason}) after {wait:.0f}s: is the "
                    "coordinator running, and are this its host and port? (--connect-wait "
                    "sets how long a node waits for it)") from None
            if not told:
                say(f"nothing answers at {address} yet ({reason}); waiting up to {wait:.0f}s "
                    "for the coordinator")
                told = True
            time.sleep(PROBE_RETRY_DELAY)


def _speaks_tls(sock: socket.socket, address: Address, ca: Path | None) -> bool | None:
    """True or False, or None when the handshake neither finished nor failed in time."""
    if ca is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # only asks "is this TLS?"; nothing is sent
    else:
        context = ssl.create_default_context(cafile=str(ca))
    sock.settimeout(PROBE_TIMEOUT)
    try:
        with context.wrap_socket(sock, server_hostname=address.host):
            return True
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"the SuperLink at {address} presents a certificate that {ca} does not verify "
            f"({exc.verify_message}): pass the federation's ca.crt, and make sure the "
            f"SuperLink certificate names {address.host} (`fedistill certs --hosts`)."
        ) from None
    except TimeoutError:
        return None
    except (ssl.SSLError, OSError):
        return False


# ---------------------------------------------------------------- the node's data


@dataclass(frozen=True)
class NodeData:
    """What a node's data directory holds, as checked at start."""

    examples: int
    label_counts: dict[str, int]


def check_node_data(data_dir: Path, class_names: Sequence[str] | None = None) -> NodeData:
    """Parse the node's ``train.*`` as its ClientApp will; any problem is a DataError.

    With ``class_names`` (``--dataset``) every label must be one of them or an index into
    them; without, labels are counted as they are, for the operator to see.
    """
    split, names = read_labeled_split(node_data_file(data_dir), class_names=class_names)
    assert split.labels is not None  # a label column is required
    counts = Counter(int(i) for i in split.labels)
    labels = {names[i]: n for i, n in sorted(counts.items())}
    return NodeData(len(split), labels)


def check_partition(partition_id: int, num_partitions: int | None) -> None:
    if partition_id < 0:
        raise ConfigError(f"--partition-id {partition_id} must be 0 or more.")
    if num_partitions is not None and not 0 <= partition_id < num_partitions:
        raise ConfigError(f"--partition-id {partition_id} does not fit --num-partitions "
                          f"{num_partitions}: ids run from 0 to {num_partitions - 1}.")
