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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"
MIB = 2**20

INTRO = """\
# Benchmarks

Side-by-side measurements of what privacy costs, how many bytes cross the network and how
far the simulation scales. Each benchmark is a script in `bench/` that prints its
environment (CPU count; torch, opacus and flwr versions; device) and writes one JSON file
to `bench/results/`; this page is generated from those files.

Regenerate: `make bench` (reruns the CPU benchmarks, then this page; about 6 minutes on
a shared 2-core machine) or `make bench-doc` (this page and its plots only, from the
committed JSON).
Benchmarks are not tests: the test suite makes no timing assertions.

Absolute times depend on the machine and on its neighbours; every comparison below is
measured side by side in one process and reported as a ratio.
"""

DP_METHOD = """\
**Method.** `bench/dp_cost.py`. Students of each family at size `tiny` (vocab 6000,
T=40, 2 classes) on real rotten-tomatoes token ids. Three trainers live side by side in
one process: non-private SGD, and Opacus DP-SGD with `hooks` and with `ghost` clipping,
built as `common/training/dp.py` builds them (`PrivacyEngine.make_private`, Poisson
loader, σ=1, clip 1, SGD lr 0.05 momentum 0.9). Each repeat times a block of steps of
every mode in turn (the order rotates per repeat); *throughput ×* is the median over
repeats of a mode's samples/s over the non-private samples/s of the same repeat, with
its range; *best ×* compares each mode's fastest block with the non-private fastest block
(a neighbour's load only ever slows a block down), as a cross-check on a busy machine.
Steps use fixed-size batches so every mode processes the same rows.
`torch.set_num_threads(1)` on CPU: the machine is shared, and one thread per mode keeps
the comparison fair.

**Peak memory** is measured apart from timing, one configuration at a time. On CPU each
(family, mode, batch) runs in a fresh subprocess: it loads the token ids, warms the code
paths with a throwaway 2-row step of the same mode (the first step maps tens of MiB of
library code, the same for every mode), resets the kernel's resident-set high-water mark
(`/proc/self/clear_refs`), then builds the model and the Opacus wrapper and runs a few
steps. *Peak MiB* is `VmHWM` minus the RSS before the build: weights, gradients,
optimizer state, activations, per-sample gradients and every transient, as the kernel
saw them. (torch has no CPU allocator statistics, and `tracemalloc` does not see torch's
allocations.) On CUDA it is `torch.cuda.max_memory_allocated` minus the allocation
before the build. This is the training step's working memory, not the process: the
~300 MiB of Python, torch and Opacus that every mode shares would flatten every ratio
towards 1.
"""

DP_WHY = """\
**Why the target is missed.** The default student is small (d=64) and most of its
parameters are its 6000x64 token embedding, which is the worst case for per-sample
gradients. A `torch.profiler` trace of one CPU step (Transformer, B=256), taken when these
results were first produced, shows where the time goes:

- `hooks` materialises a per-sample gradient for every parameter; for the embedding that
  is a dense B x 6000 x 64 tensor (393 MB at B=256), and zero-filling it (`aten::fill_`)
  alone is about half of the step. Memory follows: several times the non-private
  working set.
- `ghost` never builds per-sample gradients, so its memory stays near non-private, but it
  runs backward twice (norms, then the re-weighted loss); the per-layer norm products
  (`bmm` over T x T) and the embedding's norm (`unique` over (row, token) pairs, about 15%
  of the step on CPU) come on top. With a backward pass costing about twice the forward,
  forward plus two backwards is already about 5/3 of a plain step (0.6x) before any norm
  is computed.

Measured earlier in this project on a wider model with a 1000-token vocabulary (d=128,
T=64, same kind of machine), the same modes gave 0.60-0.62x (hooks) and 0.51-0.55x
(ghost): the gap to the target comes from the shape of the default student and from
ghost's second backward, not from the benchmark. What moves it: freezing the embedding
for the DP phase. The clients' default private step does that (`dp-trainable = head`,
chosen for accuracy, docs/RESULTS.md); its own cost is measured below (`--trainable
head`). A larger d per parameter of embedding would also move it.
"""

DP_MEMORY = """\
**Reading the other families.** The LSTM and CNN students pay more, relative to their own
non-private step, than the Transformer. Their non-private working set is small (tens of
MiB: no attention maps), while the embedding's per-sample cost is the same 6000x64 for
every family, so `hooks` lands at 10-25x memory and `ghost` at 2-5x. The LSTM is an Opacus
`DPLSTM` in every mode (`nn.LSTM`'s fused kernel cannot be hooked), unrolled over T=40
steps; under DP each of its gates' linear layers is hooked at every time step, which
makes it the slowest family under DP (about 0.1-0.2x of its own non-private speed).
"""

