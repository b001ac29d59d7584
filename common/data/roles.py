"""The four data roles of a federation, and the seeded splits that build them.

DESIGN.md ("Data roles") fixes four sets: a *private* pool that is partitioned across
clients (labels used only under DP-SGD), a *public* transfer set whose labels are never
used, a small labeled *teacher* set held by the coordinator, and a *test* set. Every
dataset, built in or brought by a user, is turned into a :class:`DatasetRoles` here so
that the rest of the project sees one shape.

Arrays inside a :class:`Split` are read-only copies: a role is shared by the coordinator,
the simulated clients and the baselines, and a stray in-place edit in one of them must not
silently change what the others see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from common.errors import DataError

Task = Literal["classification", "image", "lm", "forecast"]
TASKS: tuple[str, ...] = ("classification", "image", "lm", "forecast")
ROLE_NAMES: tuple[str, ...] = ("private", "public", "teacher", "test")


def _frozen_array(values: Any, dtype: Any = None) -> np.ndarray:
    """A read-only copy, so that no holder of a role can edit it under the others."""
    arr = np.array(values, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Split:
    """One role's examples.

    Parameters
    ----------
    texts
        The documents or sentences of a text task (default: None for image/series tasks).
    labels
        Integer class ids (N,) for classification; target windows (N, horizon, C_out) for
        forecasting; None where labels do not exist (language modelling) or must not be
        reachable (the public transfer set).
    features
        Images (N, C, H, W) float32 in [0, 1], or input windows (N, input_len, C_in)
        float32 for forecasting (default: None).
    groups
        A natural key per example (movie id, source module, week), used by the
        ``natural`` partition scheme (default: None).
    """

    texts: tuple[str, ...] | None
    labels: np.ndarray | None
    features: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.texts is None and self.features is None:
            raise DataError("A split needs texts or features; both are None.")
        if self.texts is not None:
            object.__setattr__(self, "texts", tuple(str(t) for t in self.texts))
        for name in ("labels", "features", "groups"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _frozen_array(value))
        lengths = {
            name: len(value)
            for name in ("texts", "labels", "features", "groups")
            if (value := getattr(self, name)) is not None
        }
        if len(set(lengths.values())) > 1:
            raise DataError(f"A split's fields disagree in length: {lengths}.")

    def __len__(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        assert self.features is not None  # checked in __post_init__
        return len(self.features)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Split:
        """The examples at ``indices`` (for example one client's partition)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise DataError(
                f"Subset indices must lie in [0, {len(self)}); got {idx.min()}..{idx.max()}."
            )
        return Split(
            texts=None if self.texts is None else tuple(self.texts[i] for i in idx),
            labels=None if self.labels is None else self.labels[idx],
            features=None if self.features is None else self.features[idx],
            groups=None if self.groups is None else self.groups[idx],
        )

    def without_labels(self) -> Split:
        """The same examples with the labels dropped (what the public set may carry)."""
        return Split(self.texts, None, self.features, self.groups)


@dataclass(frozen=True, eq=False)
class DatasetRoles:
    """A dataset cut into the four roles of DESIGN.md.

    ``public.labels`` is always None: the public transfer set's labels are never used,
    so they are not handed out at all. ``num_classes``/``class_names`` describe the
    label space of classification/image tasks (0 and () for lm/forecast). ``info``
    records where the data came from, the sizes and the options used to build the roles.
    """

    name: str
    task: Task
    num_classes: int
    class_names: tuple[str, ...]
    private: Split
    public: Split
    teacher: Split
    test: Split
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(
                f"Dataset {self.name!r}: task must be one of {TASKS}; got {self.task!r}."
            )
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        for role in ROLE_NAMES:
            if len(self.role(role)) == 0:
                raise DataError(
                    f"Dataset {self.name!r}: the {role} split is empty. Provide more data or "
                    "change the split fractions so that every role gets examples."
                )
        if self.public.labels is not None:
            raise DataError(
                f"Dataset {self.name!r}: the public transfer set must carry no labels "
                "(they are never used); build it with Split.without_labels()."
            )
        if self.task in ("classification", "image"):
            for role in ("private", "teacher", "test"):
                labels = self.role(role).labels
                if labels is None:
                    raise DataError(f"Dataset {self.name!r}: the {role} split has no labels.")
                if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                    raise DataError(
                        f"Dataset {self.name!r}: {role} labels must lie in "
                        f"[0, {self.num_classes}); got {labels.min()}..{labels.max()}."
                    )

    def role(self, name: str) -> Split:
        """The split of role ``name`` (private, public, teacher or test)."""
        if name not in ROLE_NAMES:
            raise DataError(f"Unknown role {name!r}; the roles are {ROLE_NAMES}.")
        split: Split = getattr(self, name)
        return split

    def sizes(self) -> dict[str, int]:
        """Number of examples per role, in the order private, public, teacher, test."""
        return {role: len(self.role(role)) for role in ROLE_NAMES}


