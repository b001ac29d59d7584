"""The simple thing to beat: TF-IDF (or, for images, pixel) + logistic regression on the
teacher's labels.

``fedistill simulate`` reports it beside the federation, on the same teacher labels and
the same test set, so a user who brings a dataset sees at once whether the federation
(which also draws on the clients' private data, under DP) beat a one-line baseline that
sees only the coordinator's labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from common.config import FedConfig
from common.data import load_dataset


def tfidf_reference(cfg: FedConfig, *, pooled: bool = False) -> dict[str, Any]:
    """Test accuracy of TF-IDF (word 1-2 grams) + logistic regression on the teacher set.

    ``pooled`` adds the same model on the teacher and private labels pooled, without DP:
    a reference no private federation is owed, for the results page only.
    """
    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    out = {"tfidf_lr_teacher_labels": _fit_and_score(roles.teacher.texts, roles.teacher.labels,
                                                     roles.test),
           "teacher_labels": len(roles.teacher.texts)}
    if pooled:
        texts = tuple(roles.teacher.texts) + tuple(roles.private.texts)
        labels = np.concatenate([np.asarray(roles.teacher.labels),
                                 np.asarray(roles.private.labels)])
        out["tfidf_lr_all_labels"] = _fit_and_score(texts, labels, roles.test)
    return out


def probe_reference(cfg: FedConfig) -> dict[str, Any]:
    """Logistic regression on the frozen backbone's features: on the teacher's labels, and
    on the teacher's and every private label pooled, without DP.

    The gap between the two is the most the private labels can add to a linear probe on
    these features, whatever the federation does: the ceiling of its private
    contribution (for the results page; features come from the cache).
    """
    from common.task import prepare_features  # transformers loads only if used

    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    private, _, teacher, test = prepare_features(cfg.dataset, cfg.seed, cfg.backbone,
                                                 cfg.max_len, cfg.encoder_dtype)
    y_teacher, y_private = np.asarray(roles.teacher.labels), np.asarray(roles.private.labels)

    def score(x: Any, y: np.ndarray) -> float:
        model = LogisticRegression(max_iter=3000).fit(np.asarray(x), y)
        return float(model.score(np.asarray(test), np.asarray(roles.test.labels)))

    return {"probe_lr_teacher_labels": score(teacher, y_teacher),
            "probe_lr_all_labels": score(np.concatenate([teacher, private]),
                                         np.concatenate([y_teacher, y_private])),
            "teacher_labels": len(y_teacher)}


def pixel_reference(cfg: FedConfig, *, pooled: bool = False) -> dict[str, Any]:
    """Test accuracy of logistic regression on raw pixels of the teacher's images
    (``pooled``: with the private labels too, without DP, as :func:`tfidf_reference`)."""
    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    splits = (roles.teacher, roles.private) if pooled else (roles.teacher,)
    out = {"pixel_lr_teacher_labels": _fit_pixels(splits[:1], roles.test),
           "teacher_labels": len(roles.teacher)}
    if pooled:
        out["pixel_lr_all_labels"] = _fit_pixels(splits, roles.test)
    return out


def _fit_pixels(splits: tuple[Any, ...], test: Any) -> float:
    def flat(split: Any) -> np.ndarray:
        return np.asarray(split.features).reshape(len(split), -1)

    model = LogisticRegression(max_iter=3000).fit(
        np.concatenate([flat(s) for s in splits]),
        np.concatenate([np.asarray(s.labels) for s in splits]))
    return float(model.score(flat(test), np.asarray(test.labels)))


def _fit_and_score(texts: Any, labels: Any, test: Any) -> float:
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(vectorizer.fit_transform(texts),
                                                          labels)
    predicted = model.predict(vectorizer.transform(test.texts))
    return float(np.mean(predicted == np.asarray(test.labels)))
