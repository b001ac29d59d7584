"""Faults, measured: what a run does when a client, a node or the coordinator fails.

``python -m bench.faults`` runs four scenarios and writes ``bench/results/faults.json``
and the "Faults" section of ``docs/ROBUSTNESS.md`` (between its ``faults`` markers; the
rest of that page belongs to ``simulations/robustness.py``):

1. ``dropout-plain`` / 2. ``dropout-secagg``: ``fedistill simulate --preset quick`` with
   5 clients and ``attack = "raise"`` on 20% of them: client 0 fails after its DP step.
3. ``deployment``: one loopback deployment (``fedistill certs``, ``node-data``,
   ``coordinator``, three ``node`` processes, TLS, SecAgg+, 3 rounds) with, in turn:
   node 2 SIGKILLed during its round-1 DP step (restarted before round 2); the
   coordinator SIGKILLed between rounds 1 and 2 and restarted with the same command,
   node 1's ``student.pt`` overwritten with garbage while it is down; the coordinator
   SIGKILLed in the middle of round 3 (once a node's ledger holds round 3, before its
   checkpoint) and restarted again.
4. ``full-disk``: a ledger append under ``RLIMIT_FSIZE`` (the kernel refuses the write
   part way through, as a full disk does) in a subprocess, on a copy of a real ledger.

For every fault: the round outcome (replies / sampled, reason codes), ε before and after
recomputed from the ledgers (never read from a log), what the user sees (a line of the
output or a log), and wall seconds. Every process is started here, on 127.0.0.1, and
stopped here by PID whatever happens.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.faults_page import write_section
from common.environment import environment
from common.privacy.accounting import epsilon_from_events
from common.privacy.ledger import PrivacyLedger
from common.privacy.policy import Refusal
from simulations.runner import free_port
from simulations.supervise import (
    FEDISTILL,
    ROOT,
    Processes,
    checkpoint_round,
    flower_env,
    ledger_size,
    metrics,
    wait_for,
)

DELTA = 1e-5
ROUND_TIMEOUT = 90.0
CODES = [v for k, v in vars(Refusal).items() if k.isupper()]


# ------------------------------------------------------------------------ reading
def reason_code(text: str) -> str:
    """A short code for a rejected reply's reason (the full text can be a traceback)."""
    if re.search(r"client\(s\) dropped out of SecAgg\+", text):
        return "secagg-dropout"
    for code in CODES:
        if code in text:
            return code
    if "Node Unavailable" in text:
        return "node-unavailable"
    if "no reply" in text:
        return "no-reply"
    return text.strip().splitlines()[0][:60] if text.strip() else "?"


def round_outcomes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: replies / sampled, reason codes of the rejected, the declined, seconds."""
    out = []
    for r in records:
        if r.get("round", 0) < 1:
            continue
        out.append({"round": r["round"], "sampled": r.get("sampled"),
                    "replies": r.get("replies"),
                    "rejected": dict(Counter(reason_code(x.get("reason", ""))
                                             for x in r.get("rejected") or [])),
                    "declined": list(r.get("declined") or []),
                    "seconds": round(float(r.get("seconds", 0.0)), 1)})
    return out


def ledger_view(path: Path) -> dict[str, Any]:
    """What a ledger holds: rounds (by run), ε recomputed from its events, whether it
    verifies. Never raises: an unreadable ledger is reported as such."""
    ledger = PrivacyLedger(path)
    if not path.exists():
        return {"records": 0, "rounds": [], "epsilon": 0.0, "verifies": True}
    try:
        records = ledger.records()
    except Exception as exc:  # a LedgerError is a finding, not a crash of the script
        return {"records": None, "rounds": [], "epsilon": None, "verifies": False,
                "error": str(exc)[:300]}
    rounds = [r.round for r in records]
    keys = [(r.run_id, r.round) for r in records]
    return {"records": len(records), "rounds": rounds,
            "epsilon": round(epsilon_from_events([r.event for r in records], delta=DELTA,
                                                 accountant="rdp"), 4) if records else 0.0,
            "duplicate_rounds": len(keys) != len(set(keys)), "verifies": True}


def console_line(text: str, pattern: str) -> str | None:
    """The first console line matching ``pattern`` with the lines Rich wrapped off it (a
    log file is not a terminal: Rich wraps at 80 columns)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).rstrip() for ln in text.splitlines()]
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            rest = []
            for nxt in lines[i + 1:]:
                if not nxt.strip() or re.match(r"(round \d+:|\s*[┏┃┡│└]|\s*\S+ · )", nxt):
                    break
                rest.append(nxt.strip())
            return " ".join([line.strip(), *rest])[:220]
    return None


