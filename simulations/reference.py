"""The simple thing to beat: TF-IDF (or, for images, pixel) + logistic regression on the
teacher's labels; for forecasting, the seasonal-naive forecast (no training at all).

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
from common.errors import DataError
from common.metrics import mae, mse


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


def seasonal_naive_reference(cfg: FedConfig, *, pooled: bool = False) -> dict[str, Any]:
    """MSE and MAE on the test windows of the seasonal-naive forecast: each step repeats
    the target's value one ``season`` earlier (for an hourly series, the same hour of the
    day before), in the same standardised units as the federation's scores. It needs no
    labels, so ``pooled`` changes nothing (the argument keeps one signature for all)."""
    del pooled
    season = cfg.season or 24  # hourly series: the same hour of the day before
    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    x, y = np.asarray(roles.test.features), np.asarray(roles.test.labels)  # (N,T,C), (N,H,O)
    columns = list(roles.info["columns"])
    targets = [columns.index(c) for c in roles.info["target_columns"]]
    if x.shape[1] < season:
        raise DataError(f"dataset={cfg.dataset!r}: input windows of {x.shape[1]} steps are "
                        f"shorter than the season ({season}); lengthen input_len.")
    last = x[:, -season:, :][:, :, targets]  # (N, season, O): the last season seen
    steps = np.arange(y.shape[1]) % season
    forecast = last[:, steps, :]  # (N, H, O)
    return {"seasonal_naive_mse": mse(y, forecast), "seasonal_naive_mae": mae(y, forecast),
            "season": season, "test_windows": len(y)}


def reference_for(task: str) -> Any:
    """The reference of a dataset's task: TF-IDF, pixels or seasonal naive."""
    return {"image": pixel_reference, "forecast": seasonal_naive_reference}.get(
        task, tfidf_reference)
