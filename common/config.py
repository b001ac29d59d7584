"""The run configuration: one frozen dataclass, parsed once at the app boundary.

Flower hands the apps a flat ``run_config`` of kebab-case keys (``num-clients``); presets
and ``--set`` overrides use the same keys. :func:`FedConfig.from_mapping` turns such a
mapping into a validated, immutable :class:`FedConfig` so that no code deeper down reads
``run_config["..."]`` by string, and a bad key or value fails before anything starts,
naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.errors import ConfigError

# text families read token ids (or a backbone's features); vit and image-cnn read images;
# forecaster (a Transformer) and forecast-mlp read windows of a time series; gpt and
# lstm-lm read windows of tokens and predict the next token at each position
STUDENT_FAMILIES = ("transformer", "lstm", "cnn", "probe", "probe-mlp", "encoder", "vit",
                    "image-cnn", "forecaster", "forecast-mlp", "gpt", "lstm-lm")
TEACHER_FAMILIES = STUDENT_FAMILIES
# heads on a frozen pretrained encoder's cached features (common/models/heads.py)
FEATURE_FAMILIES = ("probe", "probe-mlp")
# families built on the backbone: its features, or the encoder itself fine-tuned
BACKBONE_FAMILIES = (*FEATURE_FAMILIES, "encoder")
BUILTIN_BACKBONES = ("minilm", "mpnet")  # fetched as data (common/models/pretrained.py)
ENCODER_DTYPES = ("float32", "bfloat16", "auto")
HF_PREFIX = "hf:"
AGGREGATIONS = ("mean", "weighted-mean", "median", "trimmed-mean", "dsfl", "norm-filter")
ENCODINGS = ("float32", "float16", "int8", "topk", "votes")
# time-blocks: contiguous stretches of a series per client (forecasting only)
PARTITIONS = ("iid", "dirichlet", "shards", "natural", "time-blocks")
GRAD_SAMPLE_MODES = ("hooks", "ghost")
DP_OPTIMIZERS = ("sgd", "adamw")
DP_TRAINABLE = ("all", "head", "adapters", "embedding", "bias")
ACCOUNTANTS = ("rdp", "prv")
SIZES = ("tiny", "small", "base")
ATTACKS = ("none", "flip", "noise", "wrong-onehot", "collude", "adaptive", "nan", "shape",
           "raise")


@dataclass(frozen=True)
class FedConfig:
    """Every knob of a federated-distillation run (defaults = the ``default`` preset)."""

    # --- task and data
    dataset: str = "rotten-tomatoes"  # a name from `fedistill data list`
    seed: int = 0  # seeds the split, partition, sampling and model init
    num_clients: int = 10  # simulated SuperNodes / partitions
    partition: str = "natural"  # iid | dirichlet | shards | natural (by movie) | time-blocks
    alpha: float = 0.5  # Dirichlet concentration (partition = dirichlet)
    max_len: int = 40  # tokens per text; longer texts are truncated
    vocab_size: int = 6000  # WordPiece vocabulary, trained on public + teacher texts
    backbone: str = ""  # a frozen pretrained encoder for the probe families: minilm,
    #                     mpnet, hf:HUB_NAME or hf:LOCAL_DIR ('' = every model from scratch)
    # the frozen encoder's precision when it computes features: auto = bfloat16 on a GPU
    # or a CPU with bfloat16 matrix units, else float32
    encoder_dtype: str = "float32"
    patch_size: int = 0  # vit on images: square patch side (0 = a 4x4 grid of patches)
    season: int = 24  # forecasting: every model forecasts the residual over the seasonal-
    #                   naive forecast of this period, in steps (24 = a day of hours; 0 = none)
    center_windows: bool = False  # forecasting: models read each window minus its mean
    # --- rounds
    rounds: int = 5
    clients_per_round: int = 0  # 0 = every client, every round
    min_replies: int = 2  # a round with fewer valid replies fails
    round_timeout: float = 900.0  # seconds the coordinator waits for replies
    public_batch_size: int = 2000  # m: public examples whose knowledge is exchanged
    evaluate_every: int = 2  # students are evaluated every N rounds (and the last)
    # --- teacher (coordinator)
    teacher_family: str = "transformer"
    teacher_size: str = "small"
    teacher_epochs: int = 15  # pre-training epochs on the labeled teacher set
    teacher_lr: float = 1e-3
    teacher_distill_epochs: int = 2  # per round, on the aggregated soft labels
    teacher_distill_lr: float = 5e-4
    teacher_anchor_epochs: int = 1  # per round, on the labeled teacher set (no drift)
    teacher_targets: str = "hard"  # hard = arg-max of the aggregate (pseudo-labels) | soft = KD
    teacher_checkpoint: str = ""  # a saved teacher to load instead of pre-training
    collapse_share: float = 0.9  # a round that would put more of the public batch into one
    #                              class (where the teacher does not) is not applied
    teacher_validation: float = 0.0  # share of the teacher's labels held out: a round whose
    #                                  update lowers accuracy on them is rolled back (0 = off)
    teacher_folds: int = 0  # K >= 2: K shadow teachers, each without one fold of the
    #                         teacher's labels, judge each update on every label (0 = off)
    teacher_fold_alpha: float = 1.0  # with teacher-folds: the level of a one-sided sign
    #                                  test the update's flips must pass (1 = any rise)
    teacher_guard: str = "accuracy"  # what "lowers" means there: accuracy | loss (log-loss)
    teacher_self_weight: float = 0.0  # the teacher's own probabilities' share of the
    #                                   update's targets (the rest: the aggregate)
    teacher_min_agreement: float = 0.0  # public examples whose aggregate's top class has a
    #                                     smaller share are left out of the update (0 = all)
    # --- knowledge exchange
    temperature: float = 2.0  # softening of both teacher and student probabilities
    encoding: str = "float16"  # float32 | float16 | int8 | topk | votes (replies only)
    topk: int = 2  # kept entries per row for encoding = topk (next tokens: always top-k)
    aggregation: str = "weighted-mean"  # one of AGGREGATIONS (mean, ..., dsfl, norm-filter)
    trim_fraction: float = 0.2  # for trimmed-mean
    dsfl_temperature: float = 0.5  # sharpening for dsfl (< 1 lowers entropy)
    filter_ratio: float = 2.0  # norm-filter: keep replies within this × the median distance
    filter_min_entropy: float = 0.0  # norm-filter: drop replies less uncertain than this (nats)
    # --- students (clients)
    students: str = "transformer,lstm,cnn"  # assigned to clients in turn
    student_size: str = "tiny"
    student_distill_epochs: int = 2  # per round, on the public batch (no ε)
    student_distill_lr: float = 2e-3
    # --- private training (DP-SGD with Opacus)
    private_training: bool = True  # false = the public-only ablation
    dp: bool = True  # false asks for non-private training; a node's policy may refuse it
    epsilon: float = 8.0  # the ε a run asks each client to stay within (the node's own
    #                       budget caps it; simulated nodes get this as their budget)
    delta: float = 1e-5  # simulated nodes get it as their δ; a deployed node keeps its own
    accountant: str = "rdp"  # rdp | prv
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0  # 0 = calibrated up front for all planned rounds
    dp_batch_size: int = 128  # expected (Poisson) logical batch size
    dp_epochs: float = 1.0  # passes over the private data per round
    dp_lr: float = 0.1
    dp_optimizer: str = "sgd"  # sgd (with momentum) | adamw
    dp_trainable: str = "head"  # all | head | adapters | embedding (+ head) | bias (+ head)
    dp_adapter_rank: int = 4  # rank of the LoRA adapters (dp-trainable = "adapters")
    grad_sample_mode: str = "hooks"  # hooks | ghost
    max_physical_batch_size: int = 256  # memory cap (BatchMemoryManager)
    # --- secure aggregation (Flower's SecAgg+; docs/THREAT_MODEL.md says what it hides)
    secure_aggregation: bool = False  # the coordinator sees only the sum of the replies
    secagg_num_shares: float = 11.0  # neighbours per client: a count, or a share (<= 1) of all
    secagg_threshold: float = 0.6  # share (<= 1) of the shares needed to rebuild a mask, or a count
    secagg_max_weight: int = 5000  # example counts above it are capped (no overflow)
    secagg_quantization_range: int = 0  # 0 = the largest that cannot overflow the modulus
    # --- robustness experiments (simulation only)
    attack: str = "none"  # none | flip | noise | wrong-onehot | collude | nan | shape | raise
    attack_fraction: float = 0.0  # share of clients (the first ids) that attack
    save_replies: bool = False  # keep each round's valid replies (replies/round-NNN.npz)
    # --- system
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/latest"

    def __post_init__(self) -> None:
        _check_choice("partition", self.partition, PARTITIONS)
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("encoding", self.encoding, ENCODINGS)
        _check_choice("encoder-dtype", self.encoder_dtype, ENCODER_DTYPES)
        _check_choice("grad-sample-mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        _check_choice("dp-optimizer", self.dp_optimizer, DP_OPTIMIZERS)
        _check_choice("dp-trainable", self.dp_trainable, DP_TRAINABLE)
        _check_choice("accountant", self.accountant, ACCOUNTANTS)
        _check_choice("attack", self.attack, ATTACKS)
        _check_choice("teacher-targets", self.teacher_targets, ("hard", "soft"))
        _check_choice("teacher-guard", self.teacher_guard, ("accuracy", "loss"))
        _check_choice("teacher-family", self.teacher_family, TEACHER_FAMILIES)
        _check_backbone(self)
        _check_secagg(self)
        if not 0 <= self.attack_fraction <= 1:
            raise ConfigError(f"attack-fraction={self.attack_fraction} must lie in [0, 1].")
        _check_choice("teacher-size", self.teacher_size, SIZES)
        _check_choice("student-size", self.student_size, SIZES)
        for family in self.student_families:
            _check_choice("students", family, STUDENT_FAMILIES)
        for key in ("num_clients", "rounds", "public_batch_size", "max_len", "dp_batch_size",
                    "vocab_size", "evaluate_every", "max_physical_batch_size", "topk",
                    "dp_adapter_rank"):
            _check_positive(key, getattr(self, key))
        for key in ("epsilon", "delta", "temperature", "max_grad_norm", "dp_lr", "dp_epochs",
                    "teacher_lr", "student_distill_lr", "teacher_distill_lr", "round_timeout",
                    "dsfl_temperature"):
            _check_positive(key, getattr(self, key))
        if self.delta >= 1:
            raise ConfigError(f"delta={self.delta} must be below 1 (and below 1/n per client).")
        if not 0 <= self.teacher_validation < 0.5:
            raise ConfigError(f"teacher-validation={self.teacher_validation} must lie in "
                              "[0, 0.5) (0 = off).")
        if self.teacher_folds == 1 or self.teacher_folds < 0:
            raise ConfigError(f"teacher-folds={self.teacher_folds} must be 0 (off) or >= 2.")
        if not 0 < self.teacher_fold_alpha <= 1:
            raise ConfigError(f"teacher-fold-alpha={self.teacher_fold_alpha} must lie in "
                              "(0, 1] (1 = any rise of the pooled accuracy).")
        if self.teacher_folds and self.teacher_validation:
            raise ConfigError("teacher-folds and teacher-validation are two ways to hold "
                              "the teacher's labels out; set one of them (the other to 0).")
        if not 0 <= self.teacher_self_weight < 1:
            raise ConfigError(f"teacher-self-weight={self.teacher_self_weight} must lie in "
                              "[0, 1) (0 = the aggregate alone).")
        if not 0 <= self.teacher_min_agreement <= 1:
            raise ConfigError(f"teacher-min-agreement={self.teacher_min_agreement} must lie "
                              "in [0, 1] (0 = learn from every public example).")
        if not 0.5 <= self.collapse_share <= 1:
            raise ConfigError(f"collapse-share={self.collapse_share} must lie in [0.5, 1] "
                              "(1 = never refuse a teacher update).")
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"trim-fraction={self.trim_fraction} must lie in [0, 0.5).")
        if not 0 < self.filter_ratio < float("inf"):
            raise ConfigError(f"filter-ratio={self.filter_ratio} must be a finite number > 0.")
        if not 0 <= self.filter_min_entropy < float("inf"):
            raise ConfigError(f"filter-min-entropy={self.filter_min_entropy} must be a finite "
                              "number >= 0 (0 = off).")
        if self.season < 0:
            raise ConfigError(f"season={self.season} must be >= 0 (0 = no seasonal-naive "
                              "start for forecasting models).")
        if self.patch_size < 0:
            raise ConfigError(f"patch-size={self.patch_size} must be >= 0 (0 = a quarter "
                              "of the image side).")
        if self.noise_multiplier < 0:
            raise ConfigError(f"noise-multiplier={self.noise_multiplier} must be >= 0 "
                              "(0 = calibrate from the budget).")
        if not 0 <= self.clients_per_round <= self.num_clients:
            raise ConfigError(f"clients-per-round={self.clients_per_round} must lie in "
                              f"[0, num-clients={self.num_clients}] (0 = all).")
        if not 1 <= self.min_replies <= self.num_clients:
            raise ConfigError(f"min-replies={self.min_replies} must lie in "
                              f"[1, num-clients={self.num_clients}].")
        for key in ("teacher_epochs", "teacher_distill_epochs", "student_distill_epochs",
                    "teacher_anchor_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{_kebab(key)}={getattr(self, key)} must be >= 0.")

    # ------------------------------------------------------------------ derived
    @property
    def student_families(self) -> tuple[str, ...]:
        """The student family of each client slot, in the order they are assigned."""
        return tuple(s.strip() for s in self.students.split(",") if s.strip())

    def student_for(self, partition_id: int) -> str:
        """The student architecture of client ``partition_id`` (round-robin)."""
        families = self.student_families
        return families[partition_id % len(families)]

    @property
    def sampled_per_round(self) -> int:
        return self.clients_per_round or self.num_clients

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FedConfig:
        """Build from kebab- or snake-case keys; unknown keys and bad types fail."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise ConfigError(
                    f"Unknown configuration key {raw_key!r}. Known keys: "
                    f"{', '.join(sorted(_kebab(k) for k in known))}."
                )
            kwargs[key] = _coerce(raw_key, value, type(getattr(cls(), key)))
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping Flower's ``run_config`` carries."""
        return {_kebab(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> FedConfig:
        return dataclasses.replace(self, **changes)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a preset or config TOML: a flat table of run-config keys."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"Config file {path} does not exist; check the path.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # allow [sections] for readability; keys stay flat
            flat.update(value)
        else:
            flat[key] = value
    return flat


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` pairs; values are TOML literals or bare strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} is not key=value (for example rounds=3).")
        key, raw = (s.strip() for s in pair.split("=", 1))
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, target: type) -> Any:
    """Coerce TOML/CLI values to the field's type, refusing lossy conversions."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}={value!r} must be true or false.")
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{key}={value!r} must be a whole number.")
        return int(value)
    if target is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number.")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be a string.")
    return value


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}.")


def check_backbone_spec(spec: str) -> None:
    """Fail early, naming the choices, on a spec that is neither built-in nor ``hf:``."""
    if spec and spec not in BUILTIN_BACKBONES and not (
            spec.startswith(HF_PREFIX) and len(spec) > len(HF_PREFIX)):
        raise ConfigError(f"backbone={spec!r} is not one of {', '.join(BUILTIN_BACKBONES)}, "
                          "hf:HUB_NAME or hf:LOCAL_DIR ('' = models trained from scratch).")


def _check_backbone(cfg: FedConfig) -> None:
    check_backbone_spec(cfg.backbone)
    needs = [f for f in (cfg.teacher_family, *cfg.student_families) if f in BACKBONE_FAMILIES]
    if needs and not cfg.backbone:
        raise ConfigError(f"{', '.join(sorted(set(needs)))} build(s) on a pretrained "
                          "encoder: set backbone (minilm, mpnet, hf:HUB_NAME or hf:LOCAL_DIR).")


def _check_secagg(cfg: FedConfig) -> None:
    """What SecAgg+ can sum: a (weighted) mean of replies it never shows one by one."""
    if not cfg.secure_aggregation:
        return
    if cfg.aggregation not in ("mean", "weighted-mean"):
        raise ConfigError(
            f"aggregation={cfg.aggregation!r} needs every client's reply, which "
            "secure-aggregation=true hides: use mean or weighted-mean with it, or turn "
            "secure aggregation off to use a robust rule.")
    for key in ("secagg_num_shares", "secagg_threshold", "secagg_max_weight"):
        _check_positive(key, getattr(cfg, key))
    for key in ("secagg_num_shares", "secagg_threshold"):
        value = getattr(cfg, key)
        if value > 1 and value != int(value):
            raise ConfigError(f"{_kebab(key)}={value} must be a share in (0, 1] or a "
                              "whole number of clients.")
    if cfg.secagg_quantization_range < 0:
        raise ConfigError(f"secagg-quantization-range={cfg.secagg_quantization_range} must "
                          "be >= 0 (0 = chosen from the number of clients).")


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{_kebab(key)}={value} must be > 0.")
