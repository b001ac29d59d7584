"""The replay engine: the grid of cells, the recorded replies, and the teacher updates.

See the package docstring (simulations/robustness/__init__.py) for what a replay is.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from client.attacks import AttackerView
    from common.config import FedConfig


NO_ATTACK = "none"
DEFAULT_ATTACKS = ("flip", "noise", "wrong-onehot", "collude", "adaptive")
DEFAULT_FRACTIONS = (0.1, 0.3, 0.45)
# Round 1 is replayed exactly (the honest replies there depend only on the round-0
# teacher); --rounds 0 replays every recorded round, a lower bound on later damage.
DEFAULT_ROUNDS = 1
EXCLUDED_RULES = ("dsfl",)  # a sharpening of the mean, not a defence
NON_ROBUST_RULES = ("mean", "weighted-mean")
TARGET_FRACTION = 0.3  # the target: 30 % malicious clients ...
TARGET_POINTS = 0.03  # ... cost the best robust rule at most 3 points of accuracy
ROUND_FILE = re.compile(r"round-(\d+)\.npz$")
CLIENT_ID = re.compile(r"client-(\d+)$")


# ---------------------------------------------------------------------------- the grid
@dataclass(frozen=True, order=True)
class Cell:
    """One entry of the table: a rule facing an attack by a share of the clients."""

    rule: str
    attack: str
    fraction: float

    @property
    def label(self) -> str:
        if self.attack == NO_ATTACK:
            return f"{self.rule}/none"
        return f"{self.rule}/{self.attack}@{self.fraction:g}"


def default_rules() -> list[str]:
    """Every registered aggregation rule but DS-FL, read at run time."""
    from coordinator.aggregation import AGGREGATORS

    return [name for name in AGGREGATORS if name not in EXCLUDED_RULES]


def cell_grid(
    rules: Sequence[str], attacks: Sequence[str], fractions: Sequence[float]
) -> list[Cell]:
    """Per rule: one no-attack cell, then every attack at every fraction."""
    cells: list[Cell] = []
    for rule in rules:
        cells.append(Cell(rule, NO_ATTACK, 0.0))
        cells += [Cell(rule, a, float(f)) for a in attacks if a != NO_ATTACK for f in fractions]
    return cells


# ---------------------------------------------------------------------------- replies
@dataclass(frozen=True)
class RecordedRound:
    """One round's validated replies as ``save-replies`` kept them."""

    round: int
    indices: np.ndarray  # (m,) rows of the public set
    probs: np.ndarray  # (K, m, C) float32
    counts: np.ndarray  # (K,)
    client_ids: tuple[str, ...]


def load_recorded_rounds(run_dir: Path) -> list[RecordedRound]:
    """Every ``replies/round-NNN.npz`` of a run, in round order."""
    from common.errors import ConfigError

    folder = Path(run_dir) / "replies"
    files = sorted(
        (int(m.group(1)), p) for p in folder.glob("round-*.npz") if (m := ROUND_FILE.search(p.name))
    )
    if not files:
        raise ConfigError(
            f"{folder} holds no round-NNN.npz: replay needs a run made with "
            "--set save-replies=true (plain aggregation, not secure)."
        )
    rounds = []
    for rnd, path in files:
        with np.load(path, allow_pickle=False) as data:
            rounds.append(
                RecordedRound(
                    rnd,
                    data["indices"].astype(np.int64),
                    data["probs"].astype(np.float32),
                    data["counts"].astype(np.int64),
                    tuple(str(c) for c in data["client_ids"]),
                )
            )
    return rounds


def malicious_mask(client_ids: Sequence[str], num_clients: int, fraction: float) -> np.ndarray:
    """Which replies a run with ``attack-fraction=fraction`` would have poisoned.

    Client ``client-P`` is malicious when :func:`client.attacks.is_malicious` says so for
    partition id P: the first ``round(fraction * num_clients)`` ids. Ids that name no
    partition fall back to the first ``round(fraction * K)`` replies in their order.
    """
    from client.attacks import is_malicious

    ids = [CLIENT_ID.match(c) for c in client_ids]
    if all(ids):
        return np.array(
            [is_malicious(int(m.group(1)), num_clients, fraction) for m in ids], dtype=bool
        )
    mask = np.zeros(len(client_ids), dtype=bool)
    mask[: round(fraction * len(client_ids))] = True
    return mask


