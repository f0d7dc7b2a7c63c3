"""What a replica's `@serve.multiplexed` loader returns: a model Ray counts as held on this replica.

For an adapter, holding it means its weights sit in this replica's host cache, read from disk by the
loader, so the engine's page-in on the first request is a copy; the engine still pages it into the
pool on demand and evicts it from there under memory pressure. When Ray drops the model from the
replica (its LRU beyond --max-adapters-per-replica) the host copy goes too. The base model and router
names hold nothing; unknown names are left for the app to answer with its 404.
"""

import asyncio
import logging

from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterError

log = logging.getLogger(__name__)


class AdapterLease:
    def __init__(self, model_id: str, registry: AdapterRegistry, ref_id: int | None):
        self.model_id = model_id
        self._registry = registry
        self._ref_id = ref_id  # None: not an adapter (base, router, unknown, or failed to read)
        self._released = False
        # Ray's multiplexer calls `model.__del__()` when it drops a model. An instance attribute, not a
        # method: garbage collection never calls it, so it never takes the host cache's lock mid-allocation.
        self.__del__ = self.release

    @property
    def warm(self) -> bool:
        return self._ref_id is not None and not self._released

    def release(self) -> None:
        if not self._released and self._ref_id is not None:
            self._registry.host_cache.discard(self._ref_id)
        self._released = True


async def lease(registry: AdapterRegistry, model_id: str) -> AdapterLease:
    try:
        ref = registry.get(model_id)
    except KeyError:
        return AdapterLease(model_id, registry, None)
    try:
        await asyncio.to_thread(registry.weights, ref)  # disk -> host cache, off the event loop
    except AdapterError as e:  # its requests fail on their own with adapter_load_failed (400)
        log.warning("adapter %s could not be read: %s", model_id, e)
        return AdapterLease(model_id, registry, None)
    return AdapterLease(model_id, registry, ref.id)
