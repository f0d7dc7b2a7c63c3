"""An adapter's factors: adapter_model.safetensors read whole as bytes, checked against its config and base.

Registration reads and checks the file once and records its digest; a later read (the host cache
evicted the weights) must find the same bytes, so what an adapter computes never changes under its
name, whatever happens to the folder afterwards.
"""

import hashlib
import json
import math

import safetensors
import torch

from server.adapters.adapter_config import WEIGHTS_FILE, AdapterSpec
from server.adapters.files import AdapterDir
from server.adapters.formats import Expected, format_of
from server.adapters.shapes import module_shapes
from server.adapters.types import AdapterError, AdapterRef, AdapterWeights

FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
HEADER_BYTES = 64 << 10  # the safetensors JSON header, plus a little per tensor below

def expected_tensors(spec: AdapterSpec | AdapterRef, base_config) -> Expected:
    """PEFT key -> (factor, (layer, module), shape) of every tensor the file must hold, as the format says."""
    shapes, fmt = module_shapes(base_config), format_of(spec.format)
    expected: Expected = {}
    for layer in spec.layers:
        for module in spec.target_modules:
            expected.update(fmt.tensors(layer, module, spec.rank, *shapes[module]))
    return expected


def weights_limit(spec: AdapterSpec | AdapterRef, base_config) -> int:
    """The largest file the config can explain: every expected tensor in float64, and its header."""
    expected = expected_tensors(spec, base_config)
    return sum(math.prod(shape) for _, _, shape in expected.values()) * 8 + HEADER_BYTES + 256 * len(expected)


def content_digest(spec: AdapterSpec | AdapterRef, data: bytes) -> str:
    """sha256 of what decides the adapter's math: the config fields we use and the weights file."""
    fields = [spec.rank, spec.alpha, spec.use_rslora, list(spec.target_modules), list(spec.layers)]
    if spec.format != "lora":  # LoRA digests stay what they were
        fields.append(spec.format)
    h = hashlib.sha256(json.dumps(fields).encode())
    h.update(b"\0")
    h.update(data)
    return h.hexdigest()


def check_weights(name: str, spec: AdapterSpec | AdapterRef, data: bytes, base_config, dtype: torch.dtype) -> None:
    """What parse_weights would refuse, without keeping the tensors (registration)."""
    _checked(name, spec, data, base_config, dtype)


def parse_weights(name: str, spec: AdapterSpec | AdapterRef, data: bytes, base_config, dtype: torch.dtype,
                  ) -> dict[str, dict[tuple[int, str], torch.Tensor]]:
    """factor ("a", "b", the format's others) -> (layer, module) -> tensor, cast to dtype; nothing else may be
    in the file."""
    factors: dict[str, dict[tuple[int, str], torch.Tensor]] = {f: {} for f in format_of(spec.format).file_factors}
    for flat, entries in _checked(name, spec, data, base_config, dtype):
        pieces = flat.to(dtype).split([math.prod(shape) for _, _, shape in entries])
        for (factor, slot, shape), piece in zip(entries, pieces, strict=True):
            factors[factor][slot] = piece.view(shape)
    return factors


Group = tuple[torch.Tensor, list[tuple[str, tuple[int, str], tuple[int, ...]]]]  # values, then what they hold


def _checked(name: str, spec: AdapterSpec | AdapterRef, data: bytes, base_config, dtype: torch.dtype,
             ) -> list[Group]:
    """The expected tensors, one flat tensor per file dtype, all known to be finite also in dtype.

    One pass over all the values rather than one per tensor: on a busy CPU each small torch op costs
    about a millisecond (its thread team must meet), and an adapter has hundreds of tensors."""

    def fail(problem: str) -> AdapterError:
        return AdapterError(f"adapter {name!r}: {problem}")

    expected = expected_tensors(spec, base_config)
    try:
        tensors = dict(safetensors.deserialize(data))  # key -> {"dtype", "shape", "data": bytearray}
    except Exception as e:  # SafetensorError, or whatever else a malformed header raises
        raise fail(f"{WEIGHTS_FILE} is not a readable safetensors file: {e}") from None
    if extra := sorted(tensors.keys() - expected.keys()):
        raise fail(f"unexpected tensor {extra[0]!r} in {WEIGHTS_FILE} ({len(extra)} unexpected in all)")
    if missing := sorted(expected.keys() - tensors.keys(), key=_natural):
        raise fail(f"missing tensor {missing[0]!r} in {WEIGHTS_FILE} ({len(missing)} missing in all)")
    by_dtype: dict[str, list[str]] = {}
    for key, (_, _, shape) in expected.items():
        info = tensors[key]
        if info["dtype"] not in FLOAT_DTYPES:
            raise fail(f"tensor {key!r} has dtype {info['dtype']}, not a float type")
        if tuple(info["shape"]) != shape:
            raise fail(f"tensor {key!r} has shape {tuple(info['shape'])}, the base model needs {shape} (r={spec.rank})")
        by_dtype.setdefault(info["dtype"], []).append(key)

    def finite(values: torch.Tensor) -> bool:  # NaN fails both tests; so does what would overflow in dtype
        low, high = torch.aminmax(values)
        return -torch.finfo(dtype).max <= float(low) and float(high) <= torch.finfo(dtype).max

    groups = []
    for file_dtype, keys in by_dtype.items():
        flat = torch.frombuffer(bytearray().join(tensors[k]["data"] for k in keys), dtype=FLOAT_DTYPES[file_dtype])
        if not finite(flat):
            bad = next(k for k in keys if not finite(torch.frombuffer(tensors[k]["data"], dtype=flat.dtype)))
            raise fail(f"tensor {bad!r} holds non-finite values (NaN or inf) in {dtype}")
        groups.append((flat, [expected[k] for k in keys]))
    return groups


def read_weights(ref: AdapterRef, base_config) -> bytes:
    """The weights file again, as safely as at registration; AdapterError unless it is what was registered."""
    with AdapterDir(ref.name, ref.path, ref.root) as folder:
        data = folder.read(WEIGHTS_FILE, weights_limit(ref, base_config))
    if data is None:
        raise AdapterError(f"adapter {ref.name!r}: missing {WEIGHTS_FILE} in {ref.path}")
    if content_digest(ref, data) != ref.digest:
        raise AdapterError(f"adapter {ref.name!r}: {WEIGHTS_FILE} changed on disk since it was registered;"
                           f" register it again to serve the new weights")
    return data


def load_adapter_weights(ref: AdapterRef, base_config, dtype: torch.dtype = torch.float32) -> AdapterWeights:
    """Every A (r, in), B (out, r) and the format's other factors the ref promises, cast to dtype."""
    factors = parse_weights(ref.name, ref, read_weights(ref, base_config), base_config, dtype)
    a, b = factors.pop("a"), factors.pop("b")
    return AdapterWeights(ref, a, b, factors)


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.split(".")]
