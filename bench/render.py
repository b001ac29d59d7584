"""docs/BENCHMARKS.md and its plots, from every ``bench/results/*.json``.

    python -m bench.render [--results bench/results] [--doc docs/BENCHMARKS.md]

Rendering is kept apart from measuring so that the document can be rebuilt from the
committed JSON in a second, on any machine, and so that a result produced elsewhere (the
GPU run) joins the document by being copied into ``bench/results/``. A file is
dispatched on its ``"benchmark"`` key; files without one (``bench/results.py``'s
preset runs) belong to docs/RESULTS.md and are only listed here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench.pages import joined, lines, text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"
MIB = 2**20

def _mib(b: float) -> str:
    return f"{b / MIB:.1f}"


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def _env_line(env: dict[str, Any]) -> str:
    gpu = f", {env['gpu']}" if env.get("gpu") else ""
    load = (f", load average {env['load_average_1m']} at the start"
            if "load_average_1m" in env else "")
    return (f"Environment: {env.get('cpu_count')} CPUs ({env.get('torch_threads')} torch "
            f"thread(s)), torch {env.get('torch')}, opacus {env.get('opacus')}, flwr "
            f"{env.get('flwr')}, device `{env.get('device')}`{gpu}, Python "
            f"{env.get('python')}{load}.")


# ------------------------------------------------------------------------- dp_cost
def dp_cost_table(data: dict[str, Any]) -> list[str]:
    """Markdown table of one dp_cost result: one row per (family, batch, mode)."""
    lines = ["| family | batch | mode | samples/s | throughput × (range) | best × | peak MiB "
             "| memory × |", "|---|---:|---|---:|---|---:|---:|---:|"]
    for r in data["rows"]:
        lo, hi = r.get("throughput_ratio_range", [r["throughput_ratio"]] * 2)
        rng = "" if r["mode"] == "non-private" else f" ({lo:.2f}–{hi:.2f})"
        lines.append(f"| {r['family']} | {r['batch_size']} | {r['mode']} | "
                     f"{r['samples_per_s']:,.0f} | {r['throughput_ratio']:.2f}x{rng} | "
                     f"{_fmt_ratio(r.get('throughput_ratio_best'))} | "
                     f"{_mib(r['peak_bytes'])} | {r['memory_ratio']:.2f}x |")
    return lines


def dp_cost_target(data: dict[str, Any]) -> list[str]:
    """The issue's target, batch by batch, as the result file judged it."""
    t = data.get("target")
    if not t or not t.get("per_batch"):
        return []
    where = "" if t["evaluated_on"] == "cpu" else (
        f" (the target is stated for CPU; shown here for `{t['evaluated_on']}` only as "
        "information)")
    names = {"all": "", "head": ", head only", "embedding": ", embedding + head"}
    trained = names.get(t.get("trainable", "all"), f", {t.get('trainable')}")
    lines = [f"**Target** (default student `{t['student']['family']}` `{t['student']['size']}`"
             f"{trained}, better DP mode): throughput ≥ {t['throughput_ratio_min']}x and memory ≤ "
             f"{t['memory_ratio_max']}x of non-private{where}.", ""]
    for p in t["per_batch"]:
        lines.append(f"- B={p['batch_size']}: better mode `{p['better_mode']}`, throughput "
                     f"{p['throughput_ratio']:.2f}x ({'met' if p['throughput_met'] else 'missed'})"
                     f", memory {p['memory_ratio']:.2f}x "
                     f"({'met' if p['memory_met'] else 'missed'}).")
    lines += ["", f"**Target met: {'yes' if t['met'] else 'no'}.**"]
    return lines


