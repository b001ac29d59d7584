"""The table of registered datasets and the ``register`` decorator that fills it.

Apart from registry.py so that the built-in loaders (builtin.py) can register themselves
without importing the registry that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.data.roles import DatasetRoles
from common.errors import ConfigError

Loader = Callable[..., DatasetRoles]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader, task, a one-line description, and, for the real
    datasets of the shared folder, the sub-folder it needs (None for offline defaults)."""

    name: str
    loader: Loader
    task: str
    description: str
    shared: str | None = None


_REGISTRY: dict[str, DatasetEntry] = {}
SPEC_PREFIXES: tuple[str, ...] = ("csv:", "tsv:", "jsonl:", "text:", "hf:")


def register(
    name: str, *, task: str, description: str, shared: str | None = None
) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(*, seed, cache_dir, **options)`` under ``name``."""

    def decorate(loader: Loader) -> Loader:
        if name in _REGISTRY and _REGISTRY[name].loader is not loader:
            raise ConfigError(f"A dataset named {name!r} is already registered.")
        _REGISTRY[name] = DatasetEntry(name, loader, task, description, shared)
        return loader

    return decorate
