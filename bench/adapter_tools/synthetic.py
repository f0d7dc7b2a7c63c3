"""N random PEFT LoRA adapters (mixed ranks and target sets) for scale tests and benchmarks.

    python -m bench.adapter_tools.synthetic OUT_DIR --n 1000 --seed 0 --ranks 8,16,32,64 --targets mixed

Tensors are slices of one shared random bank at per-adapter random offsets, so N=1000 costs disk
bandwidth, not random-number generation; every adapter still differs and B is non-zero.
"""

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from server.adapters.adapter_config import CONFIG_FILE, WEIGHTS_FILE
from server.adapters.shapes import module_shapes, num_layers, peft_key
from server.adapters.types import MODULES

BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGET_SETS = {
    "qv": ("q_proj", "v_proj"),
    "attn": MODULES[:4],
    "mlp": MODULES[4:],
    "all": MODULES,
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
BANK_SIZE = 1 << 22
B_STD = 0.02


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]


def peft_config(spec: SyntheticSpec, layers: list[int] | None = None) -> dict:
    """The adapter_config.json PEFT writes for a plain LoRA (fields PEFT needs to load it)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": BASE_NAME,
        "r": spec.rank, "lora_alpha": spec.alpha, "use_rslora": spec.use_rslora,
        "target_modules": list(spec.target_modules), "layers_to_transform": layers, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
    }


def write_config(path: Path, spec: SyntheticSpec, layers: list[int] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(peft_config(spec, layers), indent=2))


class RandomBank:
    """Pre-scaled random values in the output dtype: a factor is a slice, no arithmetic or copy per adapter."""

    def __init__(self, seed: int, dtype: torch.dtype, fan_ins: set[int]):
        bank = torch.randn(BANK_SIZE, generator=torch.Generator().manual_seed(seed))
        self.dtype = dtype
        self.a = {fan_in: (bank / math.sqrt(fan_in)).to(dtype) for fan_in in fan_ins}  # PEFT-like A init
        self.b = (bank * B_STD).to(dtype)  # non-zero B: the adapter changes outputs

    def take(self, values: torch.Tensor, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        n = shape[0] * shape[1]
        start = int(rng.integers(0, values.numel() - n))
        return values[start:start + n].view(shape)


def random_factors(config, spec: SyntheticSpec, rng: np.random.Generator, bank: RandomBank,
                   layers: list[int] | None = None) -> dict[str, torch.Tensor]:
    """PEFT tensor name -> a view into the bank (A (r, in), B (out, r))."""
    shapes = module_shapes(config)
    tensors = {}
    for layer in layers if layers is not None else range(num_layers(config)):
        for module in spec.target_modules:
            fan_in, fan_out = shapes[module]
            tensors[peft_key(layer, module, "A")] = bank.take(bank.a[fan_in], (spec.rank, fan_in), rng)
            tensors[peft_key(layer, module, "B")] = bank.take(bank.b, (fan_out, spec.rank), rng)
    return tensors


def make_bank(config, seed: int = 0, dtype: torch.dtype = torch.float16) -> RandomBank:
    return RandomBank(seed, dtype, {fan_in for fan_in, _ in module_shapes(config).values()})


def write_adapter(path: Path, config, spec: SyntheticSpec, rng: np.random.Generator, bank: RandomBank,
                  layers: list[int] | None = None) -> int:
    """Writes one adapter folder; returns its weight bytes."""
    write_config(path, spec, layers)
    tensors = {k: t.clone() for k, t in random_factors(config, spec, rng, bank, layers).items()}  # own storage each
    save_file(tensors, path / WEIGHTS_FILE)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def spec_for(i: int, rng: np.random.Generator, ranks: list[int], targets: str) -> SyntheticSpec:
    rank = int(rng.choice(ranks))
    if targets == "mixed":
        modules = list(TARGET_SETS.values())[i % len(TARGET_SETS)]
    elif targets in TARGET_SETS:
        modules = TARGET_SETS[targets]
    else:
        modules = tuple(m for m in MODULES if m in targets.split(","))
    use_rslora = bool(rng.random() < 0.25)
    return SyntheticSpec(rank, 16.0, use_rslora, modules)


def generate(out_dir: Path, config, n: int, seed: int = 0, ranks: tuple[int, ...] = (8, 16, 32, 64),
             targets: str = "mixed", dtype: torch.dtype = torch.float16, prefix: str = "synth") -> list[Path]:
    bank = make_bank(config, seed, dtype)
    paths = []
    width = max(4, len(str(n - 1)))
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        path = out_dir / f"{prefix}-{i:0{width}d}"
        write_adapter(path, config, spec_for(i, rng, list(ranks), targets), rng, bank)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranks", default="8,16,32,64", help="comma-separated ranks, drawn uniformly")
    p.add_argument("--targets", default="mixed",
                   help=f"mixed (cycles {', '.join(TARGET_SETS)}), one of those sets, or comma-separated modules")
    p.add_argument("--dtype", choices=list(DTYPES), default="float16")
    p.add_argument("--prefix", default="synth", help="adapter folder names are PREFIX-00000 ...")
    p.add_argument("--model", default=None, help="base model the shapes come from (default: the embedded one)")
    args = p.parse_args(argv)
    if args.targets not in ("mixed", *TARGET_SETS) and not set(args.targets.split(",")) <= set(MODULES):
        p.error(f"--targets must be mixed, one of {list(TARGET_SETS)}, or modules from {MODULES}")
    from transformers import AutoConfig

    from server.config import default_cache_dir
    from server.model.loader import default_model_path, resolve_checkpoint

    if args.model and Path(args.model, "config.json").is_file():
        config = AutoConfig.from_pretrained(args.model)
    else:
        config = resolve_checkpoint(args.model or str(default_model_path()), default_cache_dir()).config
    t0 = time.perf_counter()
    paths = generate(args.out_dir, config, args.n, args.seed, tuple(int(r) for r in args.ranks.split(",")),
                     args.targets, DTYPES[args.dtype], args.prefix)
    size = sum((path / WEIGHTS_FILE).stat().st_size for path in paths)
    print(f"wrote {len(paths)} adapters ({size / 2**20:.0f} MiB) to {args.out_dir} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
