"""Smoke tests of the benchmark tooling: the byte arithmetic and the page renderer.

Benchmarks are not tests: nothing here runs a benchmark or asserts anything about time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import (
    communication,
    dp_cost,
    privacy_utility_grid,
    privacy_utility_page,
    render,
    scale,
    scale_page,
    scale_rows,
)
from common.distill.codec import encode_knowledge, payload_nbytes
from simulations.proctree import TreeSampler

ROOT = Path(__file__).resolve().parent.parent



WEIGHTS = 451_202 * 4  # the tiny transformer student in float32


def test_fd_bytes_follow_the_codec() -> None:
    """Down = knowledge + int64 indices, up = knowledge, as the codec counts them."""
    b = communication.fd_round_bytes(2000, 2, "float16")
    probs = communication._probs(2000, 2)
    assert b["up"] == payload_nbytes(encode_knowledge(probs, "float16")) == 2000 * 2 * 2
    assert b["down"] == b["up"] + 2000 * 8


def test_communication_table_ratios() -> None:
    table = communication.communication_table(rows=2000, num_classes=2, topk=2,
                                              weight_bytes=WEIGHTS)
    by = {r["method"]: r for r in table}
    assert by["FD float32"]["bytes_up"] == 16_000
    assert by["FD int8"]["bytes_up"] == 2000 * 2 + 2000 * 4  # codes + float32 row scales
    assert by["FD topk (k=2)"]["bytes_up"] == 2000 * 2 * (2 + 2)  # int16 index + fp16 value
    assert by["FD topk (k=1)"]["bytes_up"] == 2000 * (2 + 2)
    assert by["FedAvg"]["bytes_up"] == by["DP-FedAvg"]["bytes_down"] == WEIGHTS
    assert by["FD float16"]["uplink_ratio_fedavg_over_fd"] == pytest.approx(WEIGHTS / 8000)


def _dp_rows() -> list[dict]:
    rows = []
    for mode, thr, mem in (("non-private", 1.0, 1.0), ("hooks", 0.3, 5.0), ("ghost", 0.5, 1.1)):
        rows.append({"family": "transformer", "batch_size": 64, "mode": mode, "params": 10,
                     "samples_per_s": 100 * thr, "throughput_ratio": thr,
                     "throughput_ratio_range": [thr, thr], "peak_bytes": int(mem * 2**20),
                     "memory_ratio": mem})
    return rows


def test_render_tiny_results(tmp_path: Path) -> None:
    env = {"cpu_count": 2, "torch_threads": 1, "torch": "x", "opacus": "y", "flwr": "z",
           "device": "cpu", "python": "3"}
    dp = {"benchmark": "dp_cost", "command": "c", "environment": env, "wall_seconds": 1,
          "settings": {"families": ["transformer"], "quick": False}, "rows": _dp_rows()}
    dp["target"] = dp_cost.evaluate_target(dp["rows"], dp_cost.torch.device("cpu"))
    comm_rows = communication.communication_table(rows=20, num_classes=2, topk=2,
                                                  weight_bytes=WEIGHTS)
    comm = {"benchmark": "communication", "command": "c", "environment": env, "rows": comm_rows,
            "settings": {"public_batch": 20, "num_classes": 2, "student_parameters": 451_202,
                         "student_weight_bytes": WEIGHTS,
                         "student": {"family": "transformer", "size": "tiny"}}}
    results = tmp_path / "results"
    results.mkdir()
    (results / "dp_cost.json").write_text(json.dumps(dp))
    (results / "communication.json").write_text(json.dumps(comm))
    (results / "default.json").write_text(json.dumps({"rows": []}))  # bench/results.py
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    render.main(["--results", str(results), "--doc", str(doc)])
    text = doc.read_text()
    assert "| transformer | 64 | ghost |" in text
    assert "Target met: no" in text  # ghost is 0.5x < 0.6x
    assert "| FD float16 |" in text and "Not yet measured" in text
    assert "`default.json`" in text
    assert (doc.parent / "bench_dp_cost.png").stat().st_size > 0
    assert (doc.parent / "bench_communication.png").stat().st_size > 0


# ------------------------------------------------------------------ privacy-utility


def _fd_row(method: str, budget: float, student: float, teacher: float, *, dp: bool = True,
            seed: int = 0, rounds: int = 5) -> dict:
    return {"method": method, "seed": seed, "dataset": "rotten-tomatoes", "rounds": rounds,
            "clients": 10, "privacy": {"budget": budget, "epsilon_max": budget, "dp": dp},
            "final": {"student_accuracy_mean": student, "teacher_accuracy": teacher,
                      "ensemble_accuracy": student}}


def _pu_data(dp_fedavg: dict[str, float]) -> dict:
    rows = [{"preset": "default", "method": "dp-fedavg", "epsilon_key": k, "accuracy": v}
            for k, v in dp_fedavg.items()]
    rows.append({"preset": "default", "method": "local-only", "epsilon_key": "1",
                 "error": "RuntimeError: boom"})
    return {"benchmark": "privacy-utility", "command": "c", "wall_seconds": 1,
            "environment": {"cpu_count": 16, "torch": "x", "opacus": "y", "flwr": None,
                            "device": "cuda"},
            "settings": {"presets": ["default"], "epsilons": [1.0, 3.0, 8.0, None],
                         "seed": 0, "workers": 2, "quick": False,
                         "configs": {"default": {"dataset": "rotten-tomatoes", "rounds": 5,
                                                 "clients": 10}}},
            "rows": rows, "pending": [{"preset": "default", "method": "centralized-dp",
                                       "epsilon_key": "3"}]}


def test_privacy_utility_reads_fd_rows() -> None:
    """FD cells: private rows by budget, non-private-fd at ∞; other settings ignored."""
    rows = [_fd_row("federated-distillation", 8.0, 0.62, 0.63),
            _fd_row("federated-distillation", 1.0, 0.50, 0.51, rounds=1),  # not the preset
            _fd_row("federated-distillation", 3.0, 0.55, 0.56, seed=1),  # other seed
            _fd_row("non-private-fd", 8.0, 0.64, 0.66, dp=False),
            _fd_row("public-only", 8.0, 0.9, 0.9),
            _fd_row("fedavg", 8.0, 0.9, 0.9, dp=False)]
    cells = privacy_utility_grid.fd_cells(rows, "default", {"dataset": "rotten-tomatoes",
                                                       "rounds": 5, "clients": 10}, 0)
    assert set(cells) == {"8", "inf"}
    assert cells["8"]["student_accuracy_mean"] == 0.62 and cells["8"]["teacher_accuracy"] == 0.63
    assert cells["inf"]["student_accuracy_mean"] == 0.64 and cells["inf"]["epsilon"] is None


def test_privacy_utility_targets() -> None:
    """Targets are computed from the cells; a missing cell leaves a target undecided."""
    data = _pu_data({"1": 0.55, "3": 0.60, "8": 0.61, "inf": 0.70})
    fd = {"rows": [_fd_row("federated-distillation", 8.0, 0.62, 0.63),
                   _fd_row("federated-distillation", 1.0, 0.56, 0.57),
                   _fd_row("non-private-fd", 8.0, 0.64, 0.66, dp=False)]}
    table = privacy_utility_grid.grid(data, {"default": fd})
    t = privacy_utility_grid.evaluate_targets(table)
    gap = t["per_preset"]["default"]["fd_within_gap_at_8"]
    assert gap["gap_points"] == pytest.approx(2.0) and gap["met"] is True
    assert t["fd_within_gap_at_8"] is True
    ahead = t["per_preset"]["default"]["fd_ahead_of_dp_fedavg"]["per_epsilon"]
    assert ahead["1"]["met"] is True and ahead["8"]["met"] is True
    assert ahead["3"]["met"] is None and "inf" not in ahead  # FD at ε=3 not run
    assert t["fd_ahead_of_dp_fedavg"] is None
    fd["rows"].append(_fd_row("federated-distillation", 3.0, 0.59, 0.60))
    t = privacy_utility_grid.evaluate_targets(privacy_utility_grid.grid(data, {"default": fd}))
    assert t["fd_ahead_of_dp_fedavg"] is False  # 0.59 < 0.60 at ε=3
    fd["rows"][-1] = _fd_row("federated-distillation", 8.0, 0.60, 0.6)  # rerun: last wins
    t = privacy_utility_grid.evaluate_targets(privacy_utility_grid.grid(data, {"default": fd}))
    assert t["per_preset"]["default"]["fd_within_gap_at_8"]["gap_points"] == pytest.approx(4.0)
    assert t["fd_within_gap_at_8"] is False


def test_privacy_utility_renders(tmp_path: Path) -> None:
    data = _pu_data({"1": 0.55, "3": 0.60, "8": 0.61, "inf": 0.70})
    results = tmp_path / "results"
    results.mkdir()
    (results / "privacy_utility.json").write_text(json.dumps(data))
    (results / "default.json").write_text(json.dumps(
        {"rows": [_fd_row("federated-distillation", 8.0, 0.62, 0.63)]}))
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    render.main(["--results", str(results), "--doc", str(doc)])
    text = doc.read_text()
    assert "| rotten-tomatoes (`default`) | federated distillation, students (mean) | not run " \
           "| not run | 0.620 | not run |" in text
    assert "| 0.550 | 0.600 | 0.610 | 0.700 |" in text  # DP-FedAvg, FedAvg at ∞
    assert "ε=8: +1.0 (met)" in text
    assert "FD within 3 points of non-private FD at ε=8: not decided" in text
    assert "RuntimeError: boom" in text and "not finished within the time budget" in text
    assert "FD cells not run yet: `default` ε=1" in text
    assert (doc.parent / "bench_privacy_utility.png").stat().st_size > 0


def test_privacy_utility_borrows_results_py_baselines() -> None:
    """Cells this script has not run come from results.py rows (marked †); its own win."""
    rows = [_fd_row("dp-fedavg", 8.0, 0.58, 0.0), _fd_row("fedavg", 8.0, 0.59, 0.0, dp=False),
            _fd_row("centralized", 8.0, 0.73, 0.0, dp=False),
            _fd_row("local-only", 1.0, 0.51, 0.0)]
    data = _pu_data({"8": 0.61})  # own DP-FedAvg row at ε=8
    data["settings"]["configs"]["default"]["majority_class_accuracy"] = 0.583
    borrowed: set = set()
    table = privacy_utility_grid.grid(data, {"default": {"rows": rows}}, borrowed)
    assert table["default"]["dp-fedavg"] == {"1": None, "3": None, "8": 0.61, "inf": 0.59}
    assert table["default"]["centralized-dp"]["inf"] == 0.73
    assert table["default"]["local-only"]["1"] == 0.51
    assert borrowed == {("default", "dp-fedavg", "inf"), ("default", "centralized-dp", "inf"),
                        ("default", "local-only", "1")}
    text = "\n".join(privacy_utility_page.section(data, {"default": {"rows": rows}}, None))
    assert "| 0.730† |" in text and "| 0.610 |" in text
    assert "majority class" in text and "0.583 | 0.583 |" in text


# --------------------------------------------------------------------------- scale


def test_scale_sampler_sums_the_process_tree() -> None:
    """The sampler finds a child (and only the root with include_root), sums its memory and
    reads its CPU time, without any simulation."""
    import os
    import subprocess
    import time

    code = "import time; b = b\"x\" * (64 * 2**20); time.sleep(3)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        sampler = TreeSampler(interval=0.1)
        with sampler:
            deadline = time.monotonic() + 10
            while sampler.peak_rss < 60 * 2**20 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert child.pid in sampler.members()
        assert os.getpid() not in sampler.members()  # the driver is not counted
        summary = sampler.summary()
        assert summary["peak_rss_mb"] >= 60 and 0 < summary["peak_pss_mb"] <= summary[
            "peak_rss_mb"] + 1
        assert summary["by_kind"]["python -c"]["peak_rss_mb"] >= 60
        assert summary["samples"] >= 1 and summary["cpu_s"] >= 0
        assert summary["load_average_1m"]["max"] >= 0
    finally:
        child.kill()
        child.wait()
    own = TreeSampler(include_root=True)
    rss, pss, n = own.sample()
    assert n >= 1 and rss > 0 and os.getpid() in own.members()


def _scale_records(rounds: int, seconds: float, clients: int) -> list[dict]:
    recs = [{"round": 0, "seconds": 5.0, "teacher_accuracy": 0.6}]
    for r in range(1, rounds + 1):
        rec = {"round": r, "seconds": seconds * (2 if r == 1 else 1), "replies": clients,
               "sampled": clients}
        if r == rounds:
            rec["ensemble_accuracy"] = 0.7
        recs.append(rec)
    return recs


def _scale_row(clients: int, batch: int, seconds: float, pss: float, rounds: int = 2) -> dict:
    marks = {r: {"ray::ClientAppActor": 10.0 * r * clients / 10, "flwr-simulation": 5.0 * r,
                 "raylet": 0.1 * r} for r in range(rounds + 1)}
    memory = {"peak_rss_mb": pss * 1.4, "peak_pss_mb": pss, "peak_processes": 15,
              "samples": 10, "cpu_s": 100.0, "trace": [],
              "by_kind": {"ray::ClientAppActor": {"peak_rss_mb": 900.0, "peak_pss_mb": 700.0,
                                                  "cpu_s": 50.0}},
              "load_average_1m": {"mean": 2.0, "max": 3.0}}
    return scale_rows.build_row(clients=clients, public_batch=batch, rounds=rounds,
                           records=_scale_records(rounds, seconds, clients), wall_s=60.0,
                           memory=memory, cpu_marks=marks)


def test_scale_rows_growth_and_target() -> None:
    row = _scale_row(10, 100, 4.0, 2000.0)
    assert row["ok"] and row["all_replied"] and row["measured_rounds"] == [2]
    assert row["round_seconds"] == [8.0, 4.0] and row["s_per_round"] == 4.0
    assert row["s_per_round_per_client"] == 0.4 and row["evaluated_rounds"] == [2]
    assert row["cpu_s_per_round"] == pytest.approx(15.1)  # 10 clients + 5 server + 0.1
    assert row["client_cpu_s_per_client"] == pytest.approx(1.0)
    assert row["server_engine_cpu_s_per_round"] == pytest.approx(5.0)
    one = _scale_row(1000, 100, 400.0, 2100.0, rounds=1)
    assert one["measured_rounds"] == [1] and one["s_per_round"] == 800.0  # round 1 only
    rows = scale_rows.merge_rows([_scale_row(100, 100, 1.0, 1.0)],
                            [_scale_row(100, 100, 40.0, 2050.0), one, row,
                             _scale_row(100, 2000, 160.0, 2100.0)])
    assert [(r["clients"], r["public_batch"]) for r in rows] == [
        (10, 100), (100, 100), (100, 2000), (1000, 100)]
    g = scale_rows.growth(rows, 100, 100)
    assert [(s["from"], s["to"]) for s in g["steps"]] == [(10, 100), (100, 1000)]
    assert g["steps"][0]["time_x"] == 10.0 and g["steps"][0]["time_x_over_clients_x"] == 1.0
    assert g["public_batch"]["time_x"] == 4.0 and g["public_batch"]["batch_x"] == 20.0
    assert "time_fit" in g and "pss_fit" in g
    target = scale_rows.evaluate_target(rows, 24_000.0)
    assert target["met"] and "1,000 clients ran 1 round(s)" in target["detail"]
    failed = dict(one, ok=False, error="SimulationError: boom")
    assert not scale_rows.evaluate_target([row, failed], 24_000.0)["met"]
    assert not scale_rows.evaluate_target([row], 24_000.0)["met"]
    assert scale_rows.configurations([10, 100, 1000], [100, 2000], 100) == [
        (10, 100), (100, 100), (100, 2000), (1000, 100)]
    assert "yes" in scale_rows.format_row(row) and scale.rounds_for(1000, 2, 1000, 1) == 1


def test_scale_renders_into_the_page(tmp_path: Path) -> None:
    rows = [_scale_row(10, 100, 4.0, 2000.0), _scale_row(100, 100, 40.0, 2050.0),
            _scale_row(100, 2000, 160.0, 2100.0), _scale_row(1000, 100, 400.0, 2100.0, 1)]
    env = {"cpu_count": 2, "memory_total_mb": 24_000, "torch": "x", "opacus": "y",
           "flwr": "z", "python": "3", "niceness": 10}
    data = {"benchmark": "scale", "command": "python -m bench.scale", "environment": env,
            "settings": {"base_public_batch": 100, "batch_clients": 100, "quick": False},
            "rows": rows, "growth": scale_rows.growth(rows, 100, 100),
            "target": scale_rows.evaluate_target(rows, 24_000.0), "wall_seconds": 600}
    results = tmp_path / "results"
    results.mkdir()
    (results / "scale.json").write_text(json.dumps(data))
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    render.main(["--results", str(results), "--doc", str(doc)])
    text = doc.read_text()
    assert "## 4. Scale" in text and "| 1,000 | 100 | 1 | 800.0 | 0.800 |" in text
    assert "Target met: yes" in text and "10 → 100 clients (×10)" in text
    assert (doc.parent / "bench_scale.png").stat().st_size > 0
    quick = dict(data, settings=dict(data["settings"], quick=True))
    assert "Not yet measured" in "\n".join(scale_page.section(quick, None))


def test_dp_cost_trainer_with_the_head_trainable_steps_only_the_head() -> None:
    """--trainable head: every mode trains the same parameters (the clients' DP step)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(3, 6000, (32, 40), generator=gen), torch.randint(0, 2, (32,))
    for mode in ("non-private", "hooks", "ghost"):
        trainer = dp_cost.build_trainer("transformer", mode, 8, x, y, torch.device("cpu"),
                                          trainable="head")
        assert trainer.params == 130  # the head of the tiny student (64 x 2 + 2)
        trainer.step(x[:8], y[:8])


def test_uplink_at_equal_accuracy_is_a_bound_from_the_real_runs() -> None:
    def row(method: str, acc: float, up: int, budget: float = 8.0) -> dict:
        return {"method": method, "seed": 0, "privacy": {"budget": budget},
                "final": {"student_accuracy_mean": acc}, "communication": {"bytes_up": up}}

    results = {"default": {"rows": [row("federated-distillation", 0.62, 1_000),
                                    row("fedavg", 0.58, 250_000),
                                    row("dp-fedavg", 0.65, 250_000),  # ahead: no bound
                                    row("fedavg", 0.50, 9, budget=1.0)]}}  # other ε
    lines = render.equal_accuracy_lines(results)
    body = [line for line in lines if line.startswith("- ")]
    assert len(body) == 1 and "**250x**" in body[0] and "never reached" in body[0]
    assert render.equal_accuracy_lines({"x": {"benchmark": "dp_cost", "rows": []}}) == []
