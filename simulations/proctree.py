"""The processes of a Flower run: who belongs to it, what it uses, how to follow and stop it.

A run is a process tree that a process group alone does not hold: Flower's SuperExec
starts Ray in a session of its own, and Ray's daemons outlive their parent. So a run's
tree is its root, every descendant, and every process in a session one of them leads.
The simulation runner, the deployment and the scale benchmark all use this one view.
Descendants, memory (PSS where the platform reports it), CPU time and command lines come
from psutil, which copes with processes vanishing mid-read; sessions come from
``os.getsid``, which psutil does not expose. Runs are supported on Linux only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

MIB = 2**20


# --------------------------------------------------------------------------- the tree
def _sid(pid: int) -> int | None:
    """``pid``'s session; None when it is gone."""
    try:
        return os.getsid(pid)
    except OSError:
        return None


def tree_members(root: int, sessions: set[int]) -> set[int]:
    """``root``, its descendants, zombies included, and every process of a session they lead.

    ``sessions`` collects the session leaders seen so far (a sampler keeps it across
    samples, so a daemon whose leader has exited is still counted)."""
    tree = {root}
    with contextlib.suppress(psutil.Error):
        tree |= {p.pid for p in psutil.Process(root).children(recursive=True)}
    sessions |= {p for p in tree if p != root and _sid(p) == p}
    return tree | ({pid for pid in psutil.pids() if _sid(pid) in sessions} if sessions
                   else set())


def process_tree(root: int) -> set[int]:
    """``root``, its descendants, and every process in a session one of them leads."""
    return tree_members(root, {root} if _sid(root) == root else set())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie is dead
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and everything it started (by PID): SIGTERM, then SIGKILL."""
    targets = process_tree(proc.pid) if proc.poll() is None else set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in targets):
            time.sleep(0.2)
        if not any(alive(p) for p in targets):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


# --------------------------------------------------------------------------- one process
def process_kind(pid: int) -> str:
    """A short name for grouping: the Python script, Ray's process title, or the binary."""
    try:
        args = [a for a in psutil.Process(pid).cmdline() if a]
    except psutil.Error:
        return "?"
    if not args:
        return "?"
    if args[0].startswith("ray::"):  # ray::ClientAppActor.run, ray::IDLE, ray::DashboardAgent
        return args[0].split()[0].split(".")[0]
    name = Path(args[0].split()[0]).name
    if name.startswith("python"):
        rest = iter(args[1:])
        for a in rest:
            if a == "-c":
                return "python -c"
            if a == "-m":
                return next(rest, "python -m")
            if not a.startswith("-"):
                return Path(a).name
    return name


