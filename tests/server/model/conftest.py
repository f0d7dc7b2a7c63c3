"""PEFT adapters of three shapes on the real base, and the engine and PEFT model that serve them."""

import copy

import pytest
import torch

from tests.server.model.peft_cases import ADAPTERS


@pytest.fixture(scope="package")
def peft_adapters(tmp_path_factory, hf_fp32):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    for i, (name, kw) in enumerate(ADAPTERS.items()):
        torch.manual_seed(i)
        model = get_peft_model(copy.deepcopy(hf_fp32), LoraConfig(init_lora_weights=False, **kw))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.5)  # strong enough to change the text
        model.save_pretrained(root / name)
    return root


@pytest.fixture(scope="package")
def peft_model(peft_adapters, hf_fp32):
    from peft import PeftModel

    names = list(ADAPTERS)
    model = PeftModel.from_pretrained(copy.deepcopy(hf_fp32), peft_adapters / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(peft_adapters / name, adapter_name=name)
    return model.eval()


@pytest.fixture(scope="package")
def engine_with_adapters(make_engine, peft_adapters):
    engine = make_engine()
    for name in ADAPTERS:
        engine.registry.register(name, peft_adapters / name)
    return engine


