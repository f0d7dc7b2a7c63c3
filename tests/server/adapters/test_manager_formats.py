# ruff: noqa: F811 (the fixtures imported from tests/server/adapters/conftest.py)
"""The manager pages each format's pool factors: LoRA's A, B and Arrow prototypes (written only once a
per-token routed sequence asks), DoRA's A, B and its scale computed once from the base weights; the runner's
offset tables name exactly those factors."""

import pytest
import torch

import server.adapters.manager as manager_mod
from router.prototypes import top_right_singular_vector
from server.adapters.formats import dora_scale
from server.adapters.manager import AdapterManager
from server.adapters.registry import AdapterRegistry
from server.adapters.shapes import module_shapes
from server.adapters.types import MODULES, AdapterError
from server.memory.adapter_pages import AdapterPages
from server.memory.page_pool import PagePool
from tests.server.adapters.conftest import TINY, bank, make_adapter, tiny_config  # noqa: F401 (fixtures)
from tests.server.adapters.helpers import patch_config
from tests.server.adapters.test_dora_format import add_magnitudes

PAGES, PAGE_ELEMS = 64, 1024


@pytest.fixture
def base(tiny_config):
    gen = torch.Generator().manual_seed(0)
    shapes = module_shapes(tiny_config)
    return {(layer, m): torch.randn(shapes[m][1], shapes[m][0], generator=gen)
            for layer in range(TINY["num_hidden_layers"]) for m in MODULES}


@pytest.fixture
def manager(tiny_config, base):
    pages = AdapterPages(PagePool(PAGES), PAGE_ELEMS)
    return AdapterManager(AdapterRegistry(tiny_config), pages, torch.zeros(PAGES * PAGE_ELEMS),
                          TINY["num_hidden_layers"], base_weight=lambda layer, m: base[layer, m])


def test_lora_pages_a_b_and_its_arrow_prototypes(manager, make_adapter, monkeypatch):
    ref = manager.registry.register("l", make_adapter("l"))
    manager.hold(ref)
    assert manager.acquire(ref.id)
    assert {f for _, _, f in manager.sizes(ref)} == {"a", "b", "proto"}
    assert manager.factor_offsets(ref.id, "scale") is None
    a_off, _ = manager.offsets(ref.id)
    w = manager.registry.weights(ref)
    q = MODULES.index("q_proj")
    off = int(a_off[0, q])
    assert torch.equal(manager.pool_flat[off : off + w.a[0, "q_proj"].numel()], w.a[0, "q_proj"].reshape(-1))
    v, _ = top_right_singular_vector(w.a[0, "q_proj"], w.b[0, "q_proj"])  # per-token Arrow scores against it
    off = int(manager.factor_offsets(ref.id, "proto")[0, q])
    assert not manager.pool_flat[off : off + v.numel()].any()  # reserved, not computed: no sequence routes yet
    assert manager.acquire(ref.id, ("proto",))
    assert torch.equal(manager.pool_flat[off : off + v.numel()], v)

    calls = []
    monkeypatch.setattr(manager_mod, "copy_lazy_into_pool", lambda *a: calls.append(a))
    assert manager.acquire(ref.id, ("proto",))
    assert calls == []  # once per page-in
    for _ in range(3):
        manager.release(ref.id)
    manager.unhold(ref.id)
    manager.unregister("l")
    ref = manager.registry.register("l", make_adapter("l"))
    manager.hold(ref)
    assert manager.acquire(ref.id, ("proto",))
    assert len(calls) == 1  # a fresh page-in writes it again


def test_dora_pages_its_scale_from_the_base_weights(manager, make_adapter, base):
    path = make_adapter("d", modules=("q_proj", "down_proj"), layers=[1])
    patch_config(path, use_dora=True)
    add_magnitudes(path, 2.0)
    ref = manager.registry.register("d", path)
    manager.hold(ref)
    assert manager.acquire(ref.id)
    scale = manager.factor_offsets(ref.id, "scale")  # (L, M)
    w = manager.registry.weights(ref)
    for m in MODULES:
        off = int(scale[1, MODULES.index(m)])
        if m not in ("q_proj", "down_proj"):
            assert off == -1 and (scale[0] == -1).all()
            continue
        want = dora_scale(base[1, m], w.a[1, m], w.b[1, m], w.extra["magnitude"][1, m], ref.scaling)
        torch.testing.assert_close(manager.pool_flat[off : off + want.numel()], want)


def test_dora_without_base_weights_fails_and_leaves_nothing(tiny_config, make_adapter):
    manager = AdapterManager(AdapterRegistry(tiny_config), AdapterPages(PagePool(PAGES), PAGE_ELEMS),
                             torch.zeros(PAGES * PAGE_ELEMS), TINY["num_hidden_layers"])
    path = make_adapter("d")
    patch_config(path, use_dora=True)
    add_magnitudes(path)
    ref = manager.registry.register("d", path)
    manager.hold(ref)
    with pytest.raises(AdapterError, match="DoRA needs the base model's weights"):
        manager.acquire(ref.id)
    assert not manager.pages.is_resident(ref.id) and ref.id not in manager.tables
