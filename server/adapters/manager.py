"""Adapters between the registry (host/disk) and the unified pool: pages them in for the scheduler.

The jobs live apart: holds (holds.py), packing and residency (server/memory/adapter_pages.py), the
copy into the pool (pool_copy.py, the format says what to write) and the offset tables the runner
hands the kernels (offset_tables.py); this class ties them together behind the scheduler's
AdapterAdmission and the runner's look-ups.
"""

import logging
import time
from collections.abc import Callable

import torch

from server.adapters.formats import BaseWeight, format_of
from server.adapters.holds import AdapterHolds
from server.adapters.offset_tables import OffsetTables
from server.adapters.pool_copy import copy_into_pool, copy_lazy_into_pool
from server.adapters.registry import AdapterRegistry
from server.adapters.shapes import module_shapes
from server.adapters.types import AdapterError, AdapterRef
from server.memory.adapter_pages import AdapterPages, Placement, TensorKey

log = logging.getLogger(__name__)


class AdapterManager:
    """The scheduler's AdapterAdmission: acquire pins an adapter in the pool, copying it in when cold."""

    def __init__(self, registry: AdapterRegistry, pages: AdapterPages, pool_flat: torch.Tensor, num_layers: int,
                 base_weight: BaseWeight | None = None):
        self.registry = registry
        self.pages = pages
        self.pool_flat = pool_flat  # (N,)
        self.num_layers = num_layers
        self.shapes = module_shapes(registry.base_config)
        self.holds = AdapterHolds()
        self.tables = OffsetTables(num_layers)
        # (layer, module) -> the base weight W (out, in), for formats whose pool tensors depend on it (DoRA);
        # the model runner sets it, since the model is the runner's
        self.base_weight = base_weight
        self.on_load: Callable[[float], None] | None = None  # told each cold load's seconds (host/disk -> pool)
        self._lazy_written: dict[int, set[str]] = {}  # adapter id -> lazy factors written since its page-in

    # request lifetime

    def resolve(self, name: str) -> AdapterRef:
        try:
            return self.registry.get(name)
        except KeyError:
            raise KeyError(f"the model {name!r} does not exist") from None

    def hold(self, ref: AdapterRef, n: int = 1) -> None:
        self.holds.hold(ref, n)

    def unhold(self, adapter_id: int) -> None:
        if self.holds.unhold(adapter_id) and not self._registered(adapter_id):  # unloaded while in use: free now
            self._forget(adapter_id)

    def unregister(self, name: str) -> AdapterRef:
        """On the engine thread (the pool is the engine's); KeyError for an unknown name.

        New requests stop resolving the name at once. An idle adapter's pool pages are freed now; one in
        use keeps them until its last request finishes (unhold frees them then)."""
        ref = self.registry.unregister(name)
        if not self.in_use(ref.id):
            self._forget(ref.id)
        return ref

    def _forget(self, adapter_id: int) -> None:
        self._lazy_written.pop(adapter_id, None)
        if self.pages.drop(adapter_id):
            self.tables.drop(adapter_id)
            self.holds.forget(adapter_id)

    def _registered(self, adapter_id: int) -> bool:
        try:
            self.registry.by_id(adapter_id)
        except KeyError:
            return False
        return True

    def in_use(self, adapter_id: int) -> bool:
        return self.holds.in_use(adapter_id)

    # AdapterAdmission

    def sizes(self, ref: AdapterRef) -> dict[TensorKey, int]:
        fmt = format_of(ref.format)
        out: dict[TensorKey, int] = {}
        for layer in ref.layers:
            for m in ref.target_modules:
                for factor, n in fmt.pool_sizes(ref.rank, *self.shapes[m]).items():
                    out[(layer, m, factor)] = n
        return out

    def acquire(self, adapter_id: int, lazy: tuple[str, ...] = ()) -> bool:
        ref = self.holds.ref(adapter_id)
        got = self.pages.acquire(adapter_id, self.sizes(ref))
        if got is None:
            return False
        placement, new = got
        if new:
            self._lazy_written[adapter_id] = set()
            self._write(ref, placement, fresh=True, copy=lambda: copy_into_pool(
                self.registry.weights(ref), placement, self.pool_flat, self.base_weight))
        fmt, written = format_of(ref.format), self._lazy_written.setdefault(adapter_id, set())
        for factor in lazy:
            if factor in fmt.lazy_factors and factor not in written:
                self._write(ref, placement, fresh=False, copy=lambda f=factor: copy_lazy_into_pool(
                    self.registry.weights(ref), placement, self.pool_flat, f))
                written.add(factor)
        return True

    def _write(self, ref: AdapterRef, placement: Placement, fresh: bool, copy: Callable[[], None]) -> None:
        """One copy into the adapter's pages (fresh: its page-in, then its offset tables). On failure it is
        unpinned (a fresh page-in dropped), never left pinned without its values: later steps would read them."""
        t0 = time.perf_counter()
        try:
            copy()
            if fresh:
                self.tables.build(ref.id, placement, format_of(ref.format).pool_factors)
        except BaseException as e:
            self.pages.release(ref.id)
            if fresh:
                self.pages.drop(ref.id)
                self.tables.drop(ref.id)
                self._lazy_written.pop(ref.id, None)
            if isinstance(e, AdapterError) or not isinstance(e, Exception):
                raise
            raise AdapterError(f"adapter {ref.name!r}: loading into the pool failed: {type(e).__name__}: {e}") from e
        if fresh and self.on_load is not None:
            self.on_load(time.perf_counter() - t0)

    def release(self, adapter_id: int) -> None:
        self.pages.release(adapter_id)

    # for the runner

    def ref(self, adapter_id: int) -> AdapterRef:
        return self.holds.ref(adapter_id)

    def offsets(self, adapter_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A offsets, B offsets), each (L, M) int64, -1 where the adapter does not reach."""
        return self.tables.table(adapter_id, "a"), self.tables.table(adapter_id, "b")

    def factor_offsets(self, adapter_id: int, factor: str) -> torch.Tensor | None:
        """(L, M) int64 offsets of one pool factor (e.g. DoRA's "scale"); None if the format has none."""
        return self.tables.table(adapter_id, factor)
