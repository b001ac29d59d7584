"""Fast checks of the deployment pieces (the loopback test runs them for real).

Certificates and keys are checked against what Flower itself loads; command lines
against Flower's own parser; the CLI's refusals against their messages.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from typer.testing import CliRunner

from client.private_data import load_private_dir
from common.crypto.certs import (
    node_private_keys,
    node_public_keys,
    parse_hosts,
    san_hosts,
    write_certs,
)
from common.data import train_tokenizer
from common.errors import ConfigError, DataError
from simulations.cli import app
from simulations.deploy import (
    TlsFiles,
    check_node_key,
    node_config_string,
    superlink_command,
    supernode_command,
)
from simulations.proctree import feed_records


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_certs(out, ["127.0.0.1", "localhost"], 2)
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- certificates


def test_secret_files_are_0600_and_public_ones_readable(certs: Path) -> None:
    for name in ("ca.key", "superlink.key", "nodes/node-0", "nodes/node-1"):
        assert _mode(certs / name) == 0o600, name
    for name in ("ca.crt", "superlink.crt", "nodes/node-0.pub"):
        assert _mode(certs / name) == 0o644, name


def test_superlink_certificate_has_the_sans_and_is_signed_by_the_ca(certs: Path) -> None:
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((certs / "superlink.crt").read_bytes())
    assert set(san_hosts(server)) == {"127.0.0.1", "localhost"}
    server.verify_directly_issued_by(ca)  # raises if not
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_node_keys_are_p384_openssh_and_flower_loads_them(certs: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    assert [p.name for p in node_private_keys(certs)] == ["node-0", "node-1"]
    assert [p.name for p in node_public_keys(certs)] == ["node-0.pub", "node-1.pub"]
    key = load_ssh_private_key((certs / "nodes" / "node-0").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert try_load_public_key(certs / "nodes" / "node-0.pub")  # `flwr supernode register`
    check_node_key(certs / "nodes" / "node-0")


def test_rerun_keeps_the_ca_and_adds_nodes(certs: Path) -> None:
    before = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()}
    bundle = write_certs(certs, ["127.0.0.1", "localhost"], 3)
    assert [p.name for p in bundle.created] == ["node-2", "node-2.pub"]
    for path, data in before.items():
        assert path.read_bytes() == data, path


def test_new_host_reissues_only_the_server_certificate(tmp_path: Path) -> None:
    write_certs(tmp_path, ["127.0.0.1"], 0)
    ca = (tmp_path / "ca.crt").read_bytes()
    bundle = write_certs(tmp_path, ["127.0.0.1", "coordinator.example.org"], 0)
    assert (tmp_path / "ca.crt").read_bytes() == ca
    server = x509.load_pem_x509_certificate((tmp_path / "superlink.crt").read_bytes())
    assert set(san_hosts(server)) == {"127.0.0.1", "localhost", "coordinator.example.org"}
    assert tmp_path / "superlink.crt" in bundle.created


@pytest.mark.parametrize("hosts", [["https://x.org"], ["10.0.0.1:9092"], [" "]])
def test_bad_hosts_are_refused(hosts: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_hosts(hosts)


def test_node_key_checks(certs: Path, tmp_path: Path) -> None:
    loose = tmp_path / "node"
    loose.write_bytes((certs / "nodes" / "node-0").read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_node_key(loose)
    with pytest.raises(ConfigError, match="private half"):
        check_node_key(certs / "nodes" / "node-0.pub")
    with pytest.raises(ConfigError, match="does not exist"):
        check_node_key(tmp_path / "missing")


# ---------------------------------------------------------------- command lines


def test_superlink_command_has_tls_auth_database_and_no_installs(certs: Path) -> None:
    cmd = superlink_command(host="0.0.0.0", port=9092, database=Path("/r/superlink.db"),
                            tls=TlsFiles.from_dir(certs))
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile",
                 "--enable-supernode-auth", "--disable-runtime-dependency-installation"):
        assert flag in cmd
    assert cmd[cmd.index("--database") + 1] == "/r/superlink.db"
    assert "--insecure" not in cmd
    plain = superlink_command(host="127.0.0.1", port=1, database=Path("d"), tls=None)
    assert "--insecure" in plain and "--enable-supernode-auth" not in plain


def test_node_config_round_trips_through_flowers_parser() -> None:
    from flwr.common.config import parse_config_args

    values = {"data-dir": "/data/my node", "state-dir": Path("/s/x"), "epsilon": 4.5,
              "partition-id": 2, "num-partitions": 3}
    parsed = parse_config_args([node_config_string(values)])
    assert parsed == {**values, "state-dir": "/s/x"}
    with pytest.raises(ConfigError):
        node_config_string({"data-dir": 'a"b'})


def test_supernode_command(certs: Path) -> None:
    cmd = supernode_command(superlink="h:9092", root_certificates=certs / "ca.crt",
                            key=certs / "nodes" / "node-0", node_config={"epsilon": 1.0},
                            local_port=9095)
    assert cmd[:3] == ["flower-supernode", "--superlink", "h:9092"]
    assert "--auth-supernode-private-key" in cmd and "--insecure" not in cmd
    assert cmd[cmd.index("--port") + 1] == "9095"


def test_feed_hands_on_each_round_once_even_after_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    seen: list[int] = []
    path.write_text("".join(json.dumps({"round": r}) + "\n" for r in (0, 1)))
    last = feed_records(path, -1, lambda r: seen.append(r["round"]))
    path.write_text(json.dumps({"round": 0}) + "\n")  # a resume rewrites the file
    last = feed_records(path, last, lambda r: seen.append(r["round"]))
    path.write_text("".join(json.dumps({"round": r}) + "\n" for r in (0, 1, 2)))
    feed_records(path, last, lambda r: seen.append(r["round"]))
    assert seen == [0, 1, 2]


# ---------------------------------------------------------------- the CLI


def test_coordinator_dry_run_prints_flowers_commands(certs: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["coordinator", "--certs", str(certs), "--preset", "quick",
                                      "--out", str(tmp_path / "run"), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "flower-superlink" in text and "--enable-supernode-auth" in text
    assert "flwr supernode register" in text and "--name node-1" in text
    assert "flwr run" in text and "--stream" in text
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_coordinator_takes_a_relative_certs_directory(certs: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's CLI config needs an absolute root-certificates path: a relative --certs
    (and --nodes-keys) is made absolute before anything is written."""
    from simulations.deploy_cli import _coordinator_security

    monkeypatch.chdir(certs.parent)
    tls, keys = _coordinator_security(Path(certs.name), [Path(certs.name) / "nodes" /
                                                         "node-0.pub"], insecure=False)
    assert tls == certs.resolve() and tls.is_absolute()
    assert keys == [(certs / "nodes" / "node-0.pub").resolve()]
    _, default_keys = _coordinator_security(Path(certs.name), None, insecure=False)
    assert default_keys and all(k.is_absolute() for k in default_keys)


