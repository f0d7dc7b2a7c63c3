"""Registration checks a whole folder but keeps only metadata; names resolve to immutable refs with ids never reused."""


import pytest

from server.adapters.host_cache import HostCache
from server.adapters.registry import AdapterRegistry
from server.adapters.types import MODULES, AdapterError
from tests.server.adapters.helpers import patch_config


def never_load(ref, config, dtype):
    raise AssertionError(f"registration must not fill the host cache ({ref.name})")


def test_register_reads_the_config(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    path = make_adapter("math", rank=8, modules=("v_proj", "q_proj", "down_proj"), alpha=16, rslora=True)
    ref = registry.register("math", path)
    assert (ref.name, ref.path, ref.rank, ref.alpha, ref.use_rslora) == ("math", path, 8, 16.0, True)
    assert ref.target_modules == ("q_proj", "v_proj", "down_proj")  # MODULES order
    assert ref.layers == (0, 1, 2)
    assert ref.scaling == pytest.approx(16 / 8**0.5)
    assert registry.get("math") is ref and registry.by_id(ref.id) is ref
    assert "math" in registry and list(registry) == [ref] and len(registry) == 1


def test_layers_to_transform(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    ref = registry.register("top", make_adapter(layers=[2, 1]))
    assert ref.layers == (1, 2)
    first = make_adapter("first", layers=[0])
    patch_config(first, layers_to_transform=0)  # PEFT also takes a single int
    assert registry.register("first", first).layers == (0,)


@pytest.mark.parametrize("targets, modules", [
    ("all-linear", MODULES),
    ("ALL-LINEAR", MODULES),
    (r".*\.(q_proj|v_proj)", ("q_proj", "v_proj")),
    (r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj", MODULES[4:]),
    (["self_attn.k_proj", "o_proj"], ("k_proj", "o_proj")),
])
def test_target_module_spellings(tiny_config, make_adapter, targets, modules):
    path = make_adapter(modules=modules)
    patch_config(path, target_modules=targets)
    ref = AdapterRegistry(tiny_config).register("x", path)
    assert ref.target_modules == modules and ref.layers == (0, 1, 2)


def test_duplicate_name_is_refused(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    registry.register("a", make_adapter("a"))
    with pytest.raises(AdapterError, match="'a' is already registered"):
        registry.register("a", make_adapter("b"))


def test_ids_are_unique_and_never_reused(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    path = make_adapter()
    first = registry.register("a", path)
    second = registry.register("b", path)  # one folder may serve under two names
    assert registry.unregister("a") is first
    again = registry.register("a", path)
    assert len({first.id, second.id, again.id}) == 3 and min(first.id, second.id, again.id) >= 0
    assert "a" in registry and registry.get("a") is again
    with pytest.raises(KeyError):
        registry.by_id(first.id)


def test_unknown_names(tiny_config):
    registry = AdapterRegistry(tiny_config)
    with pytest.raises(KeyError, match="unknown adapter 'nope'"):
        registry.get("nope")
    with pytest.raises(KeyError):
        registry.unregister("nope")
    assert "nope" not in registry


def test_unregister_drops_cached_weights(tiny_config, make_adapter):
    registry = AdapterRegistry(tiny_config)
    ref = registry.register("a", make_adapter())
    registry.weights(ref)
    assert ref.id in registry.host_cache
    registry.unregister("a")
    assert ref.id not in registry.host_cache and registry.host_cache.stats.bytes == 0


def test_register_dir_names_by_folder(tiny_config, make_adapter, tmp_path):
    root = tmp_path / "lib"
    for name in ("b", "a", "c"):
        make_adapter(name, root=root)
    (root / "notes").mkdir()  # no adapter_config.json: not an adapter
    (root / "README.md").write_text("hi")
    refs = AdapterRegistry(tiny_config).register_dir(root)
    assert [r.name for r in refs] == ["a", "b", "c"]


def test_register_dir_is_all_or_nothing(tiny_config, make_adapter, tmp_path):
    root = tmp_path / "lib"
    make_adapter("good", root=root)
    patch_config(make_adapter("dora", root=root), use_dora=True, lora_bias=True)
    patch_config(make_adapter("huge", rank=128, root=root))
    registry = AdapterRegistry(tiny_config)
    with pytest.raises(AdapterError) as err:
        registry.register_dir(root)
    assert "2 invalid adapters" in str(err.value) and "use_dora" in str(err.value) and "r=128" in str(err.value)
    assert len(registry) == 0
    refs = registry.register_dir(root, skip_invalid=True)
    assert [r.name for r in refs] == ["good"] and list(registry) == refs


def test_register_dir_missing(tiny_config, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        AdapterRegistry(tiny_config).register_dir(tmp_path / "nope")


def test_two_thousand_registrations_keep_no_weights(tiny_config, make_adapter, tmp_path):
    """Registration reads and checks each folder's weights, but holds none: they load on first use."""
    root = tmp_path / "many"
    target_sets = [("q_proj", "v_proj"), MODULES[:4], MODULES[4:], MODULES]
    for i in range(2000):
        make_adapter(f"ad{i:04d}", (4, 8, 16, 32)[i % 4], target_sets[i % 4], rslora=i % 3 == 0, root=root)
    cache = HostCache(tiny_config, loader=never_load)
    registry = AdapterRegistry(tiny_config, host_cache=cache)
    refs = registry.register_dir(root)
    assert len(refs) == len(registry) == 2000
    assert len({r.id for r in refs}) == 2000 and len({r.digest for r in refs}) == 2000
    assert refs[1].rank == 8 and refs[3].target_modules == MODULES and refs[3].use_rslora
    stats = cache.stats
    assert (stats.loads, stats.misses, stats.entries, stats.bytes) == (0, 0, 0, 0)
