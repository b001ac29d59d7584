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


def tfidf_reference(cfg: FedConfig) -> dict[str, Any]:
    """Test accuracy of TF-IDF (word 1-2 grams) + logistic regression on the teacher set."""
    roles = load_dataset(cfg.dataset, seed=cfg.seed)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x_train = vectorizer.fit_transform(roles.teacher.texts)
    model = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, roles.teacher.labels)
    predicted = model.predict(vectorizer.transform(roles.test.texts))
    return {"tfidf_lr_teacher_labels": float(np.mean(predicted == np.asarray(roles.test.labels))),
            "teacher_labels": len(roles.teacher.texts)}