def test_the_round_line_names_the_nodes_that_declined(capsys: pytest.CaptureFixture) -> None:
    """A redone round (the coordinator crashed mid-round) is answered without a private
    step by the nodes whose ledger already holds it: the console says so."""
    from simulations.deploy_cli import _print_record

    record = {"round": 3, "teacher_accuracy": 0.58, "epsilon_max": 7.99, "replies": 3,
              "sampled": 3, "rejected": [], "declined": ["client-0", "client-2"]}
    _print_record(record)
    out = " ".join(capsys.readouterr().out.split())
    assert "replies 3/3" in out and "declined the private step: client-0, client-2" in out
    _print_record({**record, "declined": []})
    assert "declined" not in capsys.readouterr().out


def test_plaintext_needs_insecure_and_warns(certs: Path, tmp_path: Path) -> None:
    base = ["node", "--superlink", "127.0.0.1:9092", "--data-dir", str(tmp_path),
            "--state-dir", str(tmp_path / "s"), "--epsilon", "8", "--dry-run"]
    with pytest.raises(ConfigError, match="--insecure"):
        CliRunner().invoke(app, base, catch_exceptions=False)
    result = CliRunner().invoke(app, [*base, "--insecure"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "--insecure" in result.output
    with pytest.raises(ConfigError, match="cannot be combined"):
        CliRunner().invoke(app, [*base, "--insecure", "--key", str(certs / "nodes" / "node-0")],
                           catch_exceptions=False)


# ---------------------------------------------------------------- a node's own data


def _task() -> SimpleNamespace:
    tok = train_tokenizer(["a good film", "a bad film", "good fun", "bad plot"] * 5,
                          vocab_size=60, min_frequency=1)
    return SimpleNamespace(tokenizer_json=tok.to_str(), num_classes=2, positions=0)


def test_private_data_dir_uses_the_federations_labels(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\na good film,fresh\nbad plot,0\n")
    x, y = load_private_dir(tmp_path, _task(), dataset="rotten-tomatoes", seed=0, max_len=8)
    assert x.shape == (2, 8) and y.tolist() == [1, 0]  # rotten-tomatoes: ("rotten", "fresh")
    (tmp_path / "train.csv").write_text("text,label\na good film,great\n")
    with pytest.raises(DataError, match="great"):
        load_private_dir(tmp_path, _task(), dataset="rotten-tomatoes", seed=0, max_len=8)


def test_the_coordinator_says_how_many_lost_nodes_a_round_survives() -> None:
    from common.config import FedConfig
    from simulations.deploy_cli import _dropout_line

    two = FedConfig.from_mapping({"num-clients": 2, "secure-aggregation": True})
    assert "one lost node fails the run" in _dropout_line(two)
    three = FedConfig.from_mapping({"num-clients": 3, "secure-aggregation": True})
    line = _dropout_line(three)
    assert "without up to 1 of its 3 nodes" in line and "secagg-threshold" in line


def test_the_summary_counts_the_clients_that_took_part() -> None:
    from common.config import FedConfig
    from coordinator.report import build_summary
    from simulations.report import summary_table

    cfg = FedConfig.from_mapping({"num-clients": 2, "min-replies": 1})
    history = [{"round": 0, "teacher_accuracy": 0.7},
               {"round": 1, "teacher_accuracy": 0.72, "epsilon": {"client-0": 3.0}},
               {"round": 2, "teacher_accuracy": 0.73, "epsilon": {"client-0": 5.0}}]
    summary = build_summary(cfg, history)
    assert (summary["clients"], summary["clients_took_part"]) == (2, 1)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    assert "2 · 1 took part (of 2 expected)" in console.export_text()


def test_node_data_writes_class_names_and_keeps_at_most_max_examples(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["node-data", "--preset", "quick", "--set",
                                      "num-clients=2", "--max-examples", "50", "--out",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    import csv

    for k in (0, 1):
        with (tmp_path / f"node-{k}" / "train.csv").open(newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["text", "label"] and len(rows) == 51
        assert {label for _, label in rows[1:]} <= {"rotten", "fresh"}
