"""Adapters between the registry (host/disk) and the unified pool: pages them in for the scheduler."""

import logging
import time
from collections.abc import Callable

import torch

from server.adapters.registry import AdapterRegistry
from server.adapters.shapes import module_shapes
from server.adapters.types import MODULES, AdapterError, AdapterRef
from server.memory.adapter_pages import AdapterPages, Placement, TensorKey

log = logging.getLogger(__name__)


class AdapterManager:
    """The scheduler's AdapterAdmission: acquire pins an adapter in the pool, copying it in when cold."""

    def __init__(self, registry: AdapterRegistry, pages: AdapterPages, pool_flat: torch.Tensor, num_layers: int):
        self.registry = registry
        self.pages = pages
        self.pool_flat = pool_flat  # (N,)
        self.num_layers = num_layers
        self.shapes = module_shapes(registry.base_config)
        self._refs: dict[int, AdapterRef] = {}  # adapters of accepted requests (outlive an unregister)
        self._users: dict[int, int] = {}  # adapter id -> unfinished sequences
        self._offsets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (A, B) offsets (L, M)
        self.on_load: Callable[[float], None] | None = None  # told each cold load's seconds (host/disk -> pool)

    # request lifetime

    def resolve(self, name: str) -> AdapterRef:
        try:
            return self.registry.get(name)
        except KeyError:
            raise KeyError(f"the model {name!r} does not exist") from None

    def hold(self, ref: AdapterRef, n: int = 1) -> None:
        self._refs[ref.id] = ref
        self._users[ref.id] = self._users.get(ref.id, 0) + n

    def unhold(self, adapter_id: int) -> None:
        self._users[adapter_id] -= 1
        if self._users[adapter_id] == 0:
            del self._users[adapter_id]
            if not self._registered(adapter_id):  # unloaded while in use: free it now
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
        if self.pages.drop(adapter_id):
            self._offsets.pop(adapter_id, None)
            self._refs.pop(adapter_id, None)

    def _registered(self, adapter_id: int) -> bool:
        try:
            self.registry.by_id(adapter_id)
        except KeyError:
            return False
        return True

    def in_use(self, adapter_id: int) -> bool:
        return adapter_id in self._users

    # AdapterAdmission

    def sizes(self, ref: AdapterRef) -> dict[TensorKey, int]:
        out: dict[TensorKey, int] = {}
        for layer in ref.layers:
            for m in ref.target_modules:
                d_in, d_out = self.shapes[m]
                out[(layer, m, "a")] = ref.rank * d_in
                out[(layer, m, "b")] = d_out * ref.rank
        return out

    def acquire(self, adapter_id: int) -> bool:
        ref = self._refs[adapter_id]
        got = self.pages.acquire(adapter_id, self.sizes(ref))
        if got is None:
            return False
        placement, new = got
        if new:
            t0 = time.perf_counter()
            try:
                self._page_in(ref, placement)
            except BaseException as e:  # never leave it pinned without offsets: every later step would fail
                self.pages.release(adapter_id)
                self.pages.drop(adapter_id)
                self._offsets.pop(adapter_id, None)
                if isinstance(e, AdapterError) or not isinstance(e, Exception):
                    raise
                raise AdapterError(f"adapter {ref.name!r}: loading into the pool failed: {type(e).__name__}: {e}"
                                   ) from e
            if self.on_load is not None:
                self.on_load(time.perf_counter() - t0)
        return True

    def _page_in(self, ref: AdapterRef, placement: Placement) -> None:
        weights = self.registry.weights(ref)
        flat = self.pool_flat
        for (layer, m), a in weights.a.items():
            off = placement.offsets[(layer, m, "a")]
            flat[off : off + a.numel()].copy_(a.reshape(-1))
        for (layer, m), b in weights.b.items():
            off = placement.offsets[(layer, m, "b")]
            flat[off : off + b.numel()].copy_(b.reshape(-1))
        a_off = torch.full((self.num_layers, len(MODULES)), -1, dtype=torch.int64)
        b_off = torch.full((self.num_layers, len(MODULES)), -1, dtype=torch.int64)
        for (layer, m, ab), off in placement.offsets.items():
            (a_off if ab == "a" else b_off)[layer, MODULES.index(m)] = off
        self._offsets[ref.id] = (a_off, b_off)

    def release(self, adapter_id: int) -> None:
        self.pages.release(adapter_id)

    # for the runner

    def ref(self, adapter_id: int) -> AdapterRef:
        return self._refs[adapter_id]

    def offsets(self, adapter_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A offsets, B offsets), each (L, M) int64, -1 where the adapter does not reach."""
        return self._offsets[adapter_id]
