"""The simple thing to beat: TF-IDF (or, for images, pixel) + logistic regression on the
teacher's labels; for forecasting, the seasonal-naive forecast (no training at all); for
language modelling, a smoothed bigram model counted on the teacher's windows.

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


def linear_reference(cfg: FedConfig, *, pooled: bool = False,
                     ridge: float = 1e-3) -> dict[str, Any]:
    """MSE and MAE on the test windows of a ridge regression of the seasonal-naive residual
    on the whole input window (closed form, no DP): the simple non-private forecaster,
    fitted on the teacher's windows, and with ``pooled`` on the teacher's and every
    private window together (a reference no private federation is owed)."""
    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    season = cfg.season or 24
    splits = (roles.teacher, roles.private) if pooled else (roles.teacher,)
    out = {"teacher_windows": len(roles.teacher)}
    for key, chosen in (("teacher_labels", splits[:1]), ("all_labels", splits)):
        if key == "all_labels" and not pooled:
            continue
        x = np.concatenate([np.asarray(s.features) for s in chosen])
        y = np.concatenate([np.asarray(s.labels) for s in chosen])
        forecast = _ridge_forecast(x, y, np.asarray(roles.test.features), season, ridge)
        test_y = np.asarray(roles.test.labels)
        out[f"linear_{key}_mse"] = mse(test_y, forecast)
        out[f"linear_{key}_mae"] = mae(test_y, forecast)
    return out


def _ridge_forecast(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, season: int,
                    ridge: float) -> np.ndarray:
    """Fit residual = W·window + b on (x, y); forecast the test windows (N, H, O)."""
    def naive(w: np.ndarray) -> np.ndarray:
        return w[:, -season:, -y.shape[2]:][:, np.arange(y.shape[1]) % season]

    def design(w: np.ndarray) -> np.ndarray:
        return np.concatenate([w.reshape(len(w), -1), np.ones((len(w), 1))], axis=1)

    a, r = design(x), (y - naive(x)).reshape(len(y), -1)
    weights = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ r)
    return naive(test_x) + (design(test_x) @ weights).reshape(len(test_x), *y.shape[1:])


def bigram_reference(cfg: FedConfig, *, smoothing: float = 0.1) -> dict[str, Any]:
    """Test perplexity and token accuracy of an add-``smoothing`` bigram model over the
    run's tokens, counted on the teacher's windows (the coordinator's own text), and of
    the unigram model beside it: what a model with one token of context reaches."""
    from common.distill.next_tokens import perplexity, token_accuracy
    from common.task import prepare_task

    task = prepare_task(cfg.dataset, cfg.seed, cfg.vocab_size, cfg.max_len)
    v = task.vocab_size
    prev, nxt = task.teacher_x.numpy().ravel(), task.teacher_y.numpy().ravel()
    counts = np.full((v, v), smoothing)
    np.add.at(counts, (prev, nxt), 1.0)
    bigram = counts / counts.sum(axis=1, keepdims=True)  # (V, V): row = previous token
    unigram = np.bincount(nxt, minlength=v) + smoothing
    x, y = task.test_x.numpy(), task.test_y.numpy()
    rows = bigram[x]  # (N, T, V)
    flat = np.broadcast_to(unigram / unigram.sum(), rows.shape)
    return {"bigram_perplexity": perplexity(y, rows), "bigram_token_accuracy":
            token_accuracy(y, rows), "unigram_perplexity": perplexity(y, flat),
            "teacher_windows": len(task.teacher_x)}


def reference_for(task: str) -> Any:
    """The reference of a dataset's task: TF-IDF, pixels, seasonal naive or bigrams."""
    return {"image": pixel_reference, "forecast": seasonal_naive_reference,
            "lm": bigram_reference}.get(task, tfidf_reference)
