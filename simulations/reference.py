"""The simple thing to beat: TF-IDF + logistic regression on the teacher's labels.

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


def _fit_and_score(texts: Any, labels: Any, test: Any) -> float:
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(vectorizer.fit_transform(texts),
                                                          labels)
    predicted = model.predict(vectorizer.transform(test.texts))
    return float(np.mean(predicted == np.asarray(test.labels)))
