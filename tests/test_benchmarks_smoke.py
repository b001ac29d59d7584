"""Smoke tests of the benchmark tooling: the byte arithmetic and the page renderer.

Benchmarks are not tests: nothing here runs a benchmark or asserts anything about time.
The modules are loaded by path because Opacus installs a top-level ``benchmarks`` package
of its own into site-packages.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from common.distill.codec import encode_knowledge, payload_nbytes

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


communication = _load("communication")
render = _load("render")

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
    dp_module = _load("dp_cost")
    dp = {"benchmark": "dp_cost", "command": "c", "environment": env, "wall_seconds": 1,
          "settings": {"families": ["transformer"], "quick": False}, "rows": _dp_rows()}
    dp["target"] = dp_module.evaluate_target(dp["rows"], dp_module.torch.device("cpu"))
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
    (results / "default.json").write_text(json.dumps({"rows": []}))  # benchmarks/results.py
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    render.main(["--results", str(results), "--doc", str(doc)])
    text = doc.read_text()
    assert "| transformer | 64 | ghost |" in text
    assert "Target met: no" in text  # ghost is 0.5x < 0.6x
    assert "| FD float16 |" in text and "Not yet measured" in text
    assert "`default.json`" in text
    assert (doc.parent / "bench_dp_cost.png").stat().st_size > 0
    assert (doc.parent / "bench_communication.png").stat().st_size > 0
