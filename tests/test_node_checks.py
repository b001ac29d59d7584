"""What a node and a coordinator check before they start Flower: each failure is fast,
names its cause, and exits non-zero. Real sockets and real TLS on loopback."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.crypto.certs import CA_CERT, SERVER_CERT, SERVER_KEY, write_certs
from common.errors import ConfigError, DataError
from simulations.app_pin import (
    APP_PINS_ENV,
    AppNotPinnedError,
    fab_digest,
    local_app_digest,
    pinned,
    pinned_env,
    resolve_pins,
)
from simulations.deploy import check_port_free
from simulations.node_checks import (
    Address,
    SuperLinkUnreachable,
    check_node_data,
    check_partition,
    parse_address,
    probe_superlink,
)
from simulations.node_run import NodeError, supervise_supernode
from simulations.proctree import listens_on


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_certs(out, ["127.0.0.1"], 1)
    return out


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("foreign")
    write_certs(out, ["127.0.0.1"], 0)
    return out / CA_CERT


def _serve(handle: Callable[[socket.socket], None]) -> Iterator[Address]:
    """A one-connection-at-a-time server on a free loopback port, until the test ends."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    handle(conn)
                except (OSError, ssl.SSLError):
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield Address("127.0.0.1", server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def tls_server(certs: Path) -> Iterator[Address]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / SERVER_CERT, certs / SERVER_KEY)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    yield from _serve(handle)


@pytest.fixture
def plain_server() -> Iterator[Address]:
    def handle(conn: socket.socket) -> None:  # what an HTTP server answers to a hello
        conn.settimeout(5)
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    yield from _serve(handle)


def _quiet(_message: str) -> None:
    pass


# ---------------------------------------------------------------- addresses and ports


def test_addresses_are_parsed_with_clear_errors() -> None:
    assert parse_address("127.0.0.1:9092", 9092) == Address("127.0.0.1", 9092)
    assert parse_address("[::1]:9092", 9092) == Address("::1", 9092)
    with pytest.raises(ConfigError, match="port 99999 is out of range"):
        parse_address("127.0.0.1:99999", 9092)
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_address("coordinator.example.org", 9092)
    with pytest.raises(ConfigError, match="without a scheme"):
        parse_address("https://host:9092", 9092)


def test_a_busy_port_is_refused_before_a_superlink_starts() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert listens_on(os.getpid(), port)
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(ConfigError, match=f"cannot listen on {host}:{port}"):
                check_port_free(host, port)
    check_port_free("127.0.0.1", port)  # free again once closed
    assert not listens_on(os.getpid(), port)


# ---------------------------------------------------------------- the SuperLink probe


def test_a_tls_node_reaches_a_tls_superlink(tls_server: Address, certs: Path) -> None:
    probe_superlink(tls_server, certs / CA_CERT, wait=1, say=_quiet)


def test_a_plaintext_node_is_told_the_superlink_speaks_tls(tls_server: Address) -> None:
    with pytest.raises(ConfigError, match="speaks TLS: start this node with --root-cert"):
        probe_superlink(tls_server, None, wait=1, say=_quiet)


def test_a_foreign_ca_is_named(tls_server: Address, foreign_ca: Path) -> None:
    with pytest.raises(ConfigError, match="presents a certificate that .* does not verify"):
        probe_superlink(tls_server, foreign_ca, wait=1, say=_quiet)


def test_a_tls_node_is_told_the_superlink_is_plaintext(plain_server: Address,
                                                       certs: Path) -> None:
    with pytest.raises(ConfigError, match="does not speak TLS"):
        probe_superlink(plain_server, certs / CA_CERT, wait=1, say=_quiet)
    probe_superlink(plain_server, None, wait=1, say=_quiet)  # both plaintext: fine


def test_nothing_listening_ends_after_the_wait_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        said: list[str] = []
        start = time.monotonic()
        with pytest.raises(SuperLinkUnreachable, match=f"nothing answers at 127.0.0.1:{port}"):
            probe_superlink(Address("127.0.0.1", port), None, wait=3, say=said.append)
        assert time.monotonic() - start < 10
        assert said and "waiting up to 3s" in said[0]


def test_an_unknown_host_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="does not resolve"):
        probe_superlink(Address("no-such-host.invalid", 9092), None, wait=60, say=_quiet)


# ---------------------------------------------------------------- the node's data


