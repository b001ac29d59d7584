"""``fedistill certs``, ``coordinator``, ``node`` and ``node-data``: real client nodes.

See docs/DEPLOY.md for a walk-through on two machines, and simulations/deploy.py for
what each command runs. ``--dry-run`` prints Flower's own commands instead of running
them; ``--insecure`` (plaintext, no node authentication) must be asked for explicitly.
"""

from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from common.errors import ConfigError
from common.privacy.policy import NodePolicy
from simulations.cli_common import console, describe, fresh_out_dir, resolve_config

deploy_app = typer.Typer()

Preset = Annotated[str | None, typer.Option(help="A preset in simulations/presets.")]
ConfigFile = Annotated[Path | None, typer.Option(help="A TOML file of run-config keys.")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="key=value run-config override.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print Flower's commands; run nothing.")]
Insecure = Annotated[bool, typer.Option(
    "--insecure", help="Plaintext, no node authentication (debugging on loopback only).")]


@deploy_app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Directory for the CA, SuperLink cert, node keys.")],
    hosts: Annotated[str, typer.Option(
        help="Comma-separated host names and IPs the nodes dial (the SuperLink cert's SAN; "
             "127.0.0.1 and localhost are always added).")
    ] = "127.0.0.1,localhost",
    nodes: Annotated[int, typer.Option(help="Node key pairs to create (node-0 ...).")] = 2,
    force: Annotated[bool, typer.Option(help="Replace existing files (a new CA).")] = False,
) -> None:
    """Create a CA, a SuperLink certificate and per-node EC P-384 keys (OpenSSH format)."""
    from common.crypto.certs import write_certs

    bundle = write_certs(out, hosts.split(","), nodes, force=force)
    table = Table(title=f"fedistill certs · {bundle.directory}")
    for column in ("file", "status", "mode", "copy to"):
        table.add_column(column)
    for path in sorted(set(bundle.created) | set(bundle.kept)):
        table.add_row(str(path.relative_to(bundle.directory)),
                      "created" if path in bundle.created else "kept",
                      oct(path.stat().st_mode & 0o777), _copy_to(path.name))
    console.print(table)
    console.print("Keep ca.key offline. Register node keys with `fedistill coordinator "
                  "--certs DIR` (all nodes/*.pub by default).")


def _copy_to(name: str) -> str:
    if name == "ca.crt":
        return "coordinator and every node"
    if name == "ca.key":
        return "nowhere (keep offline)"
    if name.startswith("superlink"):
        return "coordinator"
    if name.endswith(".pub"):
        return "coordinator (registered)"
    return f"node {name} only"


@deploy_app.command()
def coordinator(
    certs: Annotated[Path | None, typer.Option(
        help="A `fedistill certs` directory (ca.crt, superlink.crt/.key, nodes/*.pub).")] = None,
    host: Annotated[str, typer.Option(help="Address the SuperLink binds.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The SuperLink's one port (nodes and CLI).")] = 9092,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/PRESET).")] = None,
    nodes_keys: Annotated[list[Path] | None, typer.Option(
        "--nodes-keys", help="Node public keys to register (default: CERTS/nodes/*.pub).")
    ] = None,
    fresh: Annotated[bool, typer.Option(
        help="Start a new run even if OUT holds a checkpoint (default: resume it).")] = False,
    dry_run: DryRun = False,
    insecure: Insecure = False,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log.")] = False,
) -> None:
    """Start the SuperLink (TLS + node auth), register node keys, run the app to its end."""
    from simulations.deploy import Coordinator, TlsFiles
    from simulations.node_checks import check_port_number

    if preset and config:
        raise ConfigError("Give --preset or --config, not both.")
    cfg = resolve_config(preset, config, set_ or [], out)
    run_dir = Path(cfg.out_dir).resolve()
    cfg = cfg.replace(out_dir=str(run_dir))
    check_port_number(port)
    tls, keys = _coordinator_security(certs, nodes_keys, insecure)
    coord = Coordinator(run_dir, host, port, None if tls is None else TlsFiles.from_dir(tls),
                        keys)
    if dry_run:
        _print_coordinator_commands(coord)
        return
    resumed = _prepare_run_dir(run_dir, cfg.to_run_config(), fresh)
    console.print(f"[bold]fedistill coordinator[/bold]: {cfg.dataset}, "
                  f"{_count(cfg.num_clients, 'node')} expected, {_count(cfg.rounds, 'round')}, "
                  f"run directory {run_dir}"
                  + (f" (resuming its checkpoint; rounds recorded: {resumed})"
                     if resumed is not None else ""))
    console.print(_dropout_line(cfg), highlight=False)
    coord.run(verbose=verbose, on_record=_print_record, on_event=console.print)
    _print_summary(run_dir, cfg.epsilon)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _dropout_line(cfg: Any) -> str:
    """How many lost nodes a round survives, said before the run starts."""
    sampled = cfg.sampled_per_round
    spare = sampled - cfg.min_replies
    if spare <= 0:
        return (f"dropouts: every round needs all {_count(sampled, 'sampled node')} "
                f"(min-replies={cfg.min_replies}): one lost node fails the run. With more "
                "nodes, a lower --set min-replies lets rounds go on without it.")
    secure = (" and SecAgg+ can rebuild the lost nodes' masks (secagg-threshold="
              f"{cfg.secagg_threshold})") if cfg.secure_aggregation else ""
    return (f"dropouts: a round goes on without up to {spare} of its {sampled} nodes, while "
            f"min-replies={cfg.min_replies} valid replies arrive{secure}.")


