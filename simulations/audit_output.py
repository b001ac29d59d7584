"""What every empirical audit does last: notes, its JSON, and the exit code of a verdict."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console


def json_safe(obj: Any) -> Any:
    """Non-finite floats become strings ("inf"), so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def finish_audit(console: Console, *, notes: Sequence[str], out: Path | None, filename: str,
                 payload: dict[str, Any], consistent: bool, failure: str) -> None:
    """Print the notes, write ``out/filename``, and exit 1 when the claim is refuted."""
    for note in notes:
        console.print(f"[yellow]note[/yellow] {note}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / filename).write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {out / filename}")
    if not consistent:
        console.print(f"[red]{failure}[/red]")
        raise typer.Exit(code=1)
