"""The synthetic generator writes valid, distinct PEFT adapters with mixed ranks and target sets."""

import json

import torch
from safetensors import safe_open

from bench.adapter_tools.synthetic import TARGET_SETS, generate, main
from server.adapters.registry import AdapterRegistry


def test_generate_mixed(tiny_config, tmp_path):
    paths = generate(tmp_path, tiny_config, n=8, seed=3, ranks=(2, 4, 8))
    registry = AdapterRegistry(tiny_config)
    refs = registry.register_dir(tmp_path)
    assert [r.path for r in refs] == paths
    assert {r.target_modules for r in refs} == set(TARGET_SETS.values())
    assert {r.rank for r in refs} <= {2, 4, 8} and len({r.rank for r in refs}) > 1
    loaded = [registry.weights(r) for r in refs]
    b0 = loaded[0].b[(0, "q_proj")]
    assert b0.abs().sum() > 0
    assert not torch.equal(loaded[0].a[(0, "q_proj")][:2], loaded[4].a[(0, "q_proj")][:2])  # adapters differ


def test_generate_is_reproducible(tiny_config, tmp_path):
    first = generate(tmp_path / "x", tiny_config, n=2, seed=1, dtype=torch.bfloat16)
    second = generate(tmp_path / "y", tiny_config, n=2, seed=1, dtype=torch.bfloat16)
    for p, q in zip(first, second, strict=True):
        assert (p / "adapter_model.safetensors").read_bytes() == (q / "adapter_model.safetensors").read_bytes()
    with safe_open(first[0] / "adapter_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118


def test_cli(tiny_config, tmp_path, capsys):
    model = tmp_path / "model"
    tiny_config.save_pretrained(model)
    main([str(tmp_path / "out"), "--n", "3", "--ranks", "4", "--targets", "q_proj,down_proj", "--prefix", "s",
          "--dtype", "float32", "--model", str(model)])
    assert "wrote 3 adapters" in capsys.readouterr().out
    refs = AdapterRegistry(tiny_config).register_dir(tmp_path / "out")
    assert [r.name for r in refs] == ["s-0000", "s-0001", "s-0002"]
    assert all(r.rank == 4 and r.target_modules == ("q_proj", "down_proj") for r in refs)
    raw = json.loads((refs[0].path / "adapter_config.json").read_text())
    assert raw["peft_type"] == "LORA" and raw["base_model_name_or_path"]
