"""Reports of a finished run: ε recomputed from the ledgers, a final table, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from common.privacy.ledger import PrivacyLedger  # noqa: E402


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ledger_epsilons(out: Path, *, delta: float, accountant: str) -> dict[str, float]:
    """Each client's ε recomputed from its ledger's events (never from stored numbers)."""
    eps: dict[str, float] = {}
    for path in sorted((out / "clients").glob("*/ledger.jsonl")):
        ledger = PrivacyLedger(path)
        ledger.verify()
        eps[path.parent.name] = ledger.epsilon(delta=delta, accountant=accountant)
    return eps


def finalize_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Replace the clients' reported ε by the ledger-recomputed one, and keep both; for a
    language model add the quality of text sampled from the final teacher."""
    if summary.get("task") == "lm" and (out / "teacher.pt").is_file():
        from simulations.generate import run_samples

        summary["samples"] = {"teacher": run_samples(out)}
    privacy = summary["privacy"]
    recomputed = ledger_epsilons(out, delta=privacy["delta"], accountant=privacy["accountant"])
    if recomputed:
        privacy["epsilon_reported"] = privacy["epsilon_per_client"]
        privacy["epsilon_per_client"] = recomputed
        privacy["epsilon_max"] = max(recomputed.values())
        privacy["source"] = "recomputed from the clients' ledgers"
    privacy["within_budget"] = privacy["epsilon_max"] <= privacy["budget"] + 1e-9
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def summary_table(summary: dict[str, Any]) -> Table:
    """The final table printed by ``fedistill simulate``."""
    table = Table(title=f"fedistill · {summary.get('method')} · {summary['dataset']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    final, privacy, comm = summary["final"], summary["privacy"], summary["communication"]
    name = summary.get("metric", "accuracy")
    more = [(f"{who} {key} (final)", final[f"{who}_{key}"]) for who in ("teacher", "ensemble")
            for key in ("mae", "token_accuracy")  # forecasts' and next tokens' second
            if f"{who}_{key}" in final]
    for label, value in [
        (f"teacher {name} (initial)", final.get(f"teacher_{name}_initial")),
        (f"teacher {name} (final)", final.get(f"teacher_{name}")),
        (f"ensemble {name}", final.get(f"ensemble_{name}")),
        (f"student {name} (mean)", final.get(f"student_{name}_mean")),
        *more,
        ("ε max / budget", f"{_fmt(privacy['epsilon_max'])} / {privacy['budget']}"),
        ("δ", f"{privacy['delta']:g}"),
        ("bytes up / down", f"{comm['bytes_up']:,} / {comm['bytes_down']:,}"),
        ("rounds · clients", f"{summary['rounds']} · {_clients(summary)}"),
        ("wall seconds", f"{summary['wall_seconds']:.1f}"),
    ]:
        table.add_row(label, _fmt(value))
    reference = summary.get("reference")
    for key, model in (("tfidf_lr_teacher_labels", "TF-IDF + LR"),
                       ("pixel_lr_teacher_labels", "pixel LR")):
        if reference and key in reference:
            table.add_row(f"{model} on the teacher's {reference['teacher_labels']} labels",
                          _fmt(reference[key]))
    if reference and "bigram_perplexity" in reference:
        table.add_row(f"bigram perplexity (the teacher's {reference['teacher_windows']} "
                      "windows)", _fmt(reference["bigram_perplexity"]))
    for key in ("mse", "mae"):
        if reference and f"seasonal_naive_{key}" in reference:
            table.add_row(f"seasonal naive {key} (season {reference['season']})",
                          _fmt(reference[f"seasonal_naive_{key}"]))
    for label, value in _sample_rows(summary.get("samples", {}).get("teacher")):
        table.add_row(label, _fmt(value))
    return table


def _sample_rows(quality: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """What the table says of the teacher's sampled text (language models)."""
    if not quality:
        return []
    rows = [(f"teacher's {quality['samples']} samples: distinct-2", quality["distinct_2"])]
    if "syntax_error_rate" in quality:
        rows.append((f"... syntax-error rate ({quality['finished']} ended)",
                     quality["syntax_error_rate"]))
    else:
        rows.append(("... spelling-error rate", quality["spelling_error_rate"]))
    return rows


def _clients(summary: dict[str, Any]) -> str:
    """The clients that took part, and of how many expected when fewer did."""
    took, expected = summary.get("clients_took_part"), summary["clients"]
    if took is None or took == expected:
        return str(expected)
    return f"{took} took part (of {expected} expected)"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot_run(out: Path, records: list[dict[str, Any]], budget: float) -> list[Path]:
    """Accuracy per round, ε per client, bytes per round, as PNG files in ``out``."""
    rounds = [r for r in records if r["round"] > 0]
    paths = [out / "accuracy.png", out / "epsilon.png", out / "bytes.png"]
    name = records[0].get("metric", "accuracy") if records else "accuracy"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in records], [r[f"teacher_{name}"] for r in records], "o-",
            label="teacher")
    ev = [r for r in rounds if f"ensemble_{name}" in r]
    ax.plot([r["round"] for r in ev], [r[f"ensemble_{name}"] for r in ev], "s-",
            label="ensemble")
    ax.plot([r["round"] for r in ev], [r[f"student_{name}_mean"] for r in ev], "^-",
            label="students (mean)")
    ax.set(xlabel="round", ylabel=f"test {name}", title=f"Test {name} per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    clients = sorted({c for r in rounds for c in r.get("epsilon", {})})
    for c in clients:
        pts = [(r["round"], r["epsilon"][c]) for r in rounds if c in r.get("epsilon", {})]
        ax.plot(*zip(*pts, strict=True), marker=".", label=c)
    ax.axhline(budget, color="red", linestyle="--", label="budget")
    ax.set(xlabel="round", ylabel="ε", title="ε spent per client")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in rounds]
    ax.bar([x - 0.2 for x in xs], [r["bytes_up"] for r in rounds], width=0.4, label="up")
    ax.bar([x + 0.2 for x in xs], [r["bytes_down"] for r in rounds], width=0.4, label="down")
    ax.set(xlabel="round", ylabel="bytes", title="Bytes per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
