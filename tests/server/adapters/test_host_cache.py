"""The host cache stays under its byte budget, evicts least recently used, and a failed load changes nothing."""

import threading

import pytest
import torch

from server.adapters.host_cache import HostCache
from server.adapters.loader import load_adapter_weights
from server.adapters.registry import AdapterRegistry
from server.adapters.types import AdapterError
from tests.server.adapters.helpers import patch_tensors


@pytest.fixture
def refs(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    return [registry.register(f"a{i}", make_adapter(f"a{i}", rank=4)) for i in range(4)]


def size_of(ref, config):
    return load_adapter_weights(ref, config).nbytes


def test_hits_misses_and_lru_eviction(tiny_config, refs):
    one = size_of(refs[0], tiny_config)
    cache = HostCache(tiny_config, budget_bytes=2 * one + one // 2)  # room for two
    a, b, c = refs[:3]
    wa = cache.get_or_load(a)
    cache.get_or_load(b)
    assert cache.get_or_load(a) is wa  # hit; b is now least recent
    cache.get_or_load(c)  # evicts b
    assert a.id in cache and c.id in cache and b.id not in cache
    s = cache.stats
    assert (s.hits, s.misses, s.loads, s.evictions, s.entries, s.bytes) == (1, 3, 3, 1, 2, 2 * one)
    assert s.bytes <= s.budget
    cache.get_or_load(b)  # reloads, evicts a
    assert a.id not in cache and cache.stats.evictions == 2 and cache.stats.loads == 4


def test_budget_holds_over_many_loads(tiny_config, refs):
    one = size_of(refs[0], tiny_config)
    cache = HostCache(tiny_config, budget_bytes=3 * one)
    for i in range(20):
        cache.get_or_load(refs[i % 4])
        assert cache.stats.bytes <= 3 * one
    assert cache.stats.entries == 3


def test_failed_load_leaves_the_cache_intact(tiny_config, refs):
    cache = HostCache(tiny_config)
    good = [cache.get_or_load(r) for r in refs[:2]]
    before = cache.stats
    bad = refs[2]
    patch_tensors(bad.path, lambda t: next(iter(t.values())).fill_(float("nan")))  # changed after registration
    with pytest.raises(AdapterError, match="changed on disk since it was registered"):
        cache.get_or_load(bad)
    after = cache.stats
    assert (after.entries, after.bytes, after.evictions, after.loads) == (
        before.entries, before.bytes, before.evictions, before.loads)
    assert after.failures == 1 and bad.id not in cache
    assert [cache.get_or_load(r) for r in refs[:2]] == good  # still served from memory
    with pytest.raises(AdapterError):  # not cached as a failure either: the file is read again
        cache.get_or_load(bad)
    assert cache.stats.failures == 2


def test_adapter_larger_than_the_budget(tiny_config, refs):
    cache = HostCache(tiny_config, budget_bytes=100)
    with pytest.raises(AdapterError, match="more than the whole host cache"):
        cache.get_or_load(refs[0])
    assert cache.stats.entries == 0 and cache.stats.bytes == 0


def test_weights_are_cast_to_the_cache_dtype(tiny_config, refs):
    weights = HostCache(tiny_config, dtype=torch.bfloat16).get_or_load(refs[0])
    assert {t.dtype for t in (*weights.a.values(), *weights.b.values())} == {torch.bfloat16}


def test_concurrent_requests_load_once(tiny_config, refs):
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_loader(ref, config, dtype):
        calls.append(ref.id)
        started.set()
        release.wait(10)
        return load_adapter_weights(ref, config, dtype)

    cache = HostCache(tiny_config, loader=slow_loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load(refs[0]))) for _ in range(4)]
    threads[0].start()
    started.wait(10)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert calls == [refs[0].id] and len(results) == 4 and all(r is results[0] for r in results)
    assert cache.stats.loads == 1


def test_discard(tiny_config, refs):
    cache = HostCache(tiny_config)
    cache.get_or_load(refs[0])
    assert cache.discard(refs[0].id) and not cache.discard(refs[0].id)
    assert cache.stats.bytes == 0 and cache.stats.entries == 0
