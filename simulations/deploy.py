"""Flower's Deployment Engine for real client nodes: the commands behind ``fedistill``
``coordinator`` and ``node``.

Both commands are thin wrappers: they build Flower's own command lines (shown with
``--dry-run``), check what Flower would only report deep in a log (a missing key, a
certificate without the right SAN, a busy port; the node's own checks are in
simulations/node_checks.py), and stop every process they start by PID. What runs is
FLOWER.md's "Deployment" recipe:

- coordinator: ``flower-superlink`` with TLS, SuperNode authentication, a database file
  (node registrations survive a restart) and no per-run dependency installation; then
  ``flwr supernode register`` for every node public key; then ``flwr run`` of this
  project's Flower App with the run config, following ``metrics.jsonl`` as rounds land;
- node: ``flower-supernode`` with its private key, the CA certificate and its node
  config (``data-dir``, ``state-dir``, ``epsilon``, ``partition-id``, ``num-partitions``),
  watched by simulations/node_run.py and running only the app it pins
  (simulations/app_pin.py).

Restarts: the ServerApp checkpoints after every round and resumes from ``checkpoint.pt``
in the run directory, and the SuperLink database keeps the registered nodes, so running
the same ``fedistill coordinator`` command again after a crash continues the run at the
next round. A node keeps its student and ledger in ``state-dir``.
"""

from __future__ import annotations

import json
import shlex
import socket
import ssl
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from common.crypto.certs import CA_CERT, SERVER_CERT, SERVER_KEY
from common.errors import ConfigError, FedistillError
from simulations.proctree import follow_run, stop_process_group, wait_healthy
from simulations.runner import app_dir, flower_env, last_error

FEDERATION = "fedistill"
DEFAULT_PORT = 9092
INSECURE_WARNING = (
    "--insecure: plaintext and unauthenticated. Soft labels, ε and run config travel "
    "unencrypted and any process that can reach the port can join as a node. Use it only "
    "on a trusted loopback for debugging."
)


class DeploymentError(FedistillError):
    """A Flower process of the deployment failed; the message points at its log."""


@dataclass(frozen=True)
class TlsFiles:
    """The coordinator's TLS material, from a ``fedistill certs`` directory."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path) -> TlsFiles:
        files = cls(directory / CA_CERT, directory / SERVER_CERT, directory / SERVER_KEY)
        missing = [str(p) for p in (files.ca_cert, files.cert, files.key) if not p.is_file()]
        if missing:
            raise ConfigError(f"--certs {directory} lacks {missing}; create them with "
                              f"`fedistill certs --out {directory} --hosts HOST,...`.")
        return files


# ---------------------------------------------------------------- command builders (pure)


def connect_host(host: str) -> str:
    """The address the local ``flwr`` CLI dials when the SuperLink binds ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def superlink_command(*, host: str, port: int, database: Path,
                      tls: TlsFiles | None) -> list[str]:
    cmd = ["flower-superlink", "--host", host, "--port", str(port),
           "--database", str(database), "--disable-runtime-dependency-installation"]
    if tls is None:
        return cmd + ["--insecure"]
    return cmd + ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert),
                  "--ssl-keyfile", str(tls.key), "--enable-supernode-auth"]


def flwr_cli_config(address: str, ca_cert: Path | None) -> dict[str, Any]:
    """``$FLWR_HOME/config.toml`` for the ``flwr`` CLI: one SuperLink named ``fedistill``."""
    conn: dict[str, Any] = {"address": address}
    if ca_cert is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(ca_cert)
    return {"superlink": {"default": FEDERATION, FEDERATION: conn}}


def register_command(public_key: Path, name: str) -> list[str]:
    return ["flwr", "supernode", "register", str(public_key), FEDERATION, "--name", name,
            "--format", "json"]


def run_command(run_config: Path) -> list[str]:
    return ["flwr", "run", str(app_dir()), FEDERATION, "--stream", "--run-config",
            str(run_config)]


