"""A 4-class topic dataset built from data Python ships: the standard library's docstrings.

    python -m bench.stdlib_topics runs/stdlib-topics
    fedistill simulate --preset default --set dataset=runs/stdlib-topics \\
        --set partition=dirichlet

Writes ``train.csv`` (columns ``text,label``) into the folder: the first paragraph of
every function, class and method docstring of four families of stdlib modules (email,
web, concurrency, testing and debugging), deduplicated. It stands for "labeled text a
user brings": a folder with a train.csv, as ``--set dataset=PATH`` reads it.
"""

from __future__ import annotations

import ast
import csv
import sys
import sysconfig
from pathlib import Path

TOPICS = {
    "email": ("email", "mailbox", "smtplib", "imaplib", "poplib", "mimetypes"),
    "web": ("http", "urllib", "html", "xml", "wsgiref", "cgi", "webbrowser"),
    "concurrency": ("asyncio", "concurrent", "multiprocessing", "threading", "queue",
                    "subprocess", "sched", "selectors"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "trace", "cProfile", "profile",
                "pstats", "timeit", "tracemalloc", "faulthandler"),
}


def topic_of(relative: Path) -> str | None:
    top = relative.parts[0].removesuffix(".py")
    return next((t for t, mods in TOPICS.items() if top in mods), None)


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc:
                first = " ".join(doc.strip().split("\n\n")[0].split())
                if len(first) >= 25:
                    out.append(first[:400])
    return out


def main(folder: str) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows: dict[str, str] = {}
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if "test" in relative.parts or "tests" in relative.parts:
            continue
        topic = topic_of(relative)
        if topic:
            for text in docstrings(path):
                rows.setdefault(text, topic)  # a text seen under two topics keeps the first
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(sorted(rows.items()))
    counts = {t: sum(1 for v in rows.values() if v == t) for t in TOPICS}
    print(f"wrote {out / 'train.csv'}: {len(rows)} texts {counts}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/stdlib-topics")
