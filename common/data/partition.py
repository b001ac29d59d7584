"""Partitioning the private pool across clients: IID, Dirichlet, shards, natural key.

Written with numpy rather than flwr-datasets' partitioners: those need Hugging Face
``datasets`` (pyarrow, aiohttp, ...) and, in our environment, would downgrade
huggingface_hub under ``tokenizers``; their ``NaturalIdPartitioner`` also gives one
partition per id, while we need ``num_clients`` groups of ids (e.g. many movies per
client). The schemes follow the usual definitions:

- ``iid``: a seeded permutation cut into near-equal parts;
- ``dirichlet``: per class, the class's examples are divided among clients in proportions
  drawn from Dir(α·1) (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data
  distribution"); small α = few classes per client, large α = close to IID;
- ``shards``: examples sorted by label, cut into ``num_clients * shards_per_client``
  shards, each client gets ``shards_per_client`` random shards (McMahan et al. 2017);
- ``natural``: whole groups (movie, module, week) go to clients, largest group first to
  the smallest client, so sizes stay balanced while no group is split.

:func:`time_blocks` cuts the windows of a time series into contiguous stretches instead
(forecasting): overlapping windows drawn at random would put one private row with
several clients.

Every scheme returns disjoint, complete, sorted int64 index arrays, each non-empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.errors import ConfigError, DataError

Scheme = Literal["iid", "dirichlet", "shards", "natural"]
SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards", "natural")


def partition(
    labels_or_n: np.ndarray | Sequence[int] | int,
    num_clients: int,
    *,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    shards_per_client: int = 2,
    groups: np.ndarray | Sequence[int] | None = None,
    seed: int = 0,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Split example indices among ``num_clients`` clients.

    Parameters
    ----------
    labels_or_n
        Integer class labels (N,) of the private pool, or just N where labels are not
        needed (``iid``, ``natural``).
    num_clients
        Number of clients (each gets at least ``min_size`` examples).
    scheme
        ``iid``, ``dirichlet``, ``shards`` or ``natural`` (default: iid).
    alpha
        Dirichlet concentration, > 0 (default: 0.5).
    shards_per_client
        Shards per client for ``shards`` (default: 2).
    groups
        Natural key per example for ``natural`` (default: None).
    seed
        Seed; the same arguments and seed give the same partition (default: 0).
    min_size
        Smallest acceptable client size; Dirichlet redraws until it holds (default: 1).
    max_tries
        Dirichlet redraws before giving up with a DataError (default: 100).
    """
    labels, n = _labels_and_n(labels_or_n)
    _check_common(n, num_clients, scheme, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        parts = _dirichlet(
            _need_labels(labels, scheme), num_clients, alpha, rng, min_size, max_tries
        )
    elif scheme == "shards":
        parts = _shards(_need_labels(labels, scheme), num_clients, shards_per_client, rng)
    else:
        parts = _natural(groups, n, num_clients, rng)
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    small = [k for k, p in enumerate(out) if len(p) < min_size]
    if small:
        raise DataError(
            f"The {scheme} partition left client(s) {small} with fewer than {min_size} "
            f"example(s) (sizes {[len(p) for p in out]}); use fewer clients or another scheme."
        )
    return out


def time_blocks(n: int, num_clients: int, *, gap: int, seed: int = 0) -> list[np.ndarray]:
    """Windows ``0..n-1`` (in time order) cut into ``num_clients`` contiguous blocks.

    ``gap`` windows are dropped before each block after the first, so that with
    ``gap >= ceil((input_len + horizon - 1) / stride)`` no row of the series lies in the
    windows of two clients: each client holds its own stretch of time, as a utility that
    joined the federation with its own years of meter readings would. Which block goes
    to which client is a permutation drawn from the public ``seed``, so client 0 does not
    always hold the oldest stretch.
    """
    usable = n - gap * (num_clients - 1)
    if gap < 0 or num_clients < 1 or usable < num_clients:
        raise DataError(f"{n} windows do not make {num_clients} time blocks separated by "
                        f"{gap} windows; use fewer clients or a longer private segment.")
    sizes = [len(b) for b in np.array_split(np.arange(usable), num_clients)]
    starts = np.cumsum([0, *[size + gap for size in sizes[:-1]]])
    blocks = [np.arange(start, start + size, dtype=np.int64)
              for start, size in zip(starts, sizes, strict=True)]
    order = np.random.default_rng(seed).permutation(num_clients)
    return [blocks[i] for i in order]


def _labels_and_n(labels_or_n: np.ndarray | Sequence[int] | int) -> tuple[np.ndarray | None, int]:
    if isinstance(labels_or_n, int | np.integer):
        return None, int(labels_or_n)
    labels = np.asarray(labels_or_n)
    if labels.ndim != 1:
        # Forecast targets or other non-class labels: only the count matters.
        return None, len(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"Labels must be integer class ids; got dtype {labels.dtype}.")
    if labels.size and labels.min() < 0:
        raise DataError(f"Labels must be non-negative class ids; found {labels.min()}.")
    return labels.astype(np.int64), len(labels)


def _check_common(n: int, num_clients: int, scheme: str, min_size: int) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"Unknown partition scheme {scheme!r}; use one of {SCHEMES}.")
    if not isinstance(num_clients, int | np.integer) or num_clients < 1:
        raise ConfigError(f"num_clients must be a positive integer; got {num_clients!r}.")
    if min_size < 0:
        raise ConfigError(f"min_size must be non-negative; got {min_size}.")
    if n == 0:
        raise DataError("Cannot partition an empty private pool (0 examples).")
    if num_clients * max(min_size, 1) > n:
        raise DataError(
            f"Cannot give {num_clients} clients at least {max(min_size, 1)} example(s) each "
            f"from {n} examples; use at most {n // max(min_size, 1)} clients."
        )