NOT_YET = """\
*Not yet measured* — {what} This section is filled in when its script lands in
`bench/` and writes its JSON to `bench/results/`.
"""
NO_GPU_YET = """\
*Not yet measured* — no GPU result has been committed yet (`dp_cost_gpu.json` in
`bench/results/`).
"""


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
TRAINABLE_NOTE = (
    "**The clients' own DP step: `--trainable {trainable}`.** Every mode, the non-private "
    "one included, trains only what `dp-trainable = {trainable}` trains (the rest frozen, "
    "as `dp_train` freezes it), so the ratios compare DP-SGD with non-private SGD on the "
    "same parameters. `head` is the default of every preset; `embedding` (token "
    "embedding + head) carries more private signal on Rotten Tomatoes (docs/RESULTS.md, "
    '"Where the private step pays"); the first table trains all layers, the cost of DP '
    "on the whole student.")


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
    from bench import privacy_utility

    return privacy_utility.section(results.get("privacy_utility"), results, plot_dir,
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
        if not rows:
            continue
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
    dp = {k: v for k, v in results.items() if v.get("benchmark") == "dp_cost"}
    cpu = {k: v for k, v in dp.items() if v["environment"].get("device") == "cpu"
           and not v["settings"].get("quick")}
    gpu = {k: v for k, v in dp.items() if v["environment"].get("device", "").startswith("cuda")}
    comm = {k: v for k, v in results.items() if v.get("benchmark") == "communication"}
    other = sorted(k for k, v in results.items() if "benchmark" not in v)

    def plot(name: str, fn: Any, data: dict[str, Any]) -> str | None:
        if plot_dir is None:
            return None
        fn(data, plot_dir / name)
        return plot_prefix + name

    out = [INTRO, "## 1. DP training cost", "", DP_METHOD]
    if not cpu:
        out.append(NOT_YET.format(what="run `python -m bench.dp_cost`."))
    for name, data in sorted(cpu.items()):
        out += [f"Source: `bench/results/{name}.json`, command `{data['command']}` "
                f"({data.get('wall_seconds', 0):.0f} s).  ", _env_line(data["environment"]), ""]
        if data.get("notes"):
            out += [f"Note: {data['notes']}", ""]
        trainable = data["settings"].get("trainable", "all")
        if trainable != "all":
            out += [TRAINABLE_NOTE.format(trainable=trainable), ""]
        out += dp_cost_table(data) + [""] + dp_cost_target(data) + [""]
        if trainable == "all" and not (data.get("target") or {}).get("met", True):
            out += [DP_WHY]
        if trainable == "all":
            out += [DP_MEMORY]
        png = plot(f"bench_{name}.png", plot_dp_cost, data)
        if png:
            out += [f"![DP-SGD cost ratios]({png})", ""]
    out += ["## 2. Communication", ""]
    if not comm:
        out.append(NOT_YET.format(what="run `python -m bench.communication`."))
    for name, data in sorted(comm.items()):
        equal = equal_accuracy_lines(results)
        out += communication_section(data, plot(f"bench_{name}.png", plot_communication, data),
                                     equal_measured=bool(equal))
        out += equal
        out.append("")
    out += ["## 3. Privacy-utility", "", *privacy_utility_section(results, plot_dir, plot_prefix),
        "## 4. Scale", "", *scale_section(results, plot_dir, plot_prefix),
        "## 5. Secure aggregation", "", *secagg_section(results),
        "## 6. GPU", "",
        "`bench/gpu.py` runs benchmark 1 on CUDA (batches 64, 256, 1024; peak memory "
        "by `torch.cuda.max_memory_allocated`) and a small privacy-utility check (the "
        "default student DP-trained from scratch on the private set at ε ∈ {1, 8, ∞}: "
        "centralized DP-SGD only, not benchmark 3's grid). It checks a 420 s budget before "
        "each part and saves its JSON after each, and `bench/run_gpu.sh` caps it at "
        "470 s. On a GPU machine that receives only the repo: "
        "`bash bench/run_gpu.sh --prepare` here once (copies the data file and the "
        "opacus wheel into `.bench-carry/`), then `bash bench/run_gpu.sh` there with "
        "`.bench-carry` carried; copy `$OUT/dp_cost_gpu.json` into `bench/results/`. "
        "Smoke test on CPU: `python -m bench.gpu --device cpu --quick --out runs/gpu/g.json`.",
        ""]
    if not gpu:
        out.append(NO_GPU_YET)
    for name, data in sorted(gpu.items()):
        out += [f"Source: `bench/results/{name}.json`, command `{data['command']}` "
                f"({data.get('wall_seconds', 0):.0f} s).  ", _env_line(data["environment"]), ""]
        out += dp_cost_table(data) + [""] + dp_cost_target(data) + [""]
        if data.get("skipped"):
            out += [f"Skipped for time: {', '.join(data['skipped'])}.", ""]
        if data.get("privacy_utility"):
            out += ["Privacy-utility check:", ""]
            out += privacy_utility_table(data["privacy_utility"]) + [""]
        png = plot(f"bench_{name}.png", plot_dp_cost, data)
        if png:
            out += [f"![DP-SGD cost ratios on GPU]({png})", ""]
    if other:
        out += ["## Other result files", "",
                "Rendered by `bench/results.py` into docs/RESULTS.md: "
                + ", ".join(f"`{k}.json`" for k in other) + ".", ""]
    return "\n".join(out).rstrip() + "\n"


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
