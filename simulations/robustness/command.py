"""``fedistill robustness``: parse and check the options, then run the harness."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from common.errors import ConfigError
from simulations.cli_common import console, resolve_config
from simulations.robustness.harness import (
    DEFAULT_DOC,
    DEFAULT_JSON,
    DEFAULT_WORK_DIR,
    run_robustness,
)
from simulations.robustness.page import seed_headline, write_page
from simulations.robustness.replay import (
    DEFAULT_ATTACKS,
    DEFAULT_FRACTIONS,
    DEFAULT_ROUNDS,
    default_rules,
)

robustness_app = typer.Typer()


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


@robustness_app.command()
def robustness(
    preset: Annotated[str, typer.Option(help="A preset in simulations/presets.")] = "default",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value override of the preset.")
    ] = None,
    replies_from: Annotated[
        Path | None, typer.Option(help="Reuse a clean run made with --set save-replies=true.")
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            help="Replay the first N recorded rounds (0 = all; each round costs about as "
            "much again as the first)."
        ),
    ] = DEFAULT_ROUNDS,
    attacks: Annotated[str, typer.Option(help="Comma-separated attacks.")] = ",".join(
        DEFAULT_ATTACKS
    ),
    fractions: Annotated[
        str, typer.Option(help="Comma-separated shares of malicious clients.")
    ] = ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS),
    rules: Annotated[
        str,
        typer.Option(help="Comma-separated rules (default: every registered one but dsfl)."),
    ] = "",
    confirm: Annotated[
        bool,
        typer.Option(
            help="Also run the strongest attack at 30% for real (mean, best robust rule)."
        ),
    ] = False,
    confirm_attacks_: Annotated[
        str,
        typer.Option(
            "--confirm-attacks",
            help="With --confirm: also run these attacks for real (comma-separated); "
            "the headline is the one that hurts the plain mean most there.",
        ),
    ] = "",
    work_dir: Annotated[Path, typer.Option(help="Where the real runs go.")] = (
        DEFAULT_WORK_DIR
    ),
    doc: Annotated[Path, typer.Option(help="The Markdown report.")] = DEFAULT_DOC,
    json_out: Annotated[Path, typer.Option("--json", help="The JSON result.")] = (DEFAULT_JSON),
    num_cpus: Annotated[int, typer.Option(help="CPUs per simulated client.")] = 1,
    threads: Annotated[
        int,
        typer.Option(
            help="torch threads for the replay (0 = torch's default, as the coordinator: "
            "bit-exact; 1 is much faster on a busy machine, within float rounding)."
        ),
    ] = 0,
    reuse_runs: Annotated[
        bool,
        typer.Option(
            "--reuse-runs",
            help="Use finished real runs of the same configuration in --work-dir "
            "instead of running them again.",
        ),
    ] = False,
    render: Annotated[
        bool, typer.Option("--render", help="Only rewrite --doc from --json; run nothing.")
    ] = False,
    seed_results: Annotated[
        str,
        typer.Option(
            help="With --render: the JSON results of the same study run with other seeds "
            "(comma-separated); their headline cells join the page and --json.",
        ),
    ] = "",
) -> None:
    """Teacher accuracy per aggregation rule × attack × fraction (docs/ROBUSTNESS.md)."""
    if render:
        _render(doc, json_out, seed_results)
        return
    attack_list = _checked_attacks(attacks)
    fraction_list = _checked_fractions(fractions)
    rule_list = _checked_rules(rules)
    if rounds < 0:
        raise ConfigError(f"--rounds {rounds} must be >= 0 (0 = all).")
    cfg = resolve_config(preset, None, set_ or [], None)
    extra = _split(confirm_attacks_)
    if [a for a in extra if a not in attack_list]:
        raise ConfigError(
            f"--confirm-attacks {extra} must be among --attacks ({', '.join(attack_list)})."
        )
    if threads:
        import torch

        torch.set_num_threads(threads)
    command = _command_line(
        preset, set_ or [], replies_from=replies_from, rounds=rounds, attacks=attacks,
        fractions=fractions, fraction_list=fraction_list, rules=rules, confirm=confirm,
        extra=extra, reuse_runs=reuse_runs, threads=threads,
    )
    run_robustness(
        cfg,
        preset=preset,
        command=command,
        replies_from=replies_from,
        rounds=rounds,
        rules=rule_list,
        attacks=attack_list,
        fractions=fraction_list,
        confirm=confirm,
        work_dir=work_dir,
        doc=doc,
        json_path=json_out,
        num_cpus=num_cpus,
        say=lambda text: console.print(text, markup=False, highlight=False),
        reuse_runs=reuse_runs,
        confirm_extra=extra,
    )


def _checked_attacks(attacks: str) -> list[str]:
    from client.attacks import POISONING

    attack_list = _split(attacks)
    bad = [a for a in attack_list if a not in POISONING]
    if bad:
        raise ConfigError(
            f"--attacks {bad} are not poisoning attacks; choose from {', '.join(POISONING)}."
        )
    return attack_list


def _checked_fractions(fractions: str) -> list[float]:
    try:
        fraction_list = [float(f) for f in _split(fractions)]
    except ValueError as exc:
        raise ConfigError(f"--fractions {fractions!r}: {exc}") from None
    if not fraction_list or not all(0 < f < 0.5 for f in fraction_list):
        raise ConfigError(f"--fractions {fractions!r} must be shares in (0, 0.5).")
    return fraction_list


def _checked_rules(rules: str) -> list[str]:
    from coordinator.aggregation import AGGREGATORS

    rule_list = _split(rules) or default_rules()
    unknown = [r for r in rule_list if r not in AGGREGATORS]
    if unknown:
        raise ConfigError(f"--rules {unknown} unknown; choose from {', '.join(AGGREGATORS)}.")
    return rule_list


def _command_line(preset: str, sets: list[str], *, replies_from: Path | None, rounds: int,
                  attacks: str, fractions: str, fraction_list: list[float], rules: str,
                  confirm: bool, extra: list[str], reuse_runs: bool, threads: int) -> str:
    """The command as the JSON and the page record it: only the options that were given."""
    parts = ["fedistill robustness", f"--preset {preset}"]
    parts += [f"--set {shlex.quote(s)}" for s in sets]
    if replies_from:
        parts.append(f"--replies-from {replies_from}")
    if rounds != DEFAULT_ROUNDS:
        parts.append(f"--rounds {rounds}")
    if attacks != ",".join(DEFAULT_ATTACKS):
        parts.append(f"--attacks {attacks}")
    if fraction_list != list(DEFAULT_FRACTIONS):
        parts.append(f"--fractions {fractions}")
    if rules:
        parts.append(f"--rules {rules}")
    if confirm:
        parts.append("--confirm")
    if extra:
        parts.append(f"--confirm-attacks {','.join(extra)}")
    if reuse_runs:
        parts.append("--reuse-runs")
    if threads:
        parts.append(f"--threads {threads}")
    return " ".join(parts)


def _render(doc: Path, json_out: Path, seed_results: str) -> None:
    """Rewrite the page from the JSON, with the headline cells of other seeds' studies."""
    result = json.loads(json_out.read_text())
    others = [Path(p) for p in _split(seed_results)]
    missing = [str(p) for p in others if not p.is_file()]
    if missing:
        raise ConfigError(f"--seed-results: no such file {missing}")
    if others:
        studies = [result, *(json.loads(p.read_text()) for p in others)]
        result["seeds"] = [h for h in map(seed_headline, studies) if h is not None]
        json_out.write_text(json.dumps(result, indent=1) + "\n")
    write_page(doc, result)
    console.print(f"wrote {doc} from {json_out}")