def _coordinator_security(certs: Path | None, keys: list[Path] | None,
                          insecure: bool) -> tuple[Path | None, list[Path]]:
    from common.crypto.certs import node_public_keys

    if insecure:
        console.print(f"[yellow]warning:[/yellow] {_insecure_warning()}")
        if keys:
            console.print("[yellow]warning:[/yellow] --nodes-keys ignored: node "
                          "authentication needs TLS.")
        return None, []
    if certs is None:
        raise ConfigError("--certs DIR is required (make one with `fedistill certs --out DIR "
                          "--hosts HOST,...`); plaintext needs an explicit --insecure.")
    # Absolute: Flower's CLI config (root-certificates) refuses a relative path.
    certs = certs.expanduser().resolve()
    keys = [k.expanduser().resolve() for k in keys] if keys else node_public_keys(certs)
    if not keys:
        raise ConfigError(f"no node public keys: {certs}/nodes/*.pub is empty and no "
                          "--nodes-keys was given. Create keys with `fedistill certs --nodes N`.")
    missing = [str(k) for k in keys if not k.is_file()]
    if missing:
        raise ConfigError(f"--nodes-keys {missing} do not exist; pass the nodes' .pub files.")
    return certs, keys


def _insecure_warning() -> str:
    from simulations.deploy import INSECURE_WARNING

    return INSECURE_WARNING


def _print_coordinator_commands(coord: Any) -> None:
    import tomli_w

    from simulations.deploy import show

    cmds = coord.commands()
    console.print("# 1. the SuperLink", style="bold", highlight=False)
    console.print(show(cmds["superlink"]), highlight=False, soft_wrap=True)
    console.print(f"# 2. the flwr CLI's $FLWR_HOME/config.toml (FLWR_HOME={coord.flwr_home})",
                  style="bold", highlight=False)
    console.print(tomli_w.dumps(cmds["config"]).strip(), highlight=False, markup=False)
    if cmds["register"]:
        console.print("# 3. register the node keys", style="bold", highlight=False)
        for cmd in cmds["register"]:
            console.print(show(cmd), highlight=False, soft_wrap=True)
    console.print("# 4. run the app (streams its log)", style="bold", highlight=False)
    console.print(show(cmds["run"]), highlight=False, soft_wrap=True)


def _prepare_run_dir(run_dir: Path, run_config: dict[str, Any], fresh: bool) -> int | None:
    """Resume a crashed run (same config) or start a fresh one; the last round done or None."""
    import tomli_w

    config_path = run_dir / "run_config.toml"
    if not fresh and (run_dir / "checkpoint.pt").exists() and config_path.exists():
        if (run_dir / "summary.json").exists():
            raise ConfigError(f"the run in {run_dir} already finished; pass --fresh to start a "
                              "new one there, or choose another --out.")
        before = tomllib.loads(config_path.read_text())
        changed = sorted(k for k in set(before) | set(run_config)
                         if before.get(k) != run_config.get(k))
        if changed:
            raise ConfigError(f"{run_dir} holds a run checkpoint made with other values of "
                              f"{changed}; repeat the same --preset/--set to resume it, or "
                              "pass --fresh to start over.")
        from simulations.report import read_metrics

        records = read_metrics(run_dir)
        return max((r["round"] for r in records), default=0)
    fresh_out_dir(run_dir)
    config_path.write_text(tomli_w.dumps(run_config))
    return None


def _print_record(record: dict[str, Any]) -> None:
    console.print(describe(record), highlight=False)


