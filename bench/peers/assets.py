"""What every system in the comparison serves: the same base model and the same synthetic PEFT adapters.

    python -m bench.peers.assets --n 1000          # prints the base model and adapter directories

The base model is our default (the embedded SmolLM2-135M-Instruct GGUF, dequantised and cached by
server/model/loader.py), re-saved as a bf16 HF directory for vLLM; loraplex and the PEFT server load
the fp32 cache itself. Adapters come from bench/adapter_tools/synthetic.py with a fixed seed.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.adapter_tools.synthetic import SyntheticSpec, generate, make_bank, random_factors, write_config
from server.config import default_cache_dir
from server.model.loader import load_weights, resolve_checkpoint

PEERS_DIR = default_cache_dir() / "peers"
ADAPTER_RANKS = (8, 16, 32, 64)
ADAPTER_TARGETS = "q_proj,v_proj"  # S-LoRA's setting, as bench/adapters.py
ADAPTER_SEED = 0


def base_model_dir() -> Path:
    """Our default model as a dense fp32 HF directory (converted once from the GGUF)."""
    return resolve_checkpoint(None, default_cache_dir()).directory


def export_base_model(dtype: torch.dtype = torch.bfloat16, out: Path | None = None) -> Path:
    """The default model re-saved in `dtype` (config, tokenizer, one safetensors file); reused when present."""
    src = base_model_dir()
    out = out or PEERS_DIR / f"SmolLM2-135M-Instruct-{str(dtype).removeprefix('torch.')}"
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy2(f, tmp / f.name)
    state = {k: v.to(dtype).contiguous() for k, v in load_weights(src).items()}
    if "lm_head.weight" in state and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        del state["lm_head.weight"]  # tied: safetensors refuses shared storage, and the config says tied
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp / "config.json").read_text())
    config["dtype"] = config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(out)
    return out


def adapters_dir(n: int, seed: int = ADAPTER_SEED) -> Path:
    """n synthetic adapters synth-0000 ... (ranks 8-64, q_proj + v_proj, fp16), written once and reused."""
    out = PEERS_DIR / f"adapters-qv-seed{seed}"
    names = adapter_names(n)
    if all((out / name / "adapter_model.safetensors").is_file() for name in names):
        return out
    from transformers import AutoConfig

    generate(out, AutoConfig.from_pretrained(base_model_dir()), n, seed=seed, ranks=ADAPTER_RANKS,
             targets=ADAPTER_TARGETS, dtype=torch.float16)
    return out


STRONG_NAME = "strong"


def strong_adapter() -> Path:
    """One extra adapter whose B is 50x the synthetic ones': the synthetic adapters are too weak to flip a
    greedy token, so this is the one validation uses to see that each system really applies adapters."""
    out = PEERS_DIR / "adapters-validate" / STRONG_NAME
    if (out / "adapter_model.safetensors").is_file():
        return out
    import numpy as np
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_model_dir())
    spec = SyntheticSpec(rank=16, alpha=16.0, use_rslora=False, target_modules=("q_proj", "v_proj"))
    factors = random_factors(config, spec, np.random.default_rng(7), make_bank(config, 7, torch.float32))
    tensors = {k: (t * 50 if k.endswith("lora_B.weight") else t).clone() for k, t in factors.items()}
    write_config(out, spec)
    save_file(tensors, out / "adapter_model.safetensors")
    return out


def adapter_names(n: int) -> list[str]:
    """The names generate() gives (its width is max(4, digits of n - 1)); the comparison uses n <= 10000."""
    width = max(4, len(str(n - 1)))
    return [f"synth-{i:0{width}d}" for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    print("base (fp32):", base_model_dir())
    print("base (bf16):", export_base_model())
    print("adapters:   ", adapters_dir(args.n))
    print("validation: ", strong_adapter())


if __name__ == "__main__":
    main()
