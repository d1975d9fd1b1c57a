"""The loaded models of one process, with an explicit owner.

The front door that handles calls owns one: the MCP server keeps its cache for its lifetime, so models stay
warm between calls; the CLI makes one per command. Keys name everything that decides the weights (the model
directory, a checkpoint's path and modification stamp, how an adapter is applied, weight processing), so a
rewritten checkpoint or another session's model is never served from a stale entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

MODELS = 2  # a base and one checkpoint: every analysis compares exactly two models
SAES = 8  # SAEs are small beside models; a session may hold one per layer


class _Lru:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()


class ModelCache:
    """At most MODELS models and SAES SAEs, least recently used evicted first.

    Room is made before a load starts, so a third model never coexists with two cached ones. Loads are
    serialised (one lock): two MCP calls asking for the same checkpoint load it once.
    """

    def __init__(self, models: int = MODELS, saes: int = SAES) -> None:
        self._lock = threading.RLock()
        self._models = _Lru(models)
        self._saes = _Lru(saes)

    def model(self, key: Hashable, load: Callable[[], T], *, keep: tuple[Hashable, ...] = ()) -> T:
        """The cached model under `key`, else `load()` after evicting down to room for it (never `keep`)."""
        return self._get(self._models, key, load, keep)

    def sae(self, key: Hashable, load: Callable[[], T]) -> T:
        return self._get(self._saes, key, load, ())

    def _get(self, lru: _Lru, key: Hashable, load: Callable[[], T], keep: tuple[Hashable, ...]) -> T:
        with self._lock:
            if key in lru.entries:
                lru.entries.move_to_end(key)
                return lru.entries[key]
            for old in [k for k in lru.entries if k not in keep]:
                if len(lru.entries) < lru.capacity:
                    break
                del lru.entries[old]
            value = load()
            lru.entries[key] = value
            while len(lru.entries) > lru.capacity:
                lru.entries.popitem(last=False)
            return value

    def models(self) -> list[Any]:
        """The models held now, least recently used first."""
        with self._lock:
            return list(self._models.entries.values())

    def saes(self) -> list[Any]:
        with self._lock:
            return list(self._saes.entries.values())

    def clear(self) -> None:
        with self._lock:
            self._models.entries.clear()
            self._saes.entries.clear()