def plot_dp_cost(data: dict[str, Any], path: Path) -> None:
    """Throughput and memory ratios of hooks and ghost, per family and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["mode"] != "non-private"]
    groups = sorted({(r["family"], r["batch_size"]) for r in rows},
                    key=lambda g: (data["settings"]["families"].index(g[0])
                                   if g[0] in data["settings"]["families"] else 99, g[1]))
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    target = data.get("target") or {}
    for ax, key, title, line in (
        (axes[0], "throughput_ratio", "throughput vs non-private (higher is better)",
         target.get("throughput_ratio_min")),
        (axes[1], "memory_ratio", "peak memory vs non-private (lower is better)",
         target.get("memory_ratio_max")),
    ):
        width = 0.8 / max(len(modes), 1)
        for i, mode in enumerate(modes):
            vals = [next((r[key] for r in rows if (r["family"], r["batch_size"]) == g
                          and r["mode"] == mode), math.nan) for g in groups]
            ax.bar([j + (i - (len(modes) - 1) / 2) * width for j in range(len(groups))], vals,
                   width=width, label=mode)
        if line is not None:
            ax.axhline(line, color="k", ls="--", lw=1, label=f"target {line}x")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(groups)), [f"{f}\nB={b}" for f, b in groups], fontsize=8)
        ax.set_title(title, fontsize=10)
        if key == "memory_ratio":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"DP-SGD cost, {data['environment'].get('device')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def privacy_utility_table(rows: list[dict[str, Any]]) -> list[str]:
    """The GPU run's small ε sweep (centralized DP-SGD of the default student)."""
    lines = ["| ε | σ | steps | batch | optimizer | mode | test accuracy | seconds |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        eps = "∞" if r.get("epsilon") is None else f"{r['epsilon']:g}"
        if "skipped" in r:
            lines.append(f"| {eps} | — | — | — | — | — | skipped ({r['skipped']}) | — |")
            continue
        lines.append(f"| {eps} | {r['noise_multiplier']:.3f} | {r['steps']} | "
                     f"{r['batch_size']} | {r['optimizer']} | {r['grad_sample_mode']} | "
                     f"{r['test_accuracy']:.3f} | {r['seconds']:.1f} |")
    return lines


# ------------------------------------------------------------------- communication
def communication_section(data: dict[str, Any], plot: str | None,
                          equal_measured: bool = False) -> list[str]:
    """Table of bytes per client per round, and the uplink ratio to FedAvg."""
    s = data["settings"]
    lines = [
        "**Method.** `bench/communication.py` computes the bytes from the message "
        "layouts with the project's own code: the knowledge codec's `encode_knowledge` and "
        "`payload_nbytes` on a public batch of "
        f"{s['public_batch']} rows x {s['num_classes']} classes, plus the "
        f"{s['public_batch']} int64 public-row indices sent down with the teacher's "
        "knowledge; FedAvg and DP-FedAvg send the student's float32 weights each way "
        f"(`{s['student']['family']}` `{s['student']['size']}`: "
        f"{s['student_parameters']:,} parameters, {s['student_weight_bytes']:,} bytes). "
        "Per client and per round; Flower's framing is counted in neither, as in the "
        "runs' own byte counters.", "",
        f"{_env_line(data['environment'])}", "",
        "| method | down (B) | up (B) | FedAvg / FD, uplink | FedAvg / FD, downlink |",
        "|---|---:|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['method']} | {r['bytes_down']:,} | {r['bytes_up']:,} | "
                     f"{_fmt_ratio(r['uplink_ratio_fedavg_over_fd'])} | "
                     f"{_fmt_ratio(r['downlink_ratio_fedavg_over_fd'])} |")
    extra = data.get("evaluation_round_extra_up")
    t = data.get("uplink_target", {})
    lines += [""]
    if extra:
        lines.append(f"On an evaluation round each client also uploads {extra['bytes']:,} B "
                     f"({extra['encoding']} soft labels on {extra['test_rows']:,} test rows): "
                     "a measurement channel of the simulation, not part of the protocol.")
    if s["num_classes"] == 2:
        lines += [
            "", "With two classes, `float16` is the smallest encoding: `int8` pays a float32 "
            "scale per row and `topk` with k=2 keeps both classes plus their int16 indices, "
            "so both only pay off with many classes (k ≪ C). The downlink is dominated by "
            "the int64 indices of the public rows."]
    lines.append("")
    if t:
        lines.append(f"Per round, the smallest FedAvg/FD uplink ratio is {t['min_ratio']:.0f}x "
                     f"(target ≥ {t['ratio_min']:.0f}x: "
                     f"{'met' if t['met_per_round'] else 'missed'} per round). The target is "
                     "stated *at equal accuracy*, i.e. in total bytes to reach a target test "
                     f"accuracy: {'below' if equal_measured else t['at_equal_accuracy']}.")
    if plot:
        lines += ["", f"![bytes per client per round]({plot})"]
    return lines


def plot_communication(data: dict[str, Any], path: Path) -> None:
    """Bytes up and down per client per round, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["bytes_up"] for r in rows], width=0.4, label="up")
    ax.bar([x + 0.2 for x in xs], [r["bytes_down"] for r in rows], width=0.4, label="down")
    ax.set_yscale("log")
    ax.set_ylabel("bytes per client per round")
    ax.set_xticks(list(xs), [r["method"].replace(" (", "\n(") for r in rows], fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("Federated distillation vs FedAvg: bytes on the wire", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------- privacy-utility
def privacy_utility_section(results: dict[str, dict[str, Any]], plot_dir: Path | None,
                            plot_prefix: str = "") -> list[str]:
    """Benchmark 3, from ``privacy_utility.json`` and the FD rows of the preset files."""
    from bench import privacy_utility_page

    return privacy_utility_page.section(results.get("privacy_utility"), results, plot_dir,
                                   plot_prefix)


# --------------------------------------------------------------------------- scale
def scale_section(results: dict[str, dict[str, Any]], plot_dir: Path | None,
                  plot_prefix: str = "") -> list[str]:
    """Benchmark 4, rendered by ``bench/scale_page.py``'s ``section`` from ``scale.json``."""
    from bench import scale_page

    return scale_page.section(results.get("scale"), plot_dir, plot_prefix)


# ---------------------------------------------------------------- secure aggregation
def secagg_section(results: dict[str, dict[str, Any]]) -> list[str]:
    """Benchmark 5, rendered by ``bench/secagg_overhead.py``'s ``section``."""
    from bench import secagg_overhead

    return secagg_overhead.section(results.get("secagg_overhead"))


def equal_accuracy_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """Total uplink to reach equal accuracy, from the real runs of ``bench/results.py``.

    Those runs record totals, not per-round accuracies of FedAvg, so both figures are
    bounds: FD's whole-run uplink already buys at least FedAvg's final accuracy, and FedAvg
    never reached FD's within its run.
    """
    lines: list[str] = []
    for preset, data in sorted(results.items()):
        rows = data.get("rows") if "benchmark" not in data else None
        if not rows or any(r.get("metric", "accuracy") != "accuracy" for r in rows):
            continue  # none, or forecasts: MSE is not an accuracy to reach
        for fd in (r for r in rows if r.get("method") == "federated-distillation"):
            key = (fd["seed"], fd["privacy"].get("budget"))
            for base in (r for r in rows if r.get("method") in ("fedavg", "dp-fedavg")
                         and (r["seed"], r["privacy"].get("budget")) == key):
                fd_acc = fd["final"]["student_accuracy_mean"]
                base_acc = base["final"]["student_accuracy_mean"]
                if fd_acc < base_acc:
                    continue
                ratio = base["communication"]["bytes_up"] / fd["communication"]["bytes_up"]
                larger = (" (it never reached FD's accuracy within its run, so the true "
                          "ratio is larger)") if fd_acc > base_acc else ""
                lines.append(
                    f"- `{preset}` seed {key[0]}, ε={key[1]:g}: {base['method']} ends at "
                    f"{base_acc:.3f} after {base['communication']['bytes_up']:,} B up in all; "
                    f"federated distillation reaches {fd_acc:.3f} (students' mean) with "
                    f"{fd['communication']['bytes_up']:,} B: at least **{ratio:.0f}x** fewer "
                    f"uplink bytes at equal accuracy{larger}.")
    if not lines:
        return []
    return ["**At equal accuracy** (total uplink of the real runs in "
            "`bench/results/<preset>.json`, all clients and rounds; a lower bound; "
            "FedAvg's short local recipe stayed at the majority class, docs/RESULTS.md):", "",
            *lines, ""]


# ------------------------------------------------------------------------- document
def render(results: dict[str, dict[str, Any]], plot_dir: Path | None,
           plot_prefix: str = "") -> str:
    """The whole page; plots are written to ``plot_dir`` (None: no plots)."""

    def plot(name: str, fn: Any, data: dict[str, Any]) -> str | None:
        if plot_dir is None:
            return None
        fn(data, plot_dir / name)
        return plot_prefix + name

    other = sorted(k for k, v in results.items() if "benchmark" not in v)
    page = text("BENCHMARKS.md.j2",
                dp_cost=joined(_dp_cost_block(results, plot)),
                communication=joined(_communication_block(results, plot)),
                privacy_utility=joined(privacy_utility_section(results, plot_dir, plot_prefix)),
                scale=joined(scale_section(results, plot_dir, plot_prefix)),
                secagg=joined(secagg_section(results)),
                gpu=joined(_gpu_block(results, plot)),
                other=", ".join(f"`{k}.json`" for k in other))
    return page.rstrip() + "\n"


def _dp_runs(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in results.items() if v.get("benchmark") == "dp_cost"}


def _dp_cost_block(results: dict[str, dict[str, Any]], plot: Any) -> list[str]:
    """Benchmark 1: one block per CPU result file."""
    cpu = {k: v for k, v in _dp_runs(results).items()
           if v["environment"].get("device") == "cpu" and not v["settings"].get("quick")}
    out = [] if cpu else [text("BENCHMARKS/not_yet.md", what="run `python -m bench.dp_cost`.")]
    for name, data in sorted(cpu.items()):
        out += _source_lines(name, data)
        if data.get("notes"):
            out += [f"Note: {data['notes']}", ""]
        trainable = data["settings"].get("trainable", "all")
        if trainable != "all":
            out += lines("BENCHMARKS/trainable_note.md", trainable=trainable)
        out += dp_cost_table(data) + [""] + dp_cost_target(data) + [""]
        if trainable == "all" and not (data.get("target") or {}).get("met", True):
            out += [text("BENCHMARKS/dp_why.md")]
        if trainable == "all":
            out += [text("BENCHMARKS/dp_memory.md")]
        png = plot(f"bench_{name}.png", plot_dp_cost, data)
        if png:
            out += [f"![DP-SGD cost ratios]({png})", ""]
    return out


def _source_lines(name: str, data: dict[str, Any]) -> list[str]:
    return [f"Source: `bench/results/{name}.json`, command `{data['command']}` "
            f"({data.get('wall_seconds', 0):.0f} s).  ", _env_line(data["environment"]), ""]


def _communication_block(results: dict[str, dict[str, Any]], plot: Any) -> list[str]:
    """Benchmark 2: bytes per round, and the equal-accuracy bound of the real runs."""
    comm = {k: v for k, v in results.items() if v.get("benchmark") == "communication"}
    out = [] if comm else [text("BENCHMARKS/not_yet.md",
                                what="run `python -m bench.communication`.")]
    for name, data in sorted(comm.items()):
        equal = equal_accuracy_lines(results)
        out += communication_section(data, plot(f"bench_{name}.png", plot_communication, data),
                                     equal_measured=bool(equal))
        out += equal
        out.append("")
    return out


def _gpu_block(results: dict[str, dict[str, Any]], plot: Any) -> list[str]:
    """Benchmark 6: the CUDA result files."""
    gpu = {k: v for k, v in _dp_runs(results).items()
           if v["environment"].get("device", "").startswith("cuda")}
    out = [] if gpu else [text("BENCHMARKS/no_gpu_yet.md")]
    for name, data in sorted(gpu.items()):
        out += _source_lines(name, data)
        out += dp_cost_table(data) + [""] + dp_cost_target(data) + [""]
        if data.get("skipped"):
            out += [f"Skipped for time: {', '.join(data['skipped'])}.", ""]
        if data.get("privacy_utility"):
            out += ["Privacy-utility check:", ""]
            out += privacy_utility_table(data["privacy_utility"]) + [""]
        png = plot(f"bench_{name}.png", plot_dp_cost, data)
        if png:
            out += [f"![DP-SGD cost ratios on GPU]({png})", ""]
    return out


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every JSON object in ``results_dir``, by file stem."""
    out = {}
    for p in sorted(results_dir.glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            out[p.stem] = data
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--doc", default=str(DOC))
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(load_results(Path(args.results)), doc.parent))
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
