"""The compression benchmark: ``fedistill compress`` on finished runs, and its page.

    python -m bench.compress --run default=runs/default --run quick=runs/quick
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
from simulations.compress_report import table, verdict_lines, verdicts

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "compression.json"
DDP = ROOT / "bench" / "results" / "ddp.json"
PAGE = ROOT / "docs" / "COMPRESSION.md"


def _plot_name(name: str) -> str:
    return f"compression_pareto-{name}.png"


def measure_runs(runs: dict[str, Path], args: argparse.Namespace) -> dict:
    """Every run compressed (its kind's default recipes unless --recipe); plots copied
    into docs/; the command line is kept with the numbers."""
    results = {}
    for name, run_dir in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            compress(run_dir, out=out, recipe=args.recipe or None, source="teacher",
                     threads=args.threads, reps=args.reps, epochs=args.epochs, test_limit=0)
            results[name] = json.loads((out / "compression.json").read_text())
            recipes = "".join(f" --recipe {r}" for r in args.recipe)
            results[name]["command"] = (f"python -m bench.compress --run {name}={run_dir} "
                                        f"--epochs {args.epochs}{recipes}")
            shutil.copy(out / "pareto.png", ROOT / "docs" / _plot_name(name))
    return results


def render(results: dict) -> str:
    names = sorted(results, key=lambda n: (not n.startswith("default"), n))
    sections = [{"name": name, "result": results[name],
                 "table": "\n".join(table(results[name]["rows"])),
                 "verdicts": "\n".join(verdict_lines(results[name]["rows"])),
                 "plot": _plot_name(name), "row": {r["recipe"]: r for r in results[name]["rows"]}}
                for name in names]
    ddp = json.loads(DDP.read_text()) if DDP.is_file() else None
    return text("COMPRESSION.md.j2", sections=sections, ddp=ddp, summary=_summary(results),
                student_gap=_student_gap(results))


def _student_gap(results: dict, recipe: str = "student=3+vocab+positions") -> float | None:
    """Accuracy points between the 1-epoch and the 2-epoch 3-layer student, if both ran."""
    rows = [{r["recipe"]: r for r in results[n]["rows"]} for n in ("default", "default-e1")
            if n in results]
    if len(rows) < 2 or any(recipe not in r for r in rows):
        return None
    return 100 * (rows[1][recipe]["accuracy"] - rows[0][recipe]["accuracy"])


def _summary(results: dict) -> list[dict]:
    """Per target, every default-preset run and recipe that met it (or none)."""
    out: list[dict] = []
    for name, result in results.items():
        if not name.startswith("default"):
            continue
        for i, v in enumerate(verdicts(result["rows"])):
            while len(out) <= i:
                out.append({"target": v["target"], "met": []})
            if v["met"]:
                out[i]["met"].append({"run": name, **v})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--render", action="store_true", help="Only re-render the page.")
    parser.add_argument("--epochs", type=int, default=3)
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