def usage(pid: int) -> tuple[float, int, int] | None:
    """``pid``'s user + system CPU seconds, RSS and PSS (0 where the platform or
    permissions do not tell it); None when it is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            t, rss = proc.cpu_times(), proc.memory_info().rss
            try:
                pss = getattr(proc.memory_full_info(), "pss", 0)
            except psutil.AccessDenied:
                pss = 0
    except psutil.Error:
        return None
    return t.user + t.system, rss, pss


# --------------------------------------------------------------------------- sampling
@dataclass
class TreeSampler:
    """Samples a process tree from a thread: summed RSS and PSS (peaks), and CPU seconds.

    The tree is the living processes of :func:`tree_members` of ``root``; ``root`` itself
    is counted only with ``include_root``. CPU time is each process's user+system time as
    last seen, so a process that exits keeps what it used up to its last sample. Use as a
    context manager; :meth:`sample` may also be called directly.
    """

    root: int = field(default_factory=os.getpid)
    interval: float = 0.5
    include_root: bool = False
    peak_rss: int = 0
    peak_pss: int = 0
    peak_procs: int = 0
    samples: int = 0
    load: list[float] = field(default_factory=list)  # 1-minute load average per sample
    series: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, rss, pss, n
    kind_peak_rss: dict[str, int] = field(default_factory=dict)
    kind_peak_pss: dict[str, int] = field(default_factory=dict)
    _cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid -> (kind, seconds)
    _kinds: dict[int, str] = field(default_factory=dict)  # pid -> last readable kind
    _sessions: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def members(self) -> set[int]:
        tree = {p for p in tree_members(self.root, self._sessions) if alive(p)}
        if not self.include_root:
            tree.discard(self.root)
        return tree

    def sample(self) -> tuple[int, int, int]:
        """One sample: (RSS sum, PSS sum, process count); updates peaks and CPU time."""
        with self._lock:
            rss_kind, pss_kind, counted = self._read(self.members())
            rss, pss = sum(rss_kind.values()), sum(pss_kind.values())
            self._record(rss_kind, pss_kind, rss, pss, counted)
            return rss, pss, counted

    def _read(self, pids: set[int]) -> tuple[dict[str, int], dict[str, int], int]:
        """Memory by process kind and the processes counted; keeps their CPU time."""
        rss_kind: dict[str, int] = {}
        pss_kind: dict[str, int] = {}
        own = process_kind(self.root)
        counted = 0
        for pid in pids:
            # Read every time: a fork becomes another program at exec, and a Ray
            # worker's title changes (ray::IDLE -> ray::ClientAppActor).
            kind = process_kind(pid)
            if kind == "?":  # exiting: its cmdline is gone, its CPU time still counts
                kind = self._kinds.get(pid, kind)
            self._kinds[pid] = kind
            if pid != self.root and kind == own:
                continue  # a fork of the driver not yet exec'd: its pages are the driver's
            read = usage(pid)
            if read is None:  # gone since the tree was read: keeps its last CPU time
                continue
            cpu, rss, pss = read
            self._cpu[pid] = (kind, cpu)
            counted += 1
            rss_kind[kind] = rss_kind.get(kind, 0) + rss
            pss_kind[kind] = pss_kind.get(kind, 0) + pss
        return rss_kind, pss_kind, counted

    def _record(self, rss_kind: dict[str, int], pss_kind: dict[str, int], rss: int, pss: int,
                counted: int) -> None:
        for kind in rss_kind:
            self.kind_peak_rss[kind] = max(self.kind_peak_rss.get(kind, 0), rss_kind[kind])
            self.kind_peak_pss[kind] = max(self.kind_peak_pss.get(kind, 0), pss_kind[kind])
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, counted)
        self.samples += 1
        self.load.append(os.getloadavg()[0])
        t = time.monotonic() - self._t0
        if not self.series or t - self.series[-1][0] >= 5.0:  # a coarse trace
            self.series.append((round(t, 1), rss, pss, counted))

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used by the tree so far, as last sampled."""
        with self._lock:
            return sum(t for _, t in self._cpu.values())

    def cpu_by_kind(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {}
            for kind, t in self._cpu.values():
                out[kind] = out.get(kind, 0.0) + t
            return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a process vanishing mid-read is normal
                self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        """Peaks (MiB), CPU seconds, per-kind breakdown, load and a coarse trace."""
        kinds = sorted(self.kind_peak_pss, key=lambda k: -self.kind_peak_pss[k])
        cpu = self.cpu_by_kind()
        return {
            "peak_rss_mb": round(self.peak_rss / MIB, 1),
            "peak_pss_mb": round(self.peak_pss / MIB, 1),
            "peak_processes": self.peak_procs,
            "samples": self.samples,
            "cpu_s": round(self.cpu_seconds(), 1),
            "by_kind": {k: {"peak_rss_mb": round(self.kind_peak_rss[k] / MIB, 1),
                            "peak_pss_mb": round(self.kind_peak_pss[k] / MIB, 1),
                            "cpu_s": round(cpu.get(k, 0.0), 1)} for k in kinds},
            "load_average_1m": {"mean": round(sum(self.load) / len(self.load), 2),
                                "max": round(max(self.load), 2)} if self.load else None,
            "trace": [{"t": t, "rss_mb": round(r / MIB, 1), "pss_mb": round(p / MIB, 1),
                       "processes": n} for t, r, p, n in self.series],
        }


# --------------------------------------------------------------------------- a run
def wait_healthy(proc: subprocess.Popen, url: str, log_path: Path, *,
                 error: Callable[[str], Exception], timeout: float = 60.0,
                 verify: Any = False,
                 on_http_error: Callable[[httpx.HTTPError], None] | None = None) -> None:
    """Wait until the SuperLink ``proc`` answers ``url`` (its /health) from its own
    listening socket; raise ``error`` with the cause when it exits first or stays silent
    for ``timeout`` seconds. ``on_http_error`` may raise at once for a failure that
    waiting cannot fix."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"flower-superlink exited with {proc.returncode}: "
                        f"{tail(log_path)}; see {log_path}")
        try:
            # The answer counts only from ``proc``: another SuperLink on the same port
            # would answer too while ``proc`` dies of "address already in use".
            if httpx.get(url, timeout=2, verify=verify).is_success and \
                    listens_on(proc.pid, port_of(url)):
                return
        except httpx.HTTPError as exc:
            last = exc
            if on_http_error is not None:
                on_http_error(exc)
        time.sleep(0.3)
    raise error(f"flower-superlink did not answer on {url} within {timeout}s ({last}); "
                f"see {log_path}")


def port_of(url: str) -> int:
    return int(httpx.URL(url).port or 0)


def listens_on(root: int, port: int) -> bool:
    """Whether ``root`` or a process of its tree listens on TCP ``port``."""
    for pid in process_tree(root):
        with contextlib.suppress(psutil.Error):
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections("tcp")):
                return True
    return False


def follow_run(cmd: list[str], env: dict[str, str], out: Path, *, verbose: bool = False,
               on_record: Callable[[dict[str, Any]], None] | None = None,
               timeout: float | None = None,
               error: Callable[[str], Exception] = RuntimeError) -> int:
    """Run ``flwr run``; hand each new round of ``out/metrics.jsonl`` to ``on_record`` as
    it lands. Returns the exit code; raises ``error`` past ``timeout`` seconds. The run's
    whole process tree is stopped however it ends."""
    log_path = out / "flower.log"
    metrics = out / "metrics.jsonl"
    seen = -1  # the last round handed on; a resumed run shows its earlier rounds first
    deadline = time.monotonic() + timeout if timeout else None
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=None if verbose else log_file,
                                stderr=None if verbose else subprocess.STDOUT,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                seen = feed_records(metrics, seen, on_record)
                if deadline and time.monotonic() > deadline:
                    raise error(f"the simulation ran past {timeout}s; see {log_path}")
                time.sleep(0.5)
            feed_records(metrics, seen, on_record)
        finally:
            stop_process_group(proc)
    return proc.returncode


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def feed_records(metrics: Path, seen: int,
                 on_record: Callable[[dict[str, Any]], None] | None) -> int:
    """Hand on records of rounds after ``seen``; by round, as a resume rewrites the file."""
    for line in _lines(metrics):
        record = json.loads(line)
        if record.get("round", -1) > seen:
            seen = record["round"]
            if on_record is not None:
                on_record(record)
    return seen


def tail(path: Path, n: int = 3) -> str:
    """The last ``n`` lines of a log, joined on one line."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(lines[-n:])