def _need_labels(labels: np.ndarray | None, scheme: str) -> np.ndarray:
    if labels is None:
        raise DataError(
            f"The {scheme} scheme needs integer class labels; this pool has none (language "
            "modelling or forecasting): use scheme='iid' or 'natural'."
        )
    return labels


def _dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int,
    max_tries: int,
) -> list[np.ndarray]:
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(
            f"Dirichlet alpha must be a finite number > 0; got alpha={alpha!r}. Small alpha "
            "(e.g. 0.1) gives skewed label mixes, large alpha (e.g. 100) nearly IID ones."
        )
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= max(min_size, 1):
            return merged
    raise DataError(
        f"Dirichlet partition with alpha={alpha} left a client with fewer than "
        f"{max(min_size, 1)} example(s) in {max_tries} draws ({len(labels)} examples, "
        f"{num_clients} clients); raise alpha or use fewer clients."
    )


def _shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if shards_per_client < 1:
        raise ConfigError(f"shards_per_client must be at least 1; got {shards_per_client}.")
    n_shards = num_clients * shards_per_client
    if n_shards > len(labels):
        raise DataError(
            f"{num_clients} clients x {shards_per_client} shards = {n_shards} shards exceed the "
            f"{len(labels)} examples; lower shards_per_client or the number of clients."
        )
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, n_shards)
    order = rng.permutation(n_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in order]


