"""Read an adapter's LoRA factors from adapter_model.safetensors and check them against its ref and the base."""

import torch
from safetensors import SafetensorError, safe_open

from server.adapters.adapter_config import WEIGHTS_FILE, check_files
from server.adapters.shapes import module_shapes, peft_key
from server.adapters.types import AdapterError, AdapterRef, AdapterWeights

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # safetensors dtype names


def load_adapter_weights(ref: AdapterRef, base_config, dtype: torch.dtype = torch.float32) -> AdapterWeights:
    """Every A (r, in) and B (out, r) the ref promises, cast to dtype; nothing else may be in the file."""
    check_files(ref.name, ref.path)  # the folder may have changed since registration
    shapes = module_shapes(base_config)
    expected: dict[str, tuple[str, tuple[int, str], tuple[int, int]]] = {}
    for layer in ref.layers:
        for module in ref.target_modules:
            fan_in, fan_out = shapes[module]
            expected[peft_key(layer, module, "A")] = ("a", (layer, module), (ref.rank, fan_in))
            expected[peft_key(layer, module, "B")] = ("b", (layer, module), (fan_out, ref.rank))

    def fail(problem: str) -> AdapterError:
        return AdapterError(f"adapter {ref.name!r}: {problem}")

    factors: dict[str, dict[tuple[int, str], torch.Tensor]] = {"a": {}, "b": {}}
    try:
        with safe_open(ref.path / WEIGHTS_FILE, framework="pt") as f:
            keys = set(f.keys())
            if extra := sorted(keys - expected.keys()):
                raise fail(f"unexpected tensor {extra[0]!r} in {WEIGHTS_FILE} ({len(extra)} unexpected in all)")
            if missing := sorted(expected.keys() - keys, key=_natural):
                raise fail(f"missing tensor {missing[0]!r} in {WEIGHTS_FILE} ({len(missing)} missing in all)")
            for key, (factor, slot, shape) in expected.items():
                meta = f.get_slice(key)
                if meta.get_dtype() not in FLOAT_DTYPES:
                    raise fail(f"tensor {key!r} has dtype {meta.get_dtype()}, not a float type")
                if tuple(meta.get_shape()) != shape:
                    raise fail(f"tensor {key!r} has shape {tuple(meta.get_shape())}, the base model needs {shape}"
                               f" (r={ref.rank})")
                tensor = f.get_tensor(key).to(dtype)
                if not torch.isfinite(tensor).all():
                    raise fail(f"tensor {key!r} holds non-finite values (NaN or inf) in {dtype}")
                factors[factor][slot] = tensor.contiguous()
    except SafetensorError as e:
        raise fail(f"{WEIGHTS_FILE} is not a readable safetensors file: {e}") from None
    except OSError as e:
        raise fail(f"cannot read {WEIGHTS_FILE}: {e}") from None
    return AdapterWeights(ref, factors["a"], factors["b"])


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.split(".")]
