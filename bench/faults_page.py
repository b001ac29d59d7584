"""The "Faults" section of ``docs/ROBUSTNESS.md``, from ``bench/results/faults.json``.

Only the part between ``<!-- faults:begin -->`` and ``<!-- faults:end -->`` is written
(the markers and the section are appended when absent); the rest of the page belongs to
``simulations/robustness.py``. Every number comes from the JSON.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.pages import text

BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
SOURCE = "bench/results/faults.json"


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _code(s: str | None) -> str:
    return "`" + s.replace("`", "'") + "`" if s else "—"


def _short(s: str | None, n: int = 110) -> str | None:
    return s if s is None or len(s) <= n else s[:n].rstrip() + " …"


def _eps(view: dict[str, Any] | None) -> str:
    if not view:
        return "—"
    if not view.get("verifies", True):
        return f"unreadable ({view.get('error', '?')[:80]})"
    rounds = view.get("rounds") or []
    eps = view.get("epsilon")
    twice = ", a round twice!" if view.get("duplicate_rounds") else ""
    return f"{eps:.3f} (rounds {', '.join(map(str, rounds)) or 'none'}{twice})"


def _eps_pair(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    return f"{_eps(before)} → {_eps(after)}"


def _outcome(r: dict[str, Any] | None) -> str:
    if not r:
        return "no round recorded"
    parts = [f"round {r['round']}: {r['replies']}/{r['sampled']} replies"]
    if r.get("rejected"):
        parts.append("rejected " + ", ".join(f"`{c}` ×{n}" for c, n in r["rejected"].items()))
    if r.get("declined"):
        parts.append("declined the private step: " + ", ".join(r["declined"]))
    return "; ".join(parts)


def _rows_dropout(d: dict[str, Any], label: str) -> list[list[str]]:
    outcome = "<br>".join(_outcome(r) for r in d.get("rounds") or []) or "no round recorded"
    outcome += f"<br>exit code {d.get('exit_code')}"
    eps = []
    for client, view in (d.get("dropped_ledgers") or {}).items():
        eps.append(f"{client}: {_eps_pair({'epsilon': 0.0, 'rounds': []}, view)}")
    if d.get("honest_client") and d.get("honest_ledger"):
        eps.append(f"(honest {d['honest_client']}: {_eps(d['honest_ledger'])})")
    sees = d.get("user_sees") or {}
    failure = sees.get("console_failure_lines")
    console = re.sub(r"\s*━+\s*\d+:\d\d:\d\d", "", sees.get("console") or "") or None
    seen = [f"console: {_code(console)}"
            + (" (no word of the failure)" if failure == [] else
               "" if failure is None else f", {_code(failure[0])}"),
            f"flower.log: {_code(sees.get('flower_log'))}"]
    return [[label, outcome, "<br>".join(eps) or "—", "<br>".join(seen),
             f"{d.get('wall_seconds', 0):.0f}"]]


def _rows_deployment(d: dict[str, Any]) -> list[list[str]]:
    if "error" in d and "faults" not in d:
        return [["loopback deployment", f"did not complete: {_code(d['error'][:300])}", "—",
                 "—", "—"]]
    f, sees = d.get("faults") or {}, d.get("user_sees") or {}
    rows = []
    a = f.get("node-killed-in-dp-step")
    if a:
        after = (a.get("ledgers_after_round") or {}).get("node-2")
        rows.append([
            f"node 2 SIGKILLed during its DP step (round 1, {a['killed_seconds_after_its_record']}"
            " s after its ledger record), restarted before round 2",
            _outcome(a.get("round_outcome")),
            f"node-2: {_eps_pair(a.get('ledger_at_kill'), after)}; at the end "
            f"{_eps((d.get('ledgers_final') or {}).get('node-2'))}",
            f"coordinator: {_code(sees.get('node-killed-in-dp-step'))}",
            f"{a.get('seconds_to_round_end', 0):.0f}"])
    b = f.get("coordinator-killed-between-rounds")
    if b:
        eps = "<br>".join(f"{n}: {_eps_pair(v, (b.get('ledgers_after_round') or {}).get(n))}"
                          for n, v in (b.get("ledgers_at_kill") or {}).items())
        rows.append([
            "coordinator SIGKILLed between rounds 1 and 2, restarted with the same command",
            f"metrics rounds at the kill {b.get('metrics_rounds_at_kill')}, after "
            f"{b.get('metrics_rounds_after')}; " + _outcome(b.get("round_outcome")),
            eps,
            f"flower.log: {_code(sees.get('coordinator-killed-between-rounds'))}",
            f"{b.get('seconds_to_round_end', 0):.0f}"])
    c = f.get("student-file-corrupt")
    if c:
        rows.append([
            "node 1's `student.pt` overwritten with garbage between rounds 1 and 2",
            _outcome(c.get("round_outcome")) + f"; set aside: {len(c.get('set_aside') or [])}"
            " file(s)",
            f"node-1: {_eps_pair(c.get('ledger_before'), c.get('ledger_after'))}",
            f"node-1 log: {_code(_short(sees.get('student-file-corrupt')))}",
            "—"])
    dd = f.get("coordinator-killed-mid-round")
    if dd:
        eps = "<br>".join(f"{n}: {_eps_pair(v, (dd.get('ledgers_after_round') or {}).get(n))}"
                          for n, v in (dd.get("ledgers_at_kill") or {}).items())
        rows.append([
            "coordinator SIGKILLed in the middle of round 3 (a node's ledger holds round 3, "
            f"checkpoint at round {dd.get('checkpoint_at_kill')}), restarted with the same "
            "command",
            f"metrics rounds at the kill {dd.get('metrics_rounds_at_kill')}, after "
            f"{dd.get('metrics_rounds_after')}; " + _outcome(dd.get("round_outcome"))
            + f"; final exit code {dd.get('final_exit_code')}",
            eps,
            f"flower.log: {_code(sees.get('coordinator-killed-mid-round'))}<br>"
            f"coordinator: {_code(sees.get('coordinator-killed-mid-round/round'))}<br>"
            "node logs: " + (_code(sees.get("coordinator-killed-mid-round/node-log"))
                             if sees.get("coordinator-killed-mid-round/node-log") else
                             "no line (a node logs its decline inside its ClientApp, at INFO, "
                             "which its SuperNode's log does not show)"),
            f"{dd.get('seconds_to_round_end', 0):.0f}"])
    if "error" in d:
        rows.append(["loopback deployment (rest)", f"stopped: {_code(d['error'][:300])}",
                     "—", "—", "—"])
    return rows


def _rows_full_disk(d: dict[str, Any]) -> list[list[str]]:
    before, after = d.get("ledger_before") or {}, d.get("ledger_after") or {}
    whole = (after.get("verifies") and after.get("records") == before.get("records")
             and not d.get("leftover_files"))
    outcome = ("append refused; the ledger verifies with all "
               f"{after.get('records')} records, no temporary file left" if whole else
               f"ledger after: {after}; leftover files {d.get('leftover_files')}")
    retry = d.get("ledger_after_retry") or {}
    outcome += (f"; with room again the same append goes through once "
                f"({retry.get('records')} records)")
    return [["disk full while a ledger record is appended", outcome,
             f"{_eps_pair(before, after)}; after the retry {_eps(retry)}",
             _code((d.get("output") or "")[:200]), f"{d.get('wall_seconds', 0):.1f}"]]


def _notes(data: dict[str, Any]) -> list[str]:
    """Observations read off the JSON (each a bullet)."""
    notes = []
    sc = data.get("scenarios") or {}
    for name in ("dropout-plain", "dropout-secagg"):
        d = sc.get(name)
        if d and (d.get("user_sees") or {}).get("console_failure_lines") == []:
            notes.append(f"- `{name}`: the console output says nothing of the failed client; "
                         "only `flower.log` and the `rejected` entries of `metrics.jsonl` "
                         "do. Its ε is in `summary.json` (recomputed from its ledger), not "
                         "in the ε the round reports (it never replied).")
    dep = (sc.get("deployment") or {}).get("faults") or {}
    mid = dep.get("coordinator-killed-mid-round")
    if mid:
        rnd = mid.get("round")
        dup = [n for n, v in (mid.get("ledgers_after_round") or {}).items()
               if v.get("duplicate_rounds")]
        spent = [n for n, v in (mid.get("ledgers_at_kill") or {}).items()
                 if rnd in (v.get("rounds") or [])]
        later = [n for n, v in (mid.get("ledgers_after_round") or {}).items()
                 if n not in spent and rnd in (v.get("rounds") or [])]
        declined = (mid.get("round_outcome") or {}).get("declined") or []
        notes.append(
            f"- Coordinator killed in the middle of round {rnd}: the nodes whose ledger "
            f"already held round {rnd} when it died: {', '.join(spent) or 'none'}"
            + (f"; {', '.join(later)} recorded it after (its ClientApp finished the step "
               "with the coordinator gone)" if later else "") + ". The "
            f"restarted coordinator resumed from round {mid.get('checkpoint_at_kill')}'s "
            f"checkpoint and ran round {rnd} again; it was answered without a private step "
            f"(`round-already-recorded`) by: {', '.join(declined) or 'none'}. "
            + (f"A ledger holds a round twice: {', '.join(dup)}." if dup else
               "No ledger holds a round twice: that round's ε is counted once, and the "
               "redone round spends none.")
            + f" The metrics hold rounds {mid.get('metrics_rounds_after')}.")
    return notes


def section(data: dict[str, Any]) -> str:
    """The Markdown section (without the markers)."""
    sc = data.get("scenarios") or {}
    rows: list[list[str]] = []
    if "dropout-plain" in sc:
        rows += _rows_dropout(sc["dropout-plain"], "20% of clients (1 of 5) fail after their "
                              "DP step, every round (plain)")
    if "dropout-secagg" in sc:
        rows += _rows_dropout(sc["dropout-secagg"], "20% of clients (1 of 5) fail after their "
                              "DP step, every round (SecAgg+)")
    if "deployment" in sc:
        rows += _rows_deployment(sc["deployment"])
    if "full-disk" in sc:
        rows += _rows_full_disk(sc["full-disk"])
    env = data.get("environment") or {}
    env_line = (f"Environment: torch {env.get('torch')}, flwr {env.get('flwr')}, opacus "
                f"{env.get('opacus')}, Python {env.get('python')}, {env.get('cpu_count')} "
                f"CPU(s) (load average {env.get('load_average_1m')} at the start), device "
                f"{env.get('device')}.")
    # the scenarios' own times (a --only call re-runs some and keeps the others)
    wall = sum(float(d.get("scenario_seconds", d.get("wall_seconds", 0.0)))
               for d in sc.values()) or data.get("wall_seconds")
    return text("ROBUSTNESS/faults.md", command=data.get("command", "python -m bench.faults"),
                env_line=env_line,
                wall=f"{wall / 60:.1f} min" if isinstance(wall, int | float) else "?",
                round_timeout=data.get("round_timeout", "?"),
                table="\n".join("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows),
                notes="\n".join(_notes(data))).strip() + "\n"


def splice(page: str, body: str) -> str:
    """``page`` with the text between the markers replaced by ``body`` (appended with the
    markers when they are absent); nothing else changes."""
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in page and END in page and page.index(BEGIN) < page.index(END):
        head, rest = page.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    sep = "" if page.endswith("\n\n") or not page else ("\n" if page.endswith("\n") else "\n\n")
    return page + sep + block + "\n"


def write_section(doc: Path, data: dict[str, Any]) -> None:
    page = doc.read_text() if doc.exists() else ""
    doc.write_text(splice(page, section(data)))