def _natural(
    groups: np.ndarray | Sequence[int] | None, n: int, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if groups is None:
        raise DataError(
            "The natural scheme needs groups= (a natural key per example, e.g. movie id); this "
            "dataset has none: use scheme='iid', 'dirichlet' or 'shards'."
        )
    keys = np.asarray(groups)
    if len(keys) != n:
        raise DataError(f"groups has {len(keys)} entries for {n} examples; they must match.")
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if len(unique) < num_clients:
        raise DataError(
            f"The natural partition needs at least one group per client: {len(unique)} groups "
            f"for {num_clients} clients; use at most {len(unique)} clients."
        )
    # Largest group first onto the currently smallest client (ties broken by a seeded order).
    order = rng.permutation(len(unique))
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(num_clients, dtype=np.int64)
    owner = np.empty(len(unique), dtype=np.int64)
    for g in order:
        k = int(np.argmin(load))
        owner[g] = k
        load[k] += counts[g]
    client_of = owner[inverse]
    return [np.flatnonzero(client_of == k) for k in range(num_clients)]


# ------------------------------------------------------------------ statistics


def label_entropy(counts: np.ndarray | Sequence[int]) -> float:
    """Shannon entropy (bits) of a label histogram; 0 for a single class or empty."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log2(p)).sum())


def partition_stats(
    parts: Sequence[np.ndarray],
    labels: np.ndarray | Sequence[int] | None = None,
    *,
    num_classes: int | None = None,
) -> list[dict[str, Any]]:
    """Per client: ``client``, ``size`` and, with class labels, ``label_counts`` (list of
    length num_classes) and ``label_entropy`` (bits)."""
    lab = None if labels is None else np.asarray(labels)
    if lab is not None and (lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer)):
        lab = None  # regression targets: sizes only
    k = (
        num_classes
        if num_classes is not None
        else (int(lab.max()) + 1 if lab is not None and lab.size else 0)
    )
    stats = []
    for client, idx in enumerate(parts):
        row: dict[str, Any] = {"client": client, "size": int(len(idx))}
        if lab is not None:
            counts = np.bincount(lab[np.asarray(idx, dtype=np.int64)], minlength=k)
            row["label_counts"] = counts.tolist()
            row["label_entropy"] = label_entropy(counts)
        stats.append(row)
    return stats


def summarize_partition(stats: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Sizes (min, max, mean, std) and mean per-client label entropy, for reports."""
    sizes = np.asarray([s["size"] for s in stats], dtype=np.float64)
    out = {
        "clients": float(len(sizes)),
        "size_min": float(sizes.min()),
        "size_max": float(sizes.max()),
        "size_mean": float(sizes.mean()),
        "size_std": float(sizes.std()),
    }
    if stats and "label_entropy" in stats[0]:
        out["mean_label_entropy"] = float(np.mean([s["label_entropy"] for s in stats]))
    return out


def partition_table(
    stats: Sequence[dict[str, Any]],
    *,
    class_names: Sequence[str] | None = None,
    title: str = "Partition",
    max_classes: int = 12,
) -> Any:
    """A rich Table of the per-client sizes and label histograms."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    has_labels = bool(stats) and "label_counts" in stats[0]
    n_classes = len(stats[0]["label_counts"]) if has_labels else 0
    shown = min(n_classes, max_classes)
    names = list(class_names or [str(c) for c in range(n_classes)])
    for c in range(shown):
        table.add_column(names[c], justify="right")
    if n_classes > shown:
        table.add_column("...", justify="right")
    if has_labels:
        table.add_column("entropy (bits)", justify="right")
    for row in stats:
        cells = [str(row["client"]), str(row["size"])]
        if has_labels:
            counts = row["label_counts"]
            cells += [str(v) for v in counts[:shown]]
            if n_classes > shown:
                cells.append(str(sum(counts[shown:])))
            cells.append(f"{row['label_entropy']:.2f}")
        table.add_row(*cells)
    return table


def plot_partition(
    stats: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "Client partition",
) -> Path:
    """Stacked bars of each client's label counts (or sizes) saved to ``path`` (PNG/SVG/PDF)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    clients = np.arange(len(stats))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(stats)), 4.0))
    try:
        if stats and "label_counts" in stats[0]:
            counts = np.asarray([s["label_counts"] for s in stats])  # (clients, classes)
            names = list(class_names or [str(c) for c in range(counts.shape[1])])
            bottom = np.zeros(len(stats))
            cmap = plt.get_cmap("tab20")
            for c in range(counts.shape[1]):
                ax.bar(clients, counts[:, c], bottom=bottom, label=names[c], color=cmap(c % 20))
                bottom += counts[:, c]
            if counts.shape[1] <= 20:
                ax.legend(
                    title="class", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left"
                )
        else:
            ax.bar(clients, [s["size"] for s in stats])
        ax.set_xlabel("client")
        ax.set_ylabel("examples")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
