"""Benchmark 2: bytes on the wire per round and per client, computed, not sampled.

    python -m bench.communication [--public-batch 2000] [--num-classes 2]

Federated distillation moves soft labels, FedAvg moves weights; both sizes follow from
the message layouts alone, so they are computed here with the project's own code (the
real knowledge codec and ``payload_nbytes``, the real student from ``build_model``)
instead of being read off a run:

- federated distillation, per client per round: **down** = the teacher's knowledge on the
  public batch (m rows x C classes, in the round's encoding) + the m int64 indices of the
  public rows (``coordinator/app.py``); **up** = the student's knowledge on the same rows
  in the same encoding (``client/app.py``). On an evaluation round a client also sends
  float16 soft labels on the test set; that is a measurement channel, not the protocol,
  and is reported apart.
- FedAvg and DP-FedAvg, per client per round: the student's float32 ``state_dict`` each
  way (``simulations/baselines.py``). DP noise changes values, not sizes, so both cost
  the same.

Flower's message framing and metrics records are counted in neither, as in the runs'
own byte counters. Bytes *to reach a target accuracy* need the accuracy curves of real
runs; they are measured by another script and are not in this file.

Writes ``bench/results/communication.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.distill.codec import ENCODINGS, encode_knowledge, payload_nbytes

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
UPLINK_TARGET = 100.0  # issue 8: at least 100x fewer uplink bytes than FedAvg


def _probs(rows: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Random rows on the simplex: sizes do not depend on the values, only on the shape."""
    rng = np.random.default_rng(seed)
    p = rng.random((rows, num_classes)) + 1e-3
    return p / p.sum(axis=1, keepdims=True)


def knowledge_nbytes(rows: int, num_classes: int, encoding: str, topk: int = 2) -> int:
    """Bytes of one encoded knowledge matrix, through the real encoder."""
    return payload_nbytes(encode_knowledge(_probs(rows, num_classes), encoding, topk=topk))


def fd_round_bytes(rows: int, num_classes: int, encoding: str, topk: int = 2) -> dict[str, int]:
    """Federated distillation, one client, one round: bytes down and up."""
    knowledge = knowledge_nbytes(rows, num_classes, encoding, topk)
    indices = np.zeros(rows, dtype=np.int64).nbytes
    return {"down": knowledge + indices, "down_knowledge": knowledge, "down_indices": indices,
            "up": knowledge}


def weights_nbytes(state: dict[str, Any]) -> int:
    """Float32 bytes of a state_dict, counted as the FedAvg baseline counts them."""
    return sum(int(t.numel()) * 4 for t in state.values())


def communication_table(*, rows: int, num_classes: int, topk: int,
                        weight_bytes: int) -> list[dict[str, Any]]:
    """Every method's bytes per client per round, and FedAvg's uplink over each FD's.

    Pure: no model, no data; ``weight_bytes`` is the student's float32 size.
    """
    table: list[dict[str, Any]] = []
    variants = [(enc, topk) for enc in ENCODINGS]
    if topk != 1:
        variants.append(("topk", 1))  # what top-k buys when it actually drops classes
    for enc, k in variants:
        b = fd_round_bytes(rows, num_classes, enc, k)
        name = f"FD {enc}" + (f" (k={k})" if enc == "topk" else "")
        table.append({"method": name, "encoding": enc, "topk": k if enc == "topk" else None,
                      "bytes_down": b["down"], "bytes_down_knowledge": b["down_knowledge"],
                      "bytes_down_indices": b["down_indices"], "bytes_up": b["up"],
                      "uplink_ratio_fedavg_over_fd": weight_bytes / b["up"],
                      "downlink_ratio_fedavg_over_fd": weight_bytes / b["down"]})
    for name in ("FedAvg", "DP-FedAvg"):
        table.append({"method": name, "encoding": "float32 weights", "topk": None,
                      "bytes_down": weight_bytes, "bytes_up": weight_bytes,
                      "uplink_ratio_fedavg_over_fd": None, "downlink_ratio_fedavg_over_fd": None})
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--public-batch", type=int, default=2000)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--topk", type=int, default=2)
    parser.add_argument("--family", default="transformer")
    parser.add_argument("--num-clients", type=int, default=10,
                        help="only for the per-round totals of the whole federation")
    parser.add_argument("--test-rows", type=int, default=0,
                        help="test-set rows for the evaluation-round extra (0: read the task)")
    parser.add_argument("--out", default=str(RESULTS / "communication.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import torch

    torch.set_num_threads(1)  # nothing here is timed; the machine is shared
    from bench.dp_cost import DEFAULT_STUDENT
    from common.environment import environment, print_environment
    from common.models import ModelConfig, build_model, count_parameters

    env = environment(torch.device("cpu"))
    print_environment(env)
    model = build_model(ModelConfig(family=args.family, size=DEFAULT_STUDENT["size"],
                                    vocab_size=DEFAULT_STUDENT["vocab_size"],
                                    num_classes=args.num_classes,
                                    max_len=DEFAULT_STUDENT["max_len"]))
    weight_bytes = weights_nbytes(model.state_dict())
    test_rows = args.test_rows
    if test_rows == 0:
        from common.task import prepare_task

        task = prepare_task("rotten-tomatoes", 0, DEFAULT_STUDENT["vocab_size"],
                            DEFAULT_STUDENT["max_len"])
        test_rows = len(task.test_x)
    table = communication_table(rows=args.public_batch, num_classes=args.num_classes,
                                topk=args.topk, weight_bytes=weight_bytes)
    eval_extra = knowledge_nbytes(test_rows, args.num_classes, "float16")
    print(f"student: {args.family} tiny, {count_parameters(model):,} parameters, "
          f"{weight_bytes:,} float32 bytes; public batch {args.public_batch} x "
          f"{args.num_classes} classes")
    print(f"{'method':<18}{'down B':>12}{'up B':>12}{'FedAvg/FD up':>14}")
    for r in table:
        ratio = r["uplink_ratio_fedavg_over_fd"]
        print(f"{r['method']:<18}{r['bytes_down']:>12,}{r['bytes_up']:>12,}"
              f"{'' if ratio is None else f'{ratio:.1f}x':>14}")
    fd_ratios = [r["uplink_ratio_fedavg_over_fd"] for r in table if r["method"].startswith("FD")]
    print(f"evaluation rounds add {eval_extra:,} B up per client (float16 soft labels on "
          f"{test_rows} test rows)")
    result = {
        "benchmark": "communication",
        "command": " ".join(["python -m bench.communication", *(argv or sys.argv[1:])]),
        "environment": env,
        "settings": {"public_batch": args.public_batch, "num_classes": args.num_classes,
                     "topk": args.topk, "student": {**DEFAULT_STUDENT, "family": args.family},
                     "student_parameters": count_parameters(model),
                     "student_weight_bytes": weight_bytes, "num_clients": args.num_clients,
                     "per": "client and round"},
        "rows": table,
        "evaluation_round_extra_up": {"bytes": eval_extra, "test_rows": test_rows,
                                      "encoding": "float16"},
        "uplink_target": {"ratio_min": UPLINK_TARGET, "min_ratio": min(fd_ratios),
                          "met_per_round": min(fd_ratios) >= UPLINK_TARGET,
                          "at_equal_accuracy": "not yet measured (another script)"},
        "wall_seconds": round(time.perf_counter() - start, 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} in {result['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
