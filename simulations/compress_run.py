"""A finished run as the compression steps see it: its deployable teacher, the public
texts and the targets a student is distilled on, and the labelled test texts.

The teacher is rebuilt the way the coordinator built it (coordinator/teacher.py) and
loaded from the run's ``teacher.pt``; the clients' ensemble from their ``student.pt``
files. Only public texts and public (or already DP-trained) weights are used, so the
compression spends no ε.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.compress import Subject
from common.compress.text_model import (
    HFTokenize,
    ProbeOnEncoder,
    TextModel,
    project_tokenize,
)
from common.config import FEATURE_FAMILIES, FedConfig, load_toml
from common.distill.losses import soften
from common.errors import ConfigError
from common.models import build_model
from common.task import PreparedTask, model_config, task_for
from common.training import predict_logits
from coordinator.teacher import sent_soft_labels, teacher_config, teacher_task

SOURCES = ("teacher", "ensemble")
CPU = torch.device("cpu")


def load_subject(run_dir: Path, source: str = "teacher") -> Subject:
    """The run in ``run_dir`` ready to compress; ``source`` picks what the student learns
    from: the final teacher, or the mean of the clients' students (the ensemble)."""
    if source not in SOURCES:
        raise ConfigError(f"--source {source!r} is not one of {SOURCES}.")
    cfg = run_config(run_dir)
    task = teacher_task(cfg)
    config = teacher_config(cfg, task)
    teacher = build_model(config)
    teacher.load_state_dict(torch.load(run_dir / "teacher.pt", map_location=CPU,
                                       weights_only=True))
    teacher.eval()
    # the teacher's targets are the soft labels a round sends to the clients
    targets = (sent_soft_labels(cfg, teacher, task.public_x, CPU) if source == "teacher"
               else ensemble_targets(cfg, run_dir, task))
    from common.data import load_dataset

    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    return Subject(model=_text_model(cfg, task, teacher), public_texts=list(roles.public.texts),
                   public_ids=None if cfg.teacher_family in FEATURE_FAMILIES else task.public_x,
                   public_targets=targets,
                   public_features=task.public_x if cfg.teacher_family in FEATURE_FAMILIES
                   else None,
                   vocab_texts=list(roles.public.texts) + list(roles.teacher.texts),
                   test_texts=list(roles.test.texts), test_y=task.test_y,
                   temperature=cfg.temperature, model_config=config,
                   seed=cfg.seed)


def run_config(run_dir: Path) -> FedConfig:
    """The run's config; a missing folder or a run without a final teacher is refused."""
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir} does not exist; give the --out folder of a "
                          "finished `fedistill simulate` run.")
    if not (run_dir / "run_config.toml").is_file():
        raise ConfigError(f"{run_dir} holds no run_config.toml: it is not a fedistill run.")
    if not (run_dir / "teacher.pt").is_file():
        raise ConfigError(f"{run_dir} holds no teacher.pt: the run did not finish (the "
                          "coordinator writes it after the last round).")
    return FedConfig.from_mapping(load_toml(run_dir / "run_config.toml"))


def ensemble_targets(cfg: FedConfig, run_dir: Path, task: PreparedTask) -> torch.Tensor:
    """Mean softened prediction of the clients' final students on the public set (their
    outputs are post-processing of DP-trained weights: no further ε)."""
    probs = []
    for folder in sorted((run_dir / "clients").glob("client-*")):
        path = folder / "student.pt"
        if not path.is_file():
            continue
        family = cfg.student_for(int(folder.name.rpartition("-")[2]))
        view = task_for(cfg, task, family)
        student = build_model(model_config(cfg, view, family, cfg.student_size))
        student.load_state_dict(torch.load(path, map_location=CPU, weights_only=True))
        probs.append(soften(predict_logits(student, view.public_x, device=CPU),
                            cfg.temperature))
    if not probs:
        raise ConfigError(f"{run_dir}/clients holds no student.pt: no ensemble to distil "
                          "from; use --source teacher.")
    return torch.stack(probs).mean(0)


def _text_model(cfg: FedConfig, task: PreparedTask, teacher: torch.nn.Module) -> TextModel:
    """The teacher as it would be shipped: with its encoder when it reads features."""
    if cfg.teacher_family not in FEATURE_FAMILIES:
        return TextModel(teacher, project_tokenize(task.tokenizer_json, cfg.max_len),
                         cfg.teacher_family)
    from transformers import AutoModel, AutoTokenizer

    from common.models.pretrained import resolve_backbone

    source = resolve_backbone(cfg.backbone).source
    encoder = AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    encoder.pooler = None  # mean pooling reads the last hidden state only
    pad_id = int(AutoTokenizer.from_pretrained(source).pad_token_id or 0)
    return TextModel(ProbeOnEncoder(encoder, teacher, pad_id).eval(),
                     HFTokenize(source, cfg.max_len), "pretrained")
