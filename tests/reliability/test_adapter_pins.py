# ruff: noqa: F811 (the fixtures imported from tests/server/adapters/conftest.py)
"""An adapter that fails to page in leaves nothing pinned; one unloaded while idle gives its pages back at once.

Driven on AdapterManager, AdapterPages and a bare pool, as the scheduler drives them, without a model.
"""

import pytest
import torch

from server.adapters.host_cache import HostCache
from server.adapters.loader import load_adapter_weights
from server.adapters.manager import AdapterManager
from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterError
from server.memory.adapter_pages import AdapterPages
from server.memory.page_pool import PagePool
from tests.server.adapters.conftest import TINY, bank, make_adapter, tiny_config  # noqa: F401 (fixtures)

PAGES, PAGE_ELEMS = 64, 256


class Flaky:
    """A host-cache loader that fails for the names in `broken` with the given exception."""

    def __init__(self):
        self.broken: dict[str, BaseException] = {}

    def __call__(self, ref, config, dtype):
        if ref.name in self.broken:
            raise self.broken[ref.name]
        return load_adapter_weights(ref, config, dtype)


@pytest.fixture
def loader():
    return Flaky()


@pytest.fixture
def manager(tiny_config, loader):
    registry = AdapterRegistry(tiny_config, host_cache=HostCache(tiny_config, loader=loader))
    pages = AdapterPages(PagePool(PAGES), PAGE_ELEMS)
    return AdapterManager(registry, pages, torch.zeros(PAGES * PAGE_ELEMS), TINY["num_hidden_layers"])


def add(manager, make_adapter, name):
    ref = manager.registry.register(name, make_adapter(name))
    manager.hold(ref)
    return ref


def nothing_left(manager, ref) -> bool:
    return not manager.pages.is_resident(ref.id) and ref.id not in manager.tables


@pytest.mark.parametrize("error", [RuntimeError("copy failed"), MemoryError(), OSError(5, "I/O error")])
def test_a_load_failing_with_anything_leaves_nothing_pinned(manager, loader, make_adapter, error):
    bad, good = add(manager, make_adapter, "bad"), add(manager, make_adapter, "good")
    loader.broken["bad"] = error
    with pytest.raises(AdapterError, match="'bad'") as err:  # the scheduler fails only this adapter's requests
        manager.acquire(bad.id)
    assert isinstance(err.value.__cause__, type(error))
    assert nothing_left(manager, bad) and manager.pages.pool.num_free == PAGES

    assert manager.acquire(good.id)  # the next request, on a good adapter, runs
    a_off, _ = manager.offsets(good.id)
    assert (a_off >= 0).sum() == len(good.layers) * len(good.target_modules)
    del loader.broken["bad"]
    assert manager.acquire(bad.id)  # and the failed one pages in once its loader works again
    assert manager.offsets(bad.id)[0].shape == a_off.shape


def test_a_failing_copy_into_the_pool_leaves_nothing_pinned(manager, make_adapter, monkeypatch):
    ref = add(manager, make_adapter, "a")

    def broken_weights(ref):
        raise RuntimeError("the device is gone")

    monkeypatch.setattr(manager.registry, "weights", broken_weights)
    with pytest.raises(AdapterError, match="'a': loading into the pool failed: RuntimeError"):
        manager.acquire(ref.id)
    assert nothing_left(manager, ref) and manager.pages.pool.num_free == PAGES


def test_unregister_of_an_idle_adapter_frees_its_pages_at_once(manager, make_adapter):
    ref = add(manager, make_adapter, "a")
    assert manager.acquire(ref.id)
    manager.release(ref.id)
    manager.unhold(ref.id)  # its request finished: idle but resident
    assert manager.pages.is_resident(ref.id) and manager.pages.pool.num_free < PAGES

    assert manager.unregister("a") == ref
    assert "a" not in manager.registry and nothing_left(manager, ref) and ref.id not in manager.holds
    assert manager.pages.pool.num_free == PAGES and manager.pages.stats.resident == 0
    with pytest.raises(KeyError):
        manager.unregister("a")


def test_unregister_of_an_adapter_in_use_frees_it_after_its_last_request(manager, make_adapter):
    ref = add(manager, make_adapter, "a")
    assert manager.acquire(ref.id)
    manager.unregister("a")
    assert "a" not in manager.registry
    assert manager.pages.is_resident(ref.id) and manager.offsets(ref.id) is not None  # still running
    manager.release(ref.id)
    manager.unhold(ref.id)
    assert nothing_left(manager, ref) and ref.id not in manager.holds and manager.pages.pool.num_free == PAGES