def _print_summary(run_dir: Path, budget: float) -> None:
    from simulations.report import finalize_summary, plot_run, read_metrics, summary_table

    summary = finalize_summary(run_dir, json.loads((run_dir / "summary.json").read_text()))
    plot_run(run_dir, read_metrics(run_dir), budget)
    console.print(summary_table(summary))
    console.print(f"Results in {run_dir}")


@deploy_app.command()
def node(
    superlink: Annotated[str, typer.Option(help="The coordinator's HOST:PORT.")],
    data_dir: Annotated[Path, typer.Option(help="This node's private data (train.csv ...).")],
    state_dir: Annotated[Path, typer.Option(
        help="Where the student, noise plans and privacy ledger persist across restarts.")],
    epsilon: Annotated[float, typer.Option(help="This node's total ε budget (all runs).")],
    delta: Annotated[float, typer.Option(
        help="This node's δ; fixed by its ledger's first record, and below 1/(10 n).")] = 1e-5,
    allow_non_dp: Annotated[bool, typer.Option(
        help="Let a run train this node's data without DP (its ε is then infinite).")] = False,
    allow_unmasked: Annotated[bool, typer.Option(
        help="Answer rounds without secure aggregation (the coordinator then sees this "
             "node's soft labels one by one).")] = False,
    root_certificates: Annotated[Path | None, typer.Option(
        "--root-certificates", "--certs",
        help="The federation's CA certificate (ca.crt, or a certs directory holding it).")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="This node's private key (nodes/node-K).")
                   ] = None,
    partition_id: Annotated[int, typer.Option(
        help="This node's index: its client id (client-K) and student family.")] = 0,
    num_partitions: Annotated[int | None, typer.Option(
        help="Number of nodes (default: the run's num-clients).")] = None,
    local_port: Annotated[int, typer.Option(
        help="The SuperNode's own local port (Flower's --port); one per node on a host.")
    ] = 9094,
    max_wait_time: Annotated[float | None, typer.Option(
        help="Once connected, give up reconnecting to the SuperLink after this many seconds "
             "and exit non-zero (default: keep trying, and join the coordinator's next run).")
    ] = None,
    connect_wait: Annotated[float, typer.Option(
        help="At start, wait this long for something to answer at --superlink.")] = 60.0,
    activation_wait: Annotated[float, typer.Option(
        help="Retry this long while the SuperLink refuses to activate the node (a crashed "
             "node stays online there for up to 60 s; 0 = fail at once).")] = 90.0,
    dataset: Annotated[str | None, typer.Option(
        help="The federation's dataset (e.g. rotten-tomatoes): this node's labels are "
             "checked against its classes at start.")] = None,
    app_pin: Annotated[list[str] | None, typer.Option(
        "--app-pin", help="The apps this node runs: `local` (the app this checkout builds; "
                          "default), a FAB SHA-256, or `any` (trust the coordinator's code).")
    ] = None,
    dry_run: DryRun = False,
    insecure: Insecure = False,
) -> None:
    """Start a SuperNode with its key, the CA, and its data, state and ε (node config)."""
    from simulations.app_pin import check_pin_values
    from simulations.deploy import DEFAULT_PORT, show, supernode_command
    from simulations.node_checks import (
        check_partition,
        check_port_number,
        parse_address,
        probe_superlink,
    )
    from simulations.node_run import supervise_supernode

    address = parse_address(superlink, DEFAULT_PORT)
    check_port_number(local_port, "--local-port")
    check_partition(partition_id, num_partitions)
    check_pin_values(app_pin or ["local"])
    if epsilon <= 0:
        raise ConfigError(f"--epsilon must be positive; got {epsilon}.")
    ca, key = _node_security(root_certificates, key, insecure)
    policy = NodePolicy(epsilon=float(epsilon), delta=float(delta), allow_non_dp=allow_non_dp,
                        require_secure_aggregation=not allow_unmasked)
    values: dict[str, Any] = {"data-dir": data_dir.expanduser().resolve(),
                              "state-dir": state_dir.expanduser().resolve(),
                              "partition-id": partition_id,
                              **{k.replace("_", "-"): v for k, v in asdict(policy).items()}}
    if num_partitions is not None:
        values["num-partitions"] = num_partitions
    cmd = supernode_command(superlink=superlink, root_certificates=ca, key=key,
                            node_config=values, local_port=local_port,
                            max_wait_time=max_wait_time)
    if dry_run:
        console.print(show(cmd), highlight=False, soft_wrap=True)
        return
    _check_node_data(values["data-dir"], dataset)
    env = _node_env(values["state-dir"], app_pin or ["local"])
    probe_superlink(address, ca, wait=connect_wait, say=_warn)
    console.print(f"[bold]fedistill node[/bold] client-{partition_id} → {superlink}: "
                  f"ε budget {epsilon}, state in {values['state-dir']}", highlight=False)
    code = supervise_supernode(cmd, env, superlink=superlink,
                               activation_wait=activation_wait, say=_warn)
    raise SystemExit(code)  # Flower's own exit code (not typer.Exit: see cli.main)


