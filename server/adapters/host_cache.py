"""Host-memory LRU of adapter weights under a byte budget: disk -> here -> device pool."""

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from server.adapters.loader import load_adapter_weights
from server.adapters.types import AdapterError, AdapterRef, AdapterWeights

DEFAULT_BUDGET = 1 << 30


@dataclass(frozen=True, slots=True)
class HostCacheStats:
    hits: int  # get_or_load answered from memory (including waits on another thread's load)
    misses: int  # get_or_load had to load (or wait for a load)
    loads: int  # successful reads from disk
    failures: int  # loads that failed (raised as AdapterError)
    evictions: int  # entries dropped to stay under the budget
    bytes: int  # held now
    entries: int  # adapters held now
    budget: int  # the byte budget


class _Pending:
    """A load in flight: other threads asking for the same adapter wait on it instead of reading again."""

    __slots__ = ("done", "weights", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.weights: AdapterWeights | None = None
        self.error: AdapterError | None = None


class HostCache:
    def __init__(self, base_config, budget_bytes: int = DEFAULT_BUDGET, dtype: torch.dtype = torch.float32,
                 loader: Callable[[AdapterRef, object, torch.dtype], AdapterWeights] = load_adapter_weights):
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0")
        self.base_config = base_config
        self.budget = budget_bytes
        self.dtype = dtype
        self._load = loader
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, AdapterWeights] = OrderedDict()  # ref id -> weights, LRU first
        self._pending: dict[int, _Pending] = {}
        self._bytes = 0
        self._hits = self._misses = self._loads = self._failures = self._evictions = 0

    def get_or_load(self, ref: AdapterRef) -> AdapterWeights:
        with self._lock:
            if (weights := self._entries.get(ref.id)) is not None:
                self._entries.move_to_end(ref.id)
                self._hits += 1
                return weights
            self._misses += 1
            pending = self._pending.get(ref.id)
            owner = pending is None
            if owner:
                pending = self._pending[ref.id] = _Pending()
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.weights
        try:
            weights = self._load(ref, self.base_config, self.dtype)
            if weights.nbytes > self.budget:
                raise AdapterError(f"adapter {ref.name!r}: its weights take {weights.nbytes} bytes, more than the"
                                   f" whole host cache ({self.budget} bytes)")
        except Exception as e:  # a broken file or a failed allocation fails this adapter's requests only
            error = e if isinstance(e, AdapterError) else AdapterError(
                f"adapter {ref.name!r}: loading failed: {type(e).__name__}: {e}")
            with self._lock:
                self._failures += 1
                del self._pending[ref.id]
            pending.error = error
            pending.done.set()
            if error is e:
                raise
            raise error from e
        except BaseException:
            with self._lock:
                del self._pending[ref.id]
            pending.error = AdapterError(f"adapter {ref.name!r}: loading failed")
            pending.done.set()
            raise
        with self._lock:
            self._loads += 1
            del self._pending[ref.id]
            self._entries[ref.id] = weights
            self._bytes += weights.nbytes
            while self._bytes > self.budget:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
                self._evictions += 1
        pending.weights = weights
        pending.done.set()
        return weights

    def discard(self, ref_id: int) -> bool:
        """Drop one adapter (on unregister); True when it was held."""
        with self._lock:
            weights = self._entries.pop(ref_id, None)
            if weights is not None:
                self._bytes -= weights.nbytes
            return weights is not None

    def __contains__(self, ref_id: int) -> bool:
        with self._lock:
            return ref_id in self._entries

    @property
    def stats(self) -> HostCacheStats:
        with self._lock:
            return HostCacheStats(self._hits, self._misses, self._loads, self._failures, self._evictions,
                                  self._bytes, len(self._entries), self.budget)
