"""What our loader reads equals what PEFT loads: same factors, same modules and layers, same scaling."""

from pathlib import Path

import pytest
import torch

from server.adapters.registry import AdapterRegistry
from server.adapters.types import MODULES, AdapterWeights

DEMO = Path(__file__).parents[3] / "server" / "adapters" / "demo" / "adapters"


def assert_matches_peft(peft_model, adapter: str, weights: AdapterWeights) -> None:
    ref = weights.ref
    wrapped = set()
    for i, layer in enumerate(peft_model.base_model.model.model.layers):
        for m in MODULES:
            module = getattr(layer.self_attn if m in MODULES[:4] else layer.mlp, m)
            if adapter not in getattr(module, "lora_A", {}):
                continue
            wrapped.add((i, m))
            assert torch.equal(module.lora_A[adapter].weight, weights.a[(i, m)]), (i, m)
            assert torch.equal(module.lora_B[adapter].weight, weights.b[(i, m)]), (i, m)
            assert module.scaling[adapter] == pytest.approx(ref.scaling)
    assert wrapped == set(weights.a) == set(weights.b)
    assert wrapped == {(i, m) for i in ref.layers for m in ref.target_modules}


@pytest.mark.parametrize("modules, layers, rslora", [
    (("q_proj", "v_proj"), None, False),
    (MODULES[:4], [1, 2], False),
    (MODULES[4:], None, True),
    (MODULES, [0], False),
])
def test_synthetic_adapters_load_in_peft(tiny_config, make_adapter, modules, layers, rslora):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    path = make_adapter("syn", rank=8, modules=modules, layers=layers, alpha=16.0, rslora=rslora)
    ref = AdapterRegistry(tiny_config).register("syn", path)
    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config).eval()
    ids = torch.arange(1, 17).unsqueeze(0)
    base_logits = base(ids).logits
    model = PeftModel.from_pretrained(base, path, adapter_name="syn").eval()
    assert_matches_peft(model, "syn", AdapterRegistry(tiny_config).weights(ref))
    assert not torch.allclose(model(ids).logits, base_logits, atol=1e-4)  # B is non-zero: outputs change


@pytest.fixture(scope="module")
def demo_refs(checkpoint):
    if not DEMO.is_dir():
        pytest.skip("no demo adapters (python -m bench.adapter_tools.train_demo)")
    return AdapterRegistry(checkpoint.config).register_dir(DEMO)


def test_demo_adapters_equal_peft(checkpoint, demo_refs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert len(demo_refs) >= 4
    assert len({(r.rank, r.target_modules, r.layers) for r in demo_refs}) == len(demo_refs)  # all different
    base = AutoModelForCausalLM.from_pretrained(checkpoint.directory, dtype=torch.float32)  # PEFT edits it: our copy
    model = PeftModel.from_pretrained(base, demo_refs[0].path, adapter_name=demo_refs[0].name)
    for ref in demo_refs[1:]:
        model.load_adapter(ref.path, adapter_name=ref.name)
    registry = AdapterRegistry(checkpoint.config)
    for ref in demo_refs:
        assert_matches_peft(model, ref.name, registry.weights(registry.register(ref.name, ref.path)))