# ------------------------------------------------------------------ seeded splitting


def check_fractions(fractions: Mapping[str, float]) -> None:
    """Each fraction in [0, 1) and their sum below 1, so that the private pool is left."""
    for name, value in fractions.items():
        if not (0.0 <= float(value) < 1.0):
            raise DataError(f"{name} must lie in [0, 1); got {value}.")
    total = sum(float(v) for v in fractions.values())
    if total >= 1.0:
        raise DataError(
            f"The split fractions {dict(fractions)} sum to {total:.3f}; they must sum to less "
            "than 1 so that some examples are left for the private pool."
        )


def fraction_split(
    n: int,
    fractions: Sequence[float],
    *,
    rng: np.random.Generator,
    stratify: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Cut ``range(n)`` into ``len(fractions) + 1`` disjoint index sets; the last is the rest.

    With ``stratify`` (integer labels) the cut is made per class, so a small teacher set
    still sees every class in proportion. Each returned array is sorted.
    """
    strata = (
        [np.arange(n)]
        if stratify is None
        else [np.flatnonzero(stratify == c) for c in np.unique(stratify)]
    )
    pieces: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    bounds = np.cumsum([0.0, *fractions])
    for stratum in strata:
        perm = rng.permutation(stratum)
        cuts = np.round(bounds * len(perm)).astype(int)
        for k in range(len(fractions)):
            pieces[k].append(perm[cuts[k] : cuts[k + 1]])
        pieces[-1].append(perm[cuts[-1] :])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in pieces]


def group_holdout(groups: np.ndarray, fraction: float, *, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the examples whose group falls in a held-out ``fraction`` of groups.

    Used so that test movies (or modules) are unseen during training.
    """
    unique = np.unique(groups)
    n_held = int(round(fraction * len(unique)))
    held = rng.permutation(unique)[:n_held]
    return np.isin(groups, held)


def labeled_roles(
    name: str,
    task: Task,
    class_names: Sequence[str],
    pool: Split,
    *,
    seed: int,
    test: Split | None = None,
    teacher: Split | None = None,
    test_fraction: float = 0.2,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
    info: Mapping[str, Any] | None = None,
) -> DatasetRoles:
    """Roles for a labeled pool (text classification or images), stratified by label.

    Roles given explicitly (a ``test`` file, a ``dev`` file used as the teacher set) are
    taken as they are and their fraction is not drawn from the pool; the remaining
    fractions are fractions of ``pool``. The private pool is what is left.
    """
    if pool.labels is None:
        raise DataError(f"Dataset {name!r}: the labeled pool has no labels.")
    fr = {
        "test_fraction": 0.0 if test is not None else test_fraction,
        "teacher_fraction": 0.0 if teacher is not None else teacher_fraction,
        "public_fraction": public_fraction,
    }
    check_fractions(fr)
    rng = np.random.default_rng(seed)
    te_idx, tc_idx, pu_idx, pr_idx = fraction_split(
        len(pool), list(fr.values()), rng=rng, stratify=pool.labels
    )
    roles = DatasetRoles(
        name=name,
        task=task,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        private=pool.subset(pr_idx),
        public=pool.subset(pu_idx).without_labels(),
        teacher=teacher if teacher is not None else pool.subset(tc_idx),
        test=test if test is not None else pool.subset(te_idx),
        info={},
    )
    return with_info(roles, {**(info or {}), "seed": seed, **fr})


def with_info(roles: DatasetRoles, info: Mapping[str, Any]) -> DatasetRoles:
    """Attach sizes and class balance to ``info`` (so ``describe`` and reports can quote them)."""
    full: dict[str, Any] = dict(info)
    full["sizes"] = roles.sizes()
    if roles.task in ("classification", "image"):
        full["class_counts"] = {
            role: np.bincount(lab, minlength=roles.num_classes).tolist()
            for role in ROLE_NAMES
            if (lab := roles.role(role).labels) is not None
        }
    return replace(roles, info=full)


def lm_roles(
    name: str,
    documents: Sequence[str],
    *,
    seed: int,
    groups: np.ndarray | None = None,
    test_documents: Sequence[str] | None = None,
    test_fraction: float = 0.1,
    teacher_fraction: float = 0.1,
    public_fraction: float = 0.3,
    info: Mapping[str, Any] | None = None,
) -> DatasetRoles:
    """Roles for a language-modelling corpus, split by document (labels are None)."""
    fr = {
        "test_fraction": 0.0 if test_documents is not None else test_fraction,
        "teacher_fraction": teacher_fraction,
        "public_fraction": public_fraction,
    }
    check_fractions(fr)
    pool = Split(texts=tuple(documents), labels=None, groups=groups)
    if len(pool) == 0:
        raise DataError(f"Dataset {name!r}: the corpus has no documents.")
    rng = np.random.default_rng(seed)
    te_idx, tc_idx, pu_idx, pr_idx = fraction_split(len(pool), list(fr.values()), rng=rng)
    test = pool.subset(te_idx) if test_documents is None else Split(tuple(test_documents), None)
    roles = DatasetRoles(
        name=name,
        task="lm",
        num_classes=0,
        class_names=(),
        private=pool.subset(pr_idx),
        public=pool.subset(pu_idx),
        teacher=pool.subset(tc_idx),
        test=test,
        info={},
    )
    chars = {r: sum(len(t) for t in roles.role(r).texts or ()) for r in ROLE_NAMES}
    return with_info(roles, {**(info or {}), "seed": seed, **fr, "characters": chars})


def chunk_text(text: str, max_chars: int, *, separator: str = "\n") -> list[str]:
    """Cut ``text`` into documents of at most ~``max_chars`` at ``separator`` boundaries.

    A single piece longer than ``max_chars`` is cut hard, so no document is unbounded.
    """
    if max_chars < 1:
        raise DataError(f"Document length must be at least 1 character; got {max_chars}.")
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for piece in text.split(separator):
        while len(piece) > max_chars:
            docs.append(piece[:max_chars])
            piece = piece[max_chars:]
        if current and size + len(piece) + len(separator) > max_chars:
            docs.append(separator.join(current))
            current, size = [], 0
        current.append(piece)
        size += len(piece) + len(separator)
    if current:
        docs.append(separator.join(current))
    return [d for d in docs if d.strip()]


def forecast_roles(
    name: str,
    series: np.ndarray,
    column_names: Sequence[str],
    *,
    target_columns: Sequence[str] | None = None,
    input_len: int = 96,
    horizon: int = 24,
    stride: int = 1,
    boundaries: Sequence[int] | None = None,
    fractions: Sequence[float] = (0.5, 0.2, 0.1, 0.2),
    group_rows: int = 24 * 7,
    scale: bool = True,
    info: Mapping[str, Any] | None = None,
) -> DatasetRoles:
    """Roles for a multivariate series (T, C): windows cut from chronological segments.

    The series is cut, in time order, into private | public | teacher | test segments
    (by ``boundaries`` = the three row indices where a segment starts, or by
    ``fractions``), so the test segment always lies in the future of everything else.
    Windows (``input_len`` rows in, ``horizon`` rows of ``target_columns`` out) never cross
    a segment boundary. With ``scale`` every channel is standardised by the mean and
    standard deviation of the public and teacher segments: data the coordinator may see,
    so that no statistic of the private segment leaks; they are kept in ``info["scaler"]``
    to undo the scaling. ``groups`` = window start // ``group_rows`` (default: one week of
    hourly rows) for the ``natural`` partition.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2 or len(column_names) != series.shape[1]:
        raise DataError(
            f"Dataset {name!r}: expected a (T, C) series with {len(column_names)} named "
            f"columns; got shape {series.shape}."
        )
    if input_len < 1 or horizon < 1 or stride < 1:
        raise DataError(
            f"input_len, horizon and stride must be at least 1; got {input_len}, {horizon}, "
            f"{stride}."
        )
    if not np.isfinite(series).all():
        raise DataError(f"Dataset {name!r}: the series holds NaN or infinite values; clean it.")
    names = list(column_names)
    targets = list(target_columns) if target_columns else names
    missing = [t for t in targets if t not in names]
    if missing:
        raise DataError(f"Dataset {name!r}: target column(s) {missing} not among {names}.")
    t_idx = [names.index(t) for t in targets]

    n_rows = len(series)
    if boundaries is None:
        if len(fractions) != 4 or abs(sum(fractions) - 1.0) > 1e-6:
            raise DataError(
                f"fractions must be four numbers (private, public, teacher, test) summing to "
                f"1; got {tuple(fractions)}."
            )
        boundaries = [int(round(c * n_rows)) for c in np.cumsum(fractions)[:3]]
    edges = [0, *(int(b) for b in boundaries), n_rows]
    if len(edges) != 5 or any(a >= b for a, b in zip(edges[:-1], edges[1:], strict=True)):
        raise DataError(
            f"Dataset {name!r}: segment boundaries must be three increasing row indices "
            f"inside (0, {n_rows}); got {list(boundaries)}."
        )

    mean = np.zeros(series.shape[1])
    std = np.ones(series.shape[1])
    if scale:
        visible = series[edges[1] : edges[3]]
        mean = visible.mean(axis=0)
        std = visible.std(axis=0)
        std[std == 0] = 1.0
    scaled = ((series - mean) / std).astype(np.float32)

    window = input_len + horizon
    splits: list[Split] = []
    for role, lo, hi in zip(ROLE_NAMES, edges[:-1], edges[1:], strict=True):
        starts = np.arange(lo, hi - window + 1, stride)
        if len(starts) == 0:
            raise DataError(
                f"Dataset {name!r}: the {role} segment (rows {lo}..{hi}, {hi - lo} rows) is "
                f"shorter than one window ({input_len} + {horizon} rows); lower input_len or "
                "horizon, or provide a longer series."
            )
        x = np.stack([scaled[s : s + input_len] for s in starts])  # (N, input_len, C)
        y = np.stack([scaled[s + input_len : s + window, t_idx] for s in starts])  # (N, H, T)
        splits.append(
            Split(
                texts=None,
                labels=None if role == "public" else y,
                features=x,
                groups=starts // group_rows,
            )
        )
    roles = DatasetRoles(
        name=name,
        task="forecast",
        num_classes=0,
        class_names=(),
        private=splits[0],
        public=splits[1],
        teacher=splits[2],
        test=splits[3],
        info={},
    )
    return with_info(
        roles,
        {
            **(info or {}),
            "columns": names,
            "target_columns": targets,
            "input_len": input_len,
            "horizon": horizon,
            "stride": stride,
            "segment_rows": dict(
                zip(ROLE_NAMES, zip(edges[:-1], edges[1:], strict=True), strict=True)
            ),
            "scaler": {"mean": mean.tolist(), "std": std.tolist()},
            "group_rows": group_rows,
        },
    )
