"""The simple baselines shown beside the federation (#15): TF-IDF + LR, a user's folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.config import FedConfig
from common.data import load_dataset
from simulations.reference import tfidf_reference
from simulations.report import summary_table

ROOT = Path(__file__).resolve().parent.parent


def test_tfidf_on_the_teacher_labels_beats_the_majority_class_and_pooled_beats_it():
    ref = tfidf_reference(FedConfig(), pooled=True)
    test_y = load_dataset("rotten-tomatoes", seed=0).test.labels
    majority = max(float((test_y == c).mean()) for c in set(test_y.tolist()))
    assert ref["teacher_labels"] == 500
    assert majority + 0.03 < ref["tfidf_lr_teacher_labels"] < ref["tfidf_lr_all_labels"]


def test_the_summary_table_shows_the_reference_row():
    summary = {"method": "federated-distillation", "dataset": "d", "rounds": 1, "clients": 2,
               "wall_seconds": 1.0,
               "final": {"teacher_accuracy": 0.7},
               "privacy": {"epsilon_max": 1.0, "budget": 8.0, "delta": 1e-5},
               "communication": {"bytes_up": 1, "bytes_down": 2},
               "reference": {"tfidf_lr_teacher_labels": 0.66, "teacher_labels": 500}}
    cells = [cell for column in summary_table(summary).columns for cell in column._cells]
    assert "TF-IDF + LR on the teacher's 500 labels" in cells and "0.6600" in cells


def test_the_summary_table_shows_the_teacher_s_sampled_code():
    summary = {"method": "federated-distillation", "dataset": "python-code", "rounds": 1,
               "clients": 2, "wall_seconds": 1.0, "metric": "perplexity",
               "final": {"teacher_perplexity": 7.5},
               "privacy": {"epsilon_max": 1.0, "budget": 8.0, "delta": 1e-5},
               "communication": {"bytes_up": 1, "bytes_down": 2},
               "samples": {"teacher": {"samples": 32, "distinct_2": 0.9, "finished": 20,
                                       "syntax_error_rate": 0.95}}}
    cells = [cell for column in summary_table(summary).columns for cell in column._cells]
    assert "teacher's 32 samples: distinct-2" in cells and "0.9000" in cells
    assert "... syntax-error rate (20 ended)" in cells and "0.9500" in cells


def test_the_stdlib_topic_folder_is_a_four_class_dataset(tmp_path):
    subprocess.run([sys.executable, "-m", "bench.stdlib_topics", str(tmp_path / "topics")],
                   check=True, capture_output=True, cwd=ROOT)
    roles = load_dataset(str(tmp_path / "topics"), seed=0)
    assert roles.num_classes == 4
    assert len(roles.private.texts) > 500 and len(roles.teacher.texts) > 100