def poison_replies(
    probs: np.ndarray,
    mask: np.ndarray,
    attack: str,
    *,
    rnd: int,
    seed: int,
    encoding: str,
    topk: int,
    view: AttackerView | None = None,
) -> np.ndarray:
    """Honest replies (K, m, C) with the masked ones poisoned as a malicious client does.

    The client's own attack sequence (:func:`client.attacks.attacked_payload`: same seed,
    same wire encoding), decoded, so the coordinator sees what it would have decoded.
    """
    from client.attacks import attacked_payload, wire_encoder
    from common.distill.codec import decode_knowledge

    out = probs.copy()
    if attack == NO_ATTACK:
        return out
    _, m, c = probs.shape
    encode = wire_encoder(encoding, topk)
    for k in np.flatnonzero(mask):
        sent = attacked_payload(probs[k], attack, seed=seed, rnd=rnd, encode=encode, view=view)
        out[k] = decode_knowledge(sent, encoding, num_rows=m, num_classes=c)
    return out


def teacher_scores(model: Any, x: Any, y: Any, *, device: Any) -> tuple[float, float]:
    """Test accuracy (as ``common.training.evaluate_accuracy``) and balanced accuracy.

    Balanced accuracy is the mean per-class recall: a teacher that predicts one class
    scores 1/C whatever the class shares, where its accuracy is that class's share.
    """
    from common.training import predict_logits

    pred = predict_logits(model, x, device=device).argmax(dim=1)
    y = y.cpu()
    accuracy = float((pred == y).float().mean())
    recalls = [float((pred[y == c] == c).float().mean()) for c in y.unique().tolist()]
    return accuracy, float(np.mean(recalls))


def training_targets(aggregate: np.ndarray, teacher_targets: str) -> np.ndarray:
    """What the teacher update consumes of an aggregate: its arg-max, or all of it."""
    if teacher_targets == "hard":
        return aggregate.argmax(axis=1).astype(np.int64)
    return np.ascontiguousarray(aggregate, dtype=np.float32)


def _chain(previous: str, rnd: int, targets: np.ndarray) -> str:
    digest = hashlib.sha256(previous.encode())
    digest.update(rnd.to_bytes(4, "little"))
    digest.update(targets.tobytes())
    return digest.hexdigest()[:24]


# ---------------------------------------------------------------------------- replay
@dataclass
class CellResult:
    cell: Cell
    accuracy_by_round: list[float] = field(default_factory=list)  # after each replayed round
    balanced_by_round: list[float] = field(default_factory=list)  # mean per-class recall
    changed_labels: list[float] = field(default_factory=list)  # vs the rule without attack

    @property
    def accuracy(self) -> float:
        return self.accuracy_by_round[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.cell.rule,
            "attack": self.cell.attack,
            "fraction": self.cell.fraction,
            "accuracy": self.accuracy,
            "accuracy_by_round": self.accuracy_by_round,
            "balanced_accuracy": self.balanced_by_round[-1],
            "balanced_accuracy_by_round": self.balanced_by_round,
            "changed_labels": self.changed_labels,
        }


@dataclass
class Replay:
    rounds: list[int]
    round0_accuracy: float
    results: list[CellResult]
    updates: int  # teacher updates computed (cells sharing targets share one)
    cell_rounds: int  # cells × rounds
    seconds: float
    update_seconds: float  # spent in teacher updates and their evaluations
    cpu_seconds: float  # process CPU time of the whole replay (all threads)
    pretraining_reproduced: bool | None  # round-0 teacher rebuilt bit for bit (RNG check)


