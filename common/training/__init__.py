"""Training loops shared by the client, the coordinator's teacher and the baselines.

They live once here (DESIGN.md) so that a baseline and the federation train a student
the same way, and only what is exchanged differs.
"""

from common.training.dp import DpTrainResult, dp_train, steps_per_epoch
from common.training.loops import distill, evaluate_accuracy, predict_logits, train_supervised

__all__ = [
    "DpTrainResult",
    "distill",
    "dp_train",
    "evaluate_accuracy",
    "predict_logits",
    "steps_per_epoch",
    "train_supervised",
]
