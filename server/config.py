"""Engine configuration: one dataclass, checked once; the CLI maps onto it."""

from dataclasses import dataclass
from pathlib import Path

from kernels.cache_dir import default_cache_dir
from kernels.limits import MAX_LORA_RANK
from server.memory.eviction import POLICIES as EVICTION_POLICIES

__all__ = ["DTYPES", "WEIGHTS", "EngineConfig", "cpu_has_fast_bf16", "default_cache_dir", "resolve_dtype"]

DTYPES = ("auto", "bfloat16", "float32", "float16")
WEIGHTS = ("auto", "fp32", "bf16", "gguf")


def cpu_has_fast_bf16() -> bool:
    """AMX: torch's bf16 matmuls there outrun any fp32 path. AVX512-BF16 alone does not: on the 2-core AMD
    EPYC with it, dense-weight serving with bf16 activations (torch's GEMMs, no step plan) made 247 output
    tok/s against 343 in fp32 through the step plan (bench/peers/llama_server_compare's workload, base)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str, weights: str = "fp32", model: str | None = "") -> str:
    """auto: bfloat16 on CUDA, and on CPUs with AMX for dense weights (torch's bf16 GEMMs); float32
    where the CPU matmul kernel serves the weights (GGUF blocks, bf16 weights; auto weights on a .gguf model,
    the embedded default included): it computes in fp32 whatever the activations' dtype, so bf16 activations
    would only add roundings and conversions, and the step plan runs fp32 steps."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "bfloat16"
    kernel_weights = weights in ("gguf", "bf16") or (weights == "auto" and (model is None or model.endswith(".gguf")))
    return "bfloat16" if cpu_has_fast_bf16() and not kernel_weights else "float32"


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # HF directory or .gguf file; None = the embedded SmolLM2-135M-Instruct
    dtype: str = "auto"  # resolve_dtype: float32 for the CPU kernel's weights, bfloat16 on CUDA or with native bf16
    # weight precision: "gguf" serves a .gguf model's Q8_0/Q4_0/Q4_1 blocks as they are (activations stay in
    # fp32); "fp32" dequantizes every weight to the compute dtype; "bf16" rounds the matmul weights to bfloat16
    # (CPU: fp32 activations, fp32 accumulation, half the bytes per step); "auto" = gguf for a .gguf model on CPUs
    # where the quantized matmul kernel builds, else fp32 (server/model/loader.py resolve_weights)
    weights: str = "auto"
    device: str = "cpu"
    pool_mb: int = 512  # the unified pool: KV pages (and, later, adapter pages)
    block_size: int = 16  # tokens per KV page
    max_num_seqs: int = 64  # sequences in one step
    max_batch_tokens: int = 2048  # tokens in one step (prefill chunks + decodes)
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    max_lora_rank: int = 64  # adapters of higher rank are refused at registration
    adapter_cache_mb: int = 1024  # host-memory budget for adapter weights read from disk
    num_threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    cache_dir: Path | None = None  # converted-weights cache; None = default_cache_dir()
    prefix_caching: bool = True  # reuse cached KV of shared prompt prefixes (keyed by LoRA content identity)
    eviction: str = "lru"  # which idle thing the pool evicts first: lru | cost (server/memory/eviction.py)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.pool_mb < 1:
            raise ValueError("pool_mb must be positive")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        if self.max_num_seqs < 1 or self.max_batch_tokens < 1:
            raise ValueError("max_num_seqs and max_batch_tokens must be positive")
        if self.max_lora_rank < 1:
            raise ValueError(f"--max-lora-rank must be positive, got {self.max_lora_rank}")
        # The C kernel would refuse every step with a higher-rank adapter in it; the Triton ones tile any rank.
        if self.device == "cpu" and self.max_lora_rank > MAX_LORA_RANK:
            raise ValueError(
                f"--max-lora-rank {self.max_lora_rank} is above {MAX_LORA_RANK}, the most the CPU LoRA kernel accepts"
            )
        if self.eviction not in EVICTION_POLICIES:
            raise ValueError(f"eviction must be one of {EVICTION_POLICIES}, got {self.eviction!r}")
        if self.adapter_cache_mb < 0:
            raise ValueError("adapter_cache_mb must be non-negative")
        self.dtype = resolve_dtype(self.dtype, self.device, self.weights, self.model)
        if self.cache_dir is None:
            self.cache_dir = default_cache_dir()