def test_node_data_is_checked_at_start(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "train.csv").write_text("text,label\nnice,fresh\nbad,rotten\nok,1\n")
    data = check_node_data(good, ("rotten", "fresh"))
    assert data.examples == 3 and data.label_counts == {"rotten": 1, "fresh": 2}
    assert check_node_data(good).label_counts == {"1": 1, "fresh": 1, "rotten": 1}

    for name, text, match in [
        ("no-label", "text,lab\nnice,1\n", "no column 'label'"),
        ("other-class", "text,label\nnice,meh\n", r"train.csv: Label 'meh' is not one"),
        ("index-too-big", "text,label\nnice,2\n", "Label '2' is not one"),
        ("empty-label", "text,label\nnice,\n", "label"),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.csv").write_text(text)
        with pytest.raises(DataError, match=match):
            check_node_data(folder, ("rotten", "fresh"))
    with pytest.raises(DataError, match="not found"):
        check_node_data(tmp_path / "missing")


def test_partition_ids_must_fit() -> None:
    check_partition(1, 2)
    check_partition(7, None)
    with pytest.raises(ConfigError, match="does not fit --num-partitions 2"):
        check_partition(5, 2)
    with pytest.raises(ConfigError, match="0 or more"):
        check_partition(-1, None)


# ---------------------------------------------------------------- the app pin


def test_an_unpinned_app_is_refused_before_it_is_installed() -> None:
    installed: list[bytes] = []
    good, bad = b"the reviewed app", b"another app"
    install = pinned(installed.append, frozenset({fab_digest(good)}))
    with pytest.raises(AppNotPinnedError, match="did not pin"):
        install(bad)
    assert installed == []
    install(good)
    assert installed == [good]


def test_pins_are_local_hashes_or_any() -> None:
    digest = "ab" * 32
    assert resolve_pins(["any"]) is None
    assert resolve_pins([digest.upper()]) == {digest}
    assert resolve_pins(["local"]) == {local_app_digest()}
    for bad in (["any", "local"], ["abc"]):
        with pytest.raises(ConfigError):
            resolve_pins(bad)


def test_flower_installs_through_the_function_the_pin_wraps() -> None:
    """The pin replaces ``install_from_fab`` in Flower's ClientApp runtime: it must be the
    call that installs the shipped FAB there, or a Flower upgrade would bypass it."""
    from flwr.supernode.runtime import run_clientapp

    source = Path(run_clientapp.__file__).read_text()
    assert "install_from_fab(fab.content" in source
    assert callable(run_clientapp.install_from_fab)


def test_the_supernode_finds_the_pinned_clientapp_first(tmp_path: Path) -> None:
    import shutil

    env = pinned_env({"PATH": os.environ["PATH"]}, frozenset({"ab" * 32}), tmp_path / "bin")
    shim = shutil.which("flwr-clientapp", path=env["PATH"])
    assert shim == str(tmp_path / "bin" / "flwr-clientapp")
    assert stat.S_IMODE(Path(shim).stat().st_mode) & 0o100
    assert env[APP_PINS_ENV] == "ab" * 32
    # With no pins the shim fails closed instead of running a shipped app unchecked.
    done = subprocess.run([shim, "--token", "x"], env={**os.environ, APP_PINS_ENV: ""},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "refusing to run a shipped app" in done.stderr


# ---------------------------------------------------------------- the SuperNode's lines


def _fake_supernode(tmp_path: Path, lines: list[str], then: str) -> list[str]:
    script = tmp_path / "supernode.py"
    script.write_text("import sys, time\n"
                      + "".join(f"print({line!r}, flush=True)\n" for line in lines) + then)
    return [sys.executable, str(script)]


def test_giving_up_ends_the_node_though_flower_stays_alive(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Flower logs "Giving up reconnection" and keeps running (its local API server):
    the node must stop it and say why, not hang."""
    cmd = _fake_supernode(tmp_path, [
        "WARNING :   Connection attempt failed, retrying in 0.69 seconds",
        "WARNING :   Connection attempt failed, retrying in 1.95 seconds",
        "WARNING :   Giving up reconnection after 10.01 seconds and 6 tries."],
        "time.sleep(600)\n")
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(NodeError, match="gave up reaching the SuperLink at 127.0.0.1:9"):
        supervise_supernode(cmd, dict(os.environ), superlink="127.0.0.1:9",
                            activation_wait=0, say=said.append)
    assert time.monotonic() - start < 30
    assert len(said) == 1 and "cannot reach the SuperLink at 127.0.0.1:9" in said[0]


def test_flower_still_says_the_lines_the_node_watches() -> None:
    import flwr

    from simulations.node_run import ACTIVATION_REFUSED, CONNECTION_FAILED, GAVE_UP

    source = "".join(p.read_text(errors="replace")
                     for p in Path(flwr.__file__).parent.rglob("*.py"))
    for line in (ACTIVATION_REFUSED, CONNECTION_FAILED, GAVE_UP):
        assert line in source


def test_a_health_answer_counts_only_from_the_superlink_that_was_started(
        tmp_path: Path) -> None:
    """Another server answering /health on the port (a first SuperLink) must not pass for
    the one just started, which is dying of "address already in use"."""
    import http.server

    from simulations.proctree import wait_healthy

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    dying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    log = tmp_path / "superlink.log"
    log.write_text("[Errno 98] address already in use\n")
    try:
        with pytest.raises(RuntimeError, match="exited with 0"):
            wait_healthy(dying, f"http://127.0.0.1:{other.server_port}/health", log,
                         error=RuntimeError, timeout=30)
    finally:
        other.shutdown()
        dying.wait()
