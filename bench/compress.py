"""The compression benchmark: ``fedistill compress`` on finished runs, and its page.

    python -m bench.compress --run default=runs/default --seeds 0,1,2
    python -m bench.compress --render      # the page again from the saved JSON

writes ``bench/results/compression.json``, ``docs/COMPRESSION.md`` (the tables, target
verdicts, the data-parallel numbers of ``bench/results/ddp.json`` and the model-parallel
memory arithmetic) and one Pareto plot per run in ``docs/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench.pages import text
from simulations.compress_cli import compress
from simulations.compress_report import seed_table, seed_verdicts, table, verdict_lines

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "compression.json"
DDP = ROOT / "bench" / "results" / "ddp.json"
PAGE = ROOT / "docs" / "COMPRESSION.md"


def _plot_name(name: str) -> str:
    return f"compression_pareto-{name}.png"


def measure_runs(runs: dict[str, Path], args: argparse.Namespace) -> dict:
    """Every run compressed (its kind's default recipes unless --recipe), once per seed
    of the students' training (entries ``NAME-sK``); plots copied into docs/; the command
    line is kept with the numbers."""
    results = {}
    for name, run_dir in runs.items():
        for seed in args.seeds:
            entry = f"{name}-s{seed}"
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                compress(run_dir, out=out, recipe=args.recipe or None, source="teacher",
                         threads=args.threads, reps=args.reps, epochs=args.epochs,
                         validation=args.validation, seed=seed, test_limit=0)
                results[entry] = json.loads((out / "compression.json").read_text())
                recipes = "".join(f" --recipe {r}" for r in args.recipe)
                results[entry]["command"] = (
                    f"python -m bench.compress --run {name}={run_dir} --seeds {seed} "
                    f"--epochs {args.epochs} --validation {args.validation}{recipes}")
                shutil.copy(out / "pareto.png", ROOT / "docs" / _plot_name(entry))
    return results


def render(results: dict) -> str:
    names = sorted(results, key=lambda n: (not n.startswith("default"), n))
    sections = [{"name": name, "result": results[name],
                 "table": "\n".join(table(results[name]["rows"])),
                 "verdicts": "\n".join(verdict_lines(results[name]["rows"])),
                 "plot": _plot_name(name), "row": {r["recipe"]: r for r in results[name]["rows"]}}
                for name in names]
    ddp = json.loads(DDP.read_text()) if DDP.is_file() else None
    default = [results[n]["rows"] for n in names if n.startswith("default-s")]
    return text("COMPRESSION.md.j2", sections=sections, ddp=ddp,
                seeds=seed_table(default), summary=seed_verdicts(default))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--render", action="store_true", help="Only re-render the page.")
    parser.add_argument("--epochs", type=int, default=3, help="Most epochs per student.")
    parser.add_argument("--validation", type=float, default=0.1,
                        help="Share of the public texts held out to choose the epoch.")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")],
                        default=[0], help="Students' seeds, e.g. 0,1,2 (one entry each).")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipe", action="append", default=[], help="Instead of the "
                        "default recipes (repeat).")
    args = parser.parse_args()
    if not args.render:
        runs = {k: Path(v) for k, _, v in (r.partition("=") for r in args.run)}
        # a run measured now replaces its earlier entry; the other runs' entries stay
        results = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
        results.update(measure_runs(runs, args))
        RESULT.write_text(json.dumps(results, indent=1) + "\n")
    PAGE.write_text(render(json.loads(RESULT.read_text())))
    print(f"Wrote {RESULT.relative_to(ROOT)} and {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
