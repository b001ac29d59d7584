"""What the compression steps act on, gathered once from a finished run."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from common.compress.text_model import TextModel
from common.models import ModelConfig


@dataclass(frozen=True)
class Subject:
    """The deployable teacher and the public and test data its compression uses."""

    model: TextModel  # the teacher end to end (with its encoder when it reads features)
    public_texts: list[str]  # what a student is distilled on (no ε: public texts)
    public_ids: Tensor | None  # from-scratch families: the public texts as the run's ids
    public_targets: Tensor  # softened predictions (teacher or ensemble) on public_texts
    public_features: Tensor | None  # pretrained: the teacher's pooled features on them
    vocab_texts: list[str]  # the non-private texts whose tokens a pruned vocabulary keeps
    test_texts: list[str]
    test_y: Tensor
    temperature: float
    model_config: ModelConfig  # the teacher's config (a from-scratch student starts there)
    seed: int = 0