def _warn(message: str) -> None:
    console.print(f"[yellow]{message}[/yellow]", highlight=False)


def _node_security(root_certificates: Path | None, key: Path | None,
                   insecure: bool) -> tuple[Path | None, Path | None]:
    """The CA file and node key as absolute paths, checked; (None, None) with --insecure."""
    from simulations.deploy import check_node_key, resolve_root_certificates

    if insecure:
        if key is not None or root_certificates is not None:
            raise ConfigError("--insecure cannot be combined with --key or --root-certificates:"
                              " node authentication needs TLS (Flower exits 303). Drop "
                              "--insecure to use them.")
        console.print(f"[yellow]warning:[/yellow] {_insecure_warning()}")
        return None, None
    if root_certificates is None or key is None:
        raise ConfigError("--root-certificates CA and --key NODE_KEY are required (from "
                          "`fedistill certs`); plaintext needs an explicit --insecure.")
    ca = resolve_root_certificates(root_certificates.expanduser()).resolve()
    return ca, check_node_key(key.expanduser()).resolve()


def _check_node_data(data_dir: Path, dataset: str | None) -> None:
    """The node's file parses and its labels fit; said on the node's console at start."""
    from common.data import load_dataset
    from simulations.node_checks import check_node_data

    names = load_dataset(dataset, seed=0).class_names if dataset else None
    data = check_node_data(data_dir, names)
    labels = ", ".join(f"{name} {n}" for name, n in data.label_counts.items())
    console.print(f"data: {data.examples} examples in {data_dir} (labels: {labels})"
                  + ("" if dataset else "; pass --dataset to check them against the "
                     "federation's classes"), highlight=False)


def _node_env(state_dir: Path, pins: list[str]) -> dict[str, str]:
    """Flower's environment for this node, with its app pin (none for ``any``)."""
    from simulations.app_pin import pinned_env, resolve_pins
    from simulations.runner import flower_env

    state_dir.mkdir(parents=True, exist_ok=True)
    home = state_dir / ".flwr"
    home.mkdir(exist_ok=True)
    env = flower_env(home)
    allowed = resolve_pins(pins)
    if allowed is None:
        _warn("--app-pin any: this node runs whatever app the coordinator ships; its "
              "privacy rules hold only if that code is honest.")
        return env
    console.print(f"app pin: {', '.join(p[:12] for p in sorted(allowed))} (a run of any "
                  "other app is refused)", highlight=False)
    return pinned_env(env, allowed, home / "bin")


@deploy_app.command("app-digest")
def app_digest() -> None:
    """Print the SHA-256 of the app (FAB) this checkout builds: what nodes pin."""
    from simulations.app_pin import local_app_digest

    console.print(local_app_digest(), highlight=False)


@deploy_app.command("node-data")
def node_data(
    out: Annotated[Path, typer.Option(help="Writes OUT/node-K/train.csv for every K.")],
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Sets = None,
    max_examples: Annotated[int | None, typer.Option(
        help="At most this many examples per node (a seeded sample), for a quick trial.")
    ] = None,
) -> None:
    """Export a simulation's private partitions as per-node data directories (for trials)."""
    import numpy as np

    from common.data import load_dataset, partition

    cfg = resolve_config(preset, config, set_ or [], None)
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"--max-examples {max_examples} must be 1 or more.")
    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    private = roles.private
    if private.texts is None or private.labels is None:
        raise ConfigError(f"dataset={cfg.dataset!r} has no labelled private texts to export.")
    parts = partition(private.labels, cfg.num_clients, scheme=cfg.partition, alpha=cfg.alpha,
                      groups=private.groups, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # public randomness: which examples a trial keeps
    for k, idx in enumerate(parts):
        if max_examples is not None and len(idx) > max_examples:
            idx = np.sort(rng.choice(idx, size=max_examples, replace=False))
        folder = out / f"node-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "train.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows((private.texts[i], roles.class_names[int(private.labels[i])])
                             for i in idx)
        console.print(f"{folder / 'train.csv'}: {len(idx)} examples")