def replay(
    cfg: FedConfig,
    run_dir: Path,
    cells: Sequence[Cell],
    *,
    rounds: int = 0,
    say: Callable[[str], None] = print,
) -> Replay:
    """Replay the recorded rounds of ``run_dir`` (the first ``rounds``; 0 = all) per cell."""
    import torch

    from client.attacks import AttackerView
    from common.device import resolve_device
    from common.models import build_model
    from coordinator.aggregation import aggregator_from_config
    from coordinator.teacher import (
        guarded_update,
        pretrain_teacher,
        sent_soft_labels,
        teacher_config,
        teacher_task,
    )

    start, cpu_start = time.monotonic(), time.process_time()
    recorded = load_recorded_rounds(run_dir)
    if rounds:
        recorded = recorded[:rounds]
    device = resolve_device(cfg.device)
    task = teacher_task(cfg)
    round0 = torch.load(Path(run_dir) / "teacher-round0.pt", map_location="cpu", weights_only=True)

    # The coordinator seeds torch, builds and pre-trains the teacher, and from then on
    # only the teacher updates draw from torch's RNG (dropout), as many draws per round
    # whatever the targets. Rebuilding round 0 puts the RNG where the coordinator's was.
    torch.manual_seed(cfg.seed)
    teacher = build_model(teacher_config(cfg, task))
    reproduced = None
    if not cfg.teacher_checkpoint:
        say(
            f"re-running the teacher's pre-training ({cfg.teacher_epochs} epochs) to put "
            "torch's RNG where the coordinator's was"
        )
        pretrain_teacher(cfg, task, teacher, device)  # the coordinator's own round 0
        reproduced = all(
            torch.equal(v, round0[k].to(v.device)) for k, v in teacher.state_dict().items()
        )
    rng_state = torch.get_rng_state()
    teacher.load_state_dict(round0)
    acc0, _ = teacher_scores(teacher, task.test_x, task.test_y, device=device)
    say(
        f"round-0 teacher: test accuracy {acc0:.4f}; replaying rounds "
        f"{[r.round for r in recorded]} for {len(cells)} cells"
    )

    rule_cfgs = {rule: cfg.replace(aggregation=rule) for rule in {c.rule for c in cells}}
    rules = {rule: aggregator_from_config(rc) for rule, rc in rule_cfgs.items()}
    states: dict[str, dict[str, torch.Tensor]] = {"round0": round0}
    position = {cell: "round0" for cell in cells}
    results = {cell: CellResult(cell) for cell in cells}
    updates, update_seconds = 0, 0.0
    for rr in recorded:
        public_x = task.public_x[torch.as_tensor(rr.indices)]
        poisoned: dict[tuple, np.ndarray] = {}
        clean_labels: dict[str, np.ndarray] = {}
        pending: dict[str, tuple[str, FedConfig, np.ndarray]] = {}
        moved: dict[Cell, str] = {}

        for cell in cells:
            # an adaptive attacker answers what it is sent and the rule: its own replies
            adaptive = cell.attack == "adaptive"
            attack_key = ((cell.attack, cell.fraction, cell.rule, position[cell]) if adaptive
                          else (cell.attack, cell.fraction))
            if attack_key not in poisoned:
                view = None
                if adaptive:  # what the teacher this cell is at sends, and the cell's rule
                    teacher.load_state_dict(states[position[cell]])
                    sent = sent_soft_labels(cfg, teacher, public_x, device).numpy()
                    view = AttackerView(sent, cell.rule, cfg.filter_ratio)
                mask = malicious_mask(rr.client_ids, cfg.num_clients, cell.fraction)
                poisoned[attack_key] = poison_replies(
                    rr.probs, mask, cell.attack, rnd=rr.round, seed=cfg.seed,
                    encoding=cfg.encoding, topk=cfg.topk, view=view,
                )
            aggregate = rules[cell.rule](list(poisoned[attack_key]), list(rr.counts))
            if cell.rule not in clean_labels:
                clean = rules[cell.rule](list(rr.probs), list(rr.counts))
                clean_labels[cell.rule] = clean.argmax(axis=1)
            results[cell].changed_labels.append(
                float((aggregate.argmax(axis=1) != clean_labels[cell.rule]).mean())
            )
            key = _chain(position[cell], rr.round, training_targets(aggregate, cfg.teacher_targets))
            pending.setdefault(key, (position[cell], rule_cfgs[cell.rule], aggregate))
            moved[cell] = key

        new_states: dict[str, dict[str, torch.Tensor]] = {}
        accuracy: dict[str, tuple[float, float]] = {}
        after_rng = None
        for n, (key, (previous, rule_cfg, aggregate)) in enumerate(pending.items(), 1):
            t0 = time.monotonic()
            teacher.load_state_dict(states[previous])
            torch.set_rng_state(rng_state)
            guarded_update(rule_cfg, task, teacher, public_x, aggregate, rr.round, device)
            after = torch.get_rng_state()
            if after_rng is not None and not torch.equal(after, after_rng):
                say("warning: teacher updates drew different amounts of randomness")
            after_rng = after
            new_states[key] = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
            accuracy[key] = teacher_scores(teacher, task.test_x, task.test_y, device=device)
            update_seconds += time.monotonic() - t0
            updates += 1
            say(
                f"round {rr.round}: update {n}/{len(pending)} ({rule_cfg.aggregation}) "
                f"accuracy {accuracy[key][0]:.4f} in {time.monotonic() - t0:.1f}s "
                f"[{time.monotonic() - start:.0f}s total]"
            )
        rng_state = after_rng if after_rng is not None else rng_state
        states = new_states
        for cell in cells:
            position[cell] = moved[cell]
            results[cell].accuracy_by_round.append(accuracy[moved[cell]][0])
            results[cell].balanced_by_round.append(accuracy[moved[cell]][1])

    return Replay(
        rounds=[r.round for r in recorded],
        round0_accuracy=acc0,
        results=[results[c] for c in cells],
        updates=updates,
        cell_rounds=len(cells) * len(recorded),
        seconds=time.monotonic() - start,
        update_seconds=update_seconds,
        cpu_seconds=time.process_time() - cpu_start,
        pretraining_reproduced=reproduced,
    )