def node_config_string(values: dict[str, Any]) -> str:
    """Flower's ``--node-config`` string: ``key=value`` pairs, paths as quoted TOML strings.

    Flower splits the string with a regex that allows a double-quoted value (spaces
    inside are fine) and parses each value as TOML, so a path is written as a JSON
    string (a valid TOML basic string) and must not itself contain a double quote.
    """
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):  # TOML's true / false (a node's policy switches)
            parts.append(f"{key}={str(value).lower()}")
            continue
        if not isinstance(value, (int, float, str, Path)):
            raise ConfigError(f"node config {key}={value!r}: only numbers, switches and "
                              "paths are passed.")
        if isinstance(value, (str, Path)):
            text = str(value)
            if '"' in text or "\n" in text:
                raise ConfigError(f"node config {key}={text!r}: Flower's --node-config cannot "
                                  "carry a double quote or newline; choose a path without.")
            parts.append(f"{key}={json.dumps(text)}")
        else:
            parts.append(f"{key}={value!r}")
    return " ".join(parts)


def supernode_command(*, superlink: str, root_certificates: Path | None, key: Path | None,
                      node_config: dict[str, Any], local_port: int,
                      max_wait_time: float | None = None) -> list[str]:
    cmd = ["flower-supernode", "--superlink", superlink]
    if root_certificates is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(root_certificates)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    cmd += ["--port", str(local_port), "--node-config", node_config_string(node_config)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def show(cmd: Sequence[str]) -> str:
    return shlex.join(str(c) for c in cmd)


# ---------------------------------------------------------------- checks


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that something listens on before a SuperLink is started there.

    A second SuperLink on a busy port dies of "address already in use" in its log only,
    while the first one answers its health check and would take this coordinator's run.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Like the SuperLink's server: a port left in TIME_WAIT by an earlier run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (another "
                              "SuperLink or coordinator?). Stop it, or choose another "
                              "--port.") from None


def check_node_key(path: Path) -> Path:
    """The private key exists, is an EC key in OpenSSH format, and is not world-readable."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    if not path.is_file():
        raise ConfigError(f"--key {path} does not exist; copy this node's private key from "
                          "`fedistill certs` (nodes/node-K) to this machine.")
    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--key {path} is not an unencrypted OpenSSH private key ({exc}); "
                          "pass the private half (nodes/node-K), not node-K.pub.") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--key {path} is a {type(key).__name__}; Flower's node "
                          "authentication takes an EC key (fedistill certs makes P-384).")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"--key {path} has mode {oct(path.stat().st_mode & 0o777)}: a node "
                          f"key must be private. Run `chmod 600 {path}`.")
    return path


def resolve_root_certificates(path: Path) -> Path:
    """A CA file, or a ``fedistill certs`` directory holding ``ca.crt``."""
    ca = path / CA_CERT if path.is_dir() else path
    if not ca.is_file():
        raise ConfigError(f"--root-certificates {path}: no CA certificate there; copy ca.crt "
                          "from the coordinator's `fedistill certs` directory.")
    return ca


# ---------------------------------------------------------------- coordinator


@dataclass
class Coordinator:
    """One coordinator: its SuperLink, the registrations and the run, all under ``out``."""

    out: Path
    host: str
    port: int
    tls: TlsFiles | None
    node_keys: list[Path]

    @property
    def flwr_home(self) -> Path:
        return self.out / ".flwr"

    @property
    def database(self) -> Path:
        return self.out / "superlink.db"

    @property
    def run_config(self) -> Path:
        return self.out / "run_config.toml"

    @property
    def address(self) -> str:
        return f"{connect_host(self.host)}:{self.port}"

    def commands(self) -> dict[str, Any]:
        """Every underlying command, in the order they run (for ``--dry-run``)."""
        return {
            "superlink": superlink_command(host=self.host, port=self.port,
                                           database=self.database, tls=self.tls),
            "config": flwr_cli_config(self.address, self.tls.ca_cert if self.tls else None),
            "register": [register_command(k, k.name.removesuffix(".pub"))
                         for k in (self.node_keys if self.tls else [])],
            "run": run_command(self.run_config),
        }

    def run(self, *, verbose: bool = False,
            on_record: Callable[[dict[str, Any]], None] | None = None,
            on_event: Callable[[str], None] | None = None) -> None:
        """SuperLink up, nodes registered, run followed to its end; everything stopped."""
        say = on_event or (lambda _msg: None)
        cmds = self.commands()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        env = flower_env(self.flwr_home)
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps(cmds["config"]))
        log_path = self.out / "superlink.log"
        check_port_free(self.host, self.port)
        with log_path.open("ab") as log_file:
            superlink = subprocess.Popen(cmds["superlink"], env=env, stdout=log_file,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self._wait_healthy(superlink, log_path)
            say(f"SuperLink listening on {self.host}:{self.port} "
                f"({'TLS + node authentication' if self.tls else 'INSECURE'}), pid "
                f"{superlink.pid}, log {log_path}")
            for cmd in cmds["register"]:
                say(_register(cmd, env))
            _follow_run(cmds["run"], env, self.out, verbose, on_record)
        finally:
            stop_process_group(superlink)

    def _wait_healthy(self, proc: subprocess.Popen, log_path: Path,
                      timeout: float = 60.0) -> None:
        scheme = "https" if self.tls else "http"
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else False)

        def refuse_bad_certificate(exc: httpx.HTTPError) -> None:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # waiting will not fix it
                raise DeploymentError(
                    f"the SuperLink's certificate does not verify for {self.address} "
                    f"({exc}); recreate it with `fedistill certs --hosts` naming "
                    f"{connect_host(self.host)}.") from exc

        wait_healthy(proc, f"{scheme}://{self.address}/health", log_path,
                     error=DeploymentError, timeout=timeout, verify=verify,
                     on_http_error=refuse_bad_certificate)


def _register(cmd: list[str], env: dict[str, str]) -> str:
    """Register one node key; a key registered before (a restart) is fine.

    With ``--format json`` the CLI exits 0 even when it fails and says so in the JSON
    (``"success": false``), so the outcome is read from there.
    """
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    name = cmd[cmd.index("--name") + 1]
    try:
        reply = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        reply = {"success": False, "error-message": (proc.stdout + proc.stderr).strip()}
    if proc.returncode == 0 and reply.get("success"):
        return f"registered {name} (node id {reply.get('node-id')})"
    error = str(reply.get("error-message", "")).strip()
    if "already in use" in error:
        return f"{name} was registered before (same key): kept"
    raise DeploymentError(f"`{show(cmd)}` failed ({proc.returncode}): {error[-500:]}")


def _follow_run(cmd: list[str], env: dict[str, str], out: Path, verbose: bool,
                on_record: Callable[[dict[str, Any]], None] | None) -> None:
    """Run ``flwr run --stream`` to its end; the run must leave its ``summary.json``."""
    log_path = out / "flower.log"
    code = follow_run(cmd, env, out, verbose=verbose, on_record=on_record,
                      error=DeploymentError)
    if code != 0 or not (out / "summary.json").exists():
        # `flwr run` exits 0 even when the ServerApp failed: the app's error says why.
        cause = _flower_cause(log_path)
        what = (f"the run failed: {cause.rstrip('.')}" if cause else
                f"the run ended (flwr run exit {code}) without {out / 'summary.json'}")
        raise DeploymentError(f"{what}. Flower's log: {log_path}")


def _flower_cause(log_path: Path) -> str | None:
    """The app's last exception, else the CLI's last ``[code: N] ...`` error line."""
    cause = last_error(log_path)
    if cause or not log_path.exists():
        return cause
    coded = [ln.strip(" │|\t") for ln in log_path.read_text(errors="replace").splitlines()
             if "[code: " in ln]
    return coded[-1].strip() if coded else None