def first_line(text: str, *patterns: str) -> str | None:
    """The first line of ``text`` matching one of ``patterns`` (regexes), without ANSI
    colours, timestamp or this checkout's path, cut to 220 characters."""
    for line in text.splitlines():
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if any(re.search(p, clean) for p in patterns):
            clean = re.sub(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:", "", clean)  # a timestamp
            return clean.replace(str(ROOT) + "/", "")[:220]
    return None


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# ------------------------------------------------------------------------ 1-2 dropouts
def dropout(work: Path, *, secure: bool) -> dict[str, Any]:
    """A simulation in which the first 20% of 5 clients fail after their DP step."""
    name = "dropout-secagg" if secure else "dropout-plain"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    settings = ["--set", "num-clients=5", "--set", "attack=raise", "--set",
                "attack-fraction=0.2"]
    if secure:
        settings += ["--set", "secure-aggregation=true"]
    cmd = [FEDISTILL, "simulate", "--preset", "quick", *settings, "--out", str(out)]
    env = flower_env(work / "flwr-home")
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200, stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - t0
    records = metrics(out)
    summary = json.loads(_read(out / "summary.json") or "{}")
    everyone = sorted((summary.get("privacy") or {}).get("epsilon_per_client") or {})
    replied = {c for r in records for c in (r.get("epsilon") or {})}
    dropped = [c for c in everyone if c not in replied]
    ledgers = {c: ledger_view(out / "clients" / c / "ledger.jsonl") for c in everyone}
    honest = next((c for c in everyone if c in replied), None)
    last = records[-1] if records else {}
    console = done.stdout + done.stderr
    flower = _read(out / "flower.log")
    return {
        "scenario": name, "command": " ".join(["fedistill", *cmd[1:-2], "--out", str(out)]),
        "exit_code": done.returncode, "wall_seconds": round(seconds, 1),
        "rounds": round_outcomes(records),
        "dropped": dropped,
        "dropped_ledgers": {c: ledgers[c] for c in dropped},
        "honest_client": honest,
        "honest_ledger": ledgers.get(honest) if honest else None,
        "reported_epsilon_max": last.get("epsilon_max"),
        "summary_epsilon": (summary.get("privacy") or {}).get("epsilon_per_client"),
        "user_sees": {
            "console_failure_lines": [ln.strip()[:200] for ln in console.splitlines()
                                      if re.search(r"client-\d|round-failed|reject|dropped",
                                                   ln)][:5],
            "console": first_line(console, r"^round \d+:", r"ε max"),
            "flower_log": first_line(flower, r"the round fails", r"dropped out"),
            "coordinator": first_line(flower, r"Round \d+: teacher .* replies \d+/\d+"),
        },
    }


# ------------------------------------------------------------------------ 3 deployment
class Deployment:
    """One loopback deployment (3 nodes, SecAgg+, 3 rounds) and the faults put into it."""

    def __init__(self, work: Path, *, fresh: bool = True) -> None:
        self.root = work / "deployment"
        if fresh:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
        self.run = self.root / "run"
        self.procs = Processes(self.root)
        self.logs: dict[str, Path] = {}
        self.certs, self.data = self.root / "certs", self.root / "data"
        self.port = free_port()
        self.coordinator_cmd = [
            FEDISTILL, "coordinator", "--certs", str(self.certs), "--port", str(self.port),
            "--preset", "quick", "--out", str(self.run),
            "--set", "rounds=3", "--set", f"round-timeout={ROUND_TIMEOUT}",
            "--set", "evaluate-every=3", "--set", "secure-aggregation=true",
            *[a for k in range(3) for a in ("--nodes-keys", str(self.certs / "nodes" /
                                                               f"node-{k}.pub"))]]

    def node_cmd(self, k: int) -> list[str]:
        return [FEDISTILL, "node", "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self.certs / "ca.crt"),
                "--key", str(self.certs / "nodes" / f"node-{k}"),
                "--data-dir", str(self.data / f"node-{k}"),
                "--state-dir", str(self.state(k)), "--epsilon", "8", "--partition-id", str(k),
                "--num-partitions", "3", "--local-port", str(free_port())]

    def state(self, k: int) -> Path:
        return self.root / f"state-{k}"

    def ledgers(self) -> dict[str, dict[str, Any]]:
        return {f"node-{k}": ledger_view(self.state(k) / "ledger.jsonl") for k in range(3)}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.logs[name] = self.root / f"{name}.log"
        return self.procs.start(name, cmd, self.logs[name])

    def log(self, name: str) -> str:
        return _read(self.logs[name]) if name in self.logs else ""

    def diagnose(self) -> str:
        parts = [f"--- {n} ---\n{self.log(n)[-2000:]}" for n in self.logs]
        parts.append(f"--- flower.log ---\n{_read(self.run / 'flower.log')[-3000:]}")
        return "\n".join(parts)

    def fedistill(self, *args: str) -> None:
        done = subprocess.run([FEDISTILL, *args], cwd=ROOT, env=self.procs.env,
                              capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"fedistill {' '.join(args)} exited {done.returncode}: "
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def restart_coordinator(self, name: str) -> subprocess.Popen:
        proc = self.start(name, self.coordinator_cmd)
        wait_for(f"{name} to register node-2", lambda: "node-2" in self.log(name), 180,
                 self.diagnose, proc)
        return proc

    def scenario(self) -> dict[str, Any]:  # noqa: PLR0915 - one timeline, read top down
        """The whole timeline; returns what was measured at each fault and at the end."""
        out: dict[str, Any] = {"scenario": "deployment", "faults": {}}
        faults = out["faults"]
        t_start = time.monotonic()
        self.fedistill("certs", "--out", str(self.certs), "--nodes", "3")
        self.fedistill("node-data", "--preset", "quick", "--out", str(self.data))
        coordinator = self.restart_coordinator("coordinator")
        for k in range(3):
            self.start(f"node-{k}", self.node_cmd(k))

        # --- fault A: node 2 SIGKILLed during its round-1 DP step (its ledger record is
        # appended right before DP-SGD starts)
        ledger2 = PrivacyLedger(self.state(2) / "ledger.jsonl")
        wait_for("node 2's round-1 ledger record", lambda: ledger_size(ledger2) >= 1, 900,
                 self.diagnose, coordinator, interval=0.05)
        t_fault = time.monotonic()
        self.procs.sigkill_tree("node-2")
        at_kill = self.ledgers()
        stamp = ledger2.records()[-1].timestamp
        after_record = time.time() - datetime.fromisoformat(stamp).timestamp()
        wait_for("round 1's checkpoint", lambda: checkpoint_round(self.run) >= 1, 900,
                 self.diagnose, coordinator)
        faults["node-killed-in-dp-step"] = {
            "round": 1, "node": "node-2", "ledger_at_kill": at_kill["node-2"],
            "ledgers_after_round": self.ledgers(), "round_outcome": round_outcomes(
                metrics(self.run))[0], "seconds_to_round_end": round(
                time.monotonic() - t_fault, 1),
            "killed_seconds_after_its_record": round(after_record, 2)}

        # --- fault B: the coordinator SIGKILLed between rounds 1 and 2 (its whole tree);
        # fault C: node 1's student.pt overwritten with garbage while it is down
        self.procs.sigkill_tree("coordinator")
        t_fault = time.monotonic()
        b = {"round": "between 1 and 2", "exit_code": coordinator.returncode,
             "metrics_rounds_at_kill": [r["round"] for r in metrics(self.run)],
             "ledgers_at_kill": self.ledgers()}
        student = self.state(1) / "student.pt"
        c = {"round": 2, "node": "node-1", "student_existed": student.exists(),
             "ledger_before": self.ledgers()["node-1"]}
        garbage = student.with_name("student.pt.garbage")
        garbage.write_bytes(b"\x00not a torch file\xff" * 64)
        garbage.replace(student)
        coordinator = self.restart_coordinator("coordinator-restart-1")
        self.start("node-2-restart", self.node_cmd(2))
        wait_for("round 2's checkpoint", lambda: checkpoint_round(self.run) >= 2, 900,
                 self.diagnose, coordinator)
        recs = metrics(self.run)
        b.update({"metrics_rounds_after": [r["round"] for r in recs],
                  "round_outcome": round_outcomes(recs)[1],
                  "ledgers_after_round": self.ledgers(),
                  "seconds_to_round_end": round(time.monotonic() - t_fault, 1)})
        faults["coordinator-killed-between-rounds"] = b
        c.update({"round_outcome": round_outcomes(recs)[1],
                  "ledger_after": self.ledgers()["node-1"],
                  "set_aside": sorted(p.name for p in self.state(1).glob(
                      "student.pt.unreadable-*"))})
        faults["student-file-corrupt"] = c

        # --- fault D: the coordinator SIGKILLed in the middle of round 3: once a node's
        # ledger holds round 3, before round 3's checkpoint
        paths = [PrivacyLedger(self.state(k) / "ledger.jsonl") for k in range(3)]
        before = {k: ledger_size(p) for k, p in enumerate(paths)}
        wait_for("a node's round-3 ledger record",
                 lambda: any(ledger_size(p) > before[k] for k, p in enumerate(paths)), 900,
                 self.diagnose, coordinator, interval=0.1)
        d: dict[str, Any] = {"round": 3, "checkpoint_at_kill": checkpoint_round(self.run)}
        self.procs.sigkill_tree("coordinator-restart-1")
        t_fault = time.monotonic()
        d.update({"exit_code": coordinator.returncode, "ledgers_at_kill": self.ledgers(),
                  "metrics_rounds_at_kill": [r["round"] for r in metrics(self.run)]})
        coordinator = self.restart_coordinator("coordinator-restart-2")
        try:
            d["final_exit_code"] = coordinator.wait(timeout=900)
        except subprocess.TimeoutExpired:
            d["final_exit_code"] = None  # the run did not finish: a finding
        recs = metrics(self.run)
        d.update({"metrics_rounds_after": [r["round"] for r in recs],
                  "round_outcome": round_outcomes(recs)[-1] if recs else None,
                  "ledgers_after_round": self.ledgers(),
                  "seconds_to_round_end": round(time.monotonic() - t_fault, 1)})
        faults["coordinator-killed-mid-round"] = d

        out["rounds"] = round_outcomes(recs)
        summary = json.loads(_read(self.run / "summary.json") or "{}")
        out["summary_epsilon"] = (summary.get("privacy") or {}).get("epsilon_per_client")
        out["reported_epsilon_last_round"] = recs[-1].get("epsilon") if recs else None
        out["ledgers_final"] = self.ledgers()
        out["wall_seconds"] = round(time.monotonic() - t_start, 1)
        out["user_sees"] = self.user_sees()
        return out

    def user_sees(self) -> dict[str, str | None]:
        """The lines a user reads about each fault: the coordinator's console (one line a
        round), flower.log, the node's own log."""
        flower = _read(self.run / "flower.log")
        final = self.log("coordinator-restart-2")
        return {
            "node-killed-in-dp-step": console_line(self.log("coordinator"), r"^round 1:"),
            "node-killed-in-dp-step/flower": first_line(flower, r"Round 1: teacher"),
            "coordinator-killed-between-rounds": first_line(flower, r"Resuming run .* after "
                                                            r"round 1 "),
            "student-file-corrupt": first_line(self.log("node-1"), r"does not load"),
            "coordinator-killed-mid-round": first_line(flower, r"Resuming run .* after "
                                                       r"round 2 "),
            "coordinator-killed-mid-round/round": console_line(final, r"^round 3:"),
            # a node's "declines the private step" line is at INFO in its ClientApp
            # process, which the SuperNode's log does not show
            "coordinator-killed-mid-round/node-log": first_line(
                "\n".join(self.log(n) for n in ("node-0", "node-1", "node-2-restart")),
                Refusal.ALREADY_SPENT, r"declines the private step"),
        }


def deployment(work: Path) -> dict[str, Any]:
    dep = Deployment(work)
    try:
        result = dep.scenario()
    except Exception as exc:  # a fault that hangs or crashes the run is a result too
        result = {"scenario": "deployment", "error": f"{type(exc).__name__}: {exc}"[:4000]}
    finally:
        dep.procs.stop_all()
    result["logs"] = {n: str(p) for n, p in dep.logs.items()}
    return result


# ------------------------------------------------------------------------ 4 full disk
_FULL_DISK_APPEND = """
import resource, signal, sys
from common.errors import LedgerError
from common.privacy.accounting import DpEvent
from common.privacy.ledger import PrivacyLedger
ledger = PrivacyLedger(sys.argv[1])
last = ledger.records()[-1]
# a real failing write(2): beyond RLIMIT_FSIZE the kernel answers EFBIG part way through
# the new ledger, as a full disk answers ENOSPC (SIGXFSZ ignored so the write returns)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    ledger.append(run_id=last.run_id, round=last.round + 1, client_id=last.client_id,
                  event=last.event, accountant=last.accountant, delta=last.delta)
    print("appended")
except LedgerError as exc:
    print("refused:", exc)
"""


def full_disk(work: Path, source: Path | None) -> dict[str, Any]:
    """A ledger append that hits a full disk, on a copy of a real ledger."""
    folder = work / "full-disk"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "ledger.jsonl"
    if source is not None and source.exists():
        shutil.copyfile(source, path)
    else:  # no simulation ran: a ledger of two rounds written here
        from common.privacy.accounting import DpEvent

        for rnd in (1, 2):
            PrivacyLedger(path).append(run_id="r", round=rnd, client_id="c", event=DpEvent(
                1.0, 0.01, 100), accountant="rdp", delta=DELTA)
    before = ledger_view(path)
    size = path.stat().st_size
    t0 = time.monotonic()
    # the old ledger fits, the new one (old + one line) does not: the write fails mid-line
    done = subprocess.run([sys.executable, "-c", _FULL_DISK_APPEND, str(path),
                           str(size + 40)], cwd=ROOT, env=flower_env(work / "flwr-home"),
                          capture_output=True, text=True, timeout=120, check=False)
    after = ledger_view(path)
    leftovers = sorted(p.name for p in folder.iterdir()
                       if p.name not in ("ledger.jsonl", "ledger.jsonl.lock"))
    # with room again the same append goes through, once
    retry = subprocess.run([sys.executable, "-c", _FULL_DISK_APPEND, str(path),
                            str(10 * size + 10_000)], cwd=ROOT,
                           env=flower_env(work / "flwr-home"), capture_output=True,
                           text=True, timeout=120, check=False)
    return {"scenario": "full-disk", "source": str(source) if source else None,
            "exit_code": done.returncode,
            "output": (done.stdout + done.stderr).strip().replace(str(ROOT) + "/", "")[:600],
            "ledger_before": before, "ledger_after": after, "leftover_files": leftovers,
            "retry_output": retry.stdout.strip()[:200], "ledger_after_retry": ledger_view(path),
            "wall_seconds": round(time.monotonic() - t0, 1)}


# ------------------------------------------------------------------------ main
SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "dropout-plain": lambda w: dropout(w, secure=False),
    "dropout-secagg": lambda w: dropout(w, secure=True),
    "deployment": deployment,
    "full-disk": lambda w: full_disk(
        w, w / "dropout-plain" / "clients" / "client-1" / "ledger.jsonl"),
}


def _without_only(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--only="):
            skip = False
            continue
        if a == "--only":
            skip = True
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-json", type=Path, default=ROOT / "bench/results/faults.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/ROBUSTNESS.md")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs/faults")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help="comma-separated scenarios (default: all)")
    parser.add_argument("--render-only", action="store_true",
                        help="only render --out-json into --doc")
    parser.add_argument("--reread-logs", action="store_true",
                        help="read 'what the user sees' again from the last deployment's "
                        "logs in --work-dir (its numbers stay as measured), then render")
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    if args.reread_logs:
        data = json.loads(args.out_json.read_text())
        dep = Deployment(args.work_dir, fresh=False)
        dep.logs = {n: Path(p) for n, p in data["scenarios"]["deployment"]["logs"].items()}
        data["scenarios"]["deployment"]["user_sees"] = dep.user_sees()
        args.out_json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        args.render_only = True
    if not args.render_only:
        env = environment("cpu")
        print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
        given = sys.argv[1:] if argv is None else list(argv)
        old = json.loads(args.out_json.read_text()) if args.out_json.exists() else {}
        results = dict(old.get("scenarios") or {})
        for name in args.only.split(","):
            print(f"--- {name}", flush=True)
            t = time.monotonic()
            results[name] = SCENARIOS[name](args.work_dir)
            results[name]["scenario_seconds"] = round(time.monotonic() - t, 1)
            print(f"    {time.monotonic() - t:.0f}s", flush=True)
        data = {"benchmark": "faults", "environment": env,
                "command": "python -m bench.faults " + " ".join(_without_only(given)),
                # each call that produced a part of this file (--only runs a subset)
                "calls": [*(old.get("calls") or []), "python -m bench.faults " + " ".join(given)],
                "wall_seconds": round(sum(r.get("scenario_seconds", r.get("wall_seconds", 0.0))
                                          for r in results.values()), 1),
                "round_timeout": ROUND_TIMEOUT,
                "scenarios": results}
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    data = json.loads(args.out_json.read_text())
    write_section(args.doc, data)
    print(f"wrote {args.out_json} and the Faults section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
