"""A Llama-family decoder (Llama 2/3, SmolLM, Mistral-style GQA) over a paged KV cache.

Module names follow transformers' so checkpoints load as they are, and so LoRA can later wrap the
projections by name without touching this file.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from kernels import ops
from server.model.batch import ForwardStep

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_cache, v_cache), (pages, bs, kvh, hd)


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x); with residual, x += residual first, in place (the residual stream's add, fused)."""
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


class Rotary(nn.Module):
    """cos/sin table for every position, from transformers' rope init (default, linear, llama3, yarn...)."""

    def __init__(self, config: PretrainedConfig, max_positions: int):
        super().__init__()
        params = config.rope_parameters
        rope_type = params.get("rope_type", "default")
        if rope_type == "default":
            dim = head_dim(config)
            inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            scaling = 1.0
        else:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        freqs = torch.arange(max_positions, dtype=torch.float)[:, None] * inv_freq[None, :]  # (P, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (P, hd)
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)  # (T, hd) each


def project(proj: nn.Module, x: torch.Tensor, step: ForwardStep) -> torch.Tensor:
    """A projection of the model; wrapped ones (LoRA) read the step, plain Linears do not."""
    return proj(x, step) if getattr(proj, "reads_step", False) else proj(x)


def project_together(fused: nn.Module | None, projs: tuple[nn.Module, ...], x: torch.Tensor, step: ForwardStep):
    """Projections of the same x: one GEMM when fused (server/model/fused.py), else one each."""
    if fused is None:
        return tuple(project(p, x, step) for p in projs)
    return fused(x, step, projs)


class Attention(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = head_dim(config)
        self.scale = self.head_dim**-0.5
        bias = getattr(config, "attention_bias", False)
        d, q_dim, kv_dim = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, q_dim, bias=bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=bias)
        self.o_proj = nn.Linear(q_dim, d, bias=bias)
        self.fused_qkv: nn.Module | None = None  # set by server/model/fused.py

    def forward(self, x, cos, sin, step: ForwardStep, kv: tuple[torch.Tensor, torch.Tensor]):
        T, batch = x.shape[0], step.attention
        q, k, v = project_together(self.fused_qkv, (self.q_proj, self.k_proj, self.v_proj), x, step)
        q = q.view(T, self.num_heads, self.head_dim)  # (T, H, hd)
        k = k.view(T, self.num_kv_heads, self.head_dim)  # (T, kvh, hd)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        ops.rotary_(q, k, cos, sin)
        k_cache, v_cache = kv
        ops.store_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        p = batch.num_prefill_tokens
        parts = []
        if p:  # prefill chunks
            parts.append(
                ops.paged_attention_prefill(
                    q[:p], k_cache, v_cache, batch.prefill_block_tables,
                    batch.prefill_cu_seqlens, batch.prefill_context_lens, self.scale,
                )
            )
        if p < T:  # decode rows
            parts.append(
                ops.paged_attention_decode(
                    q[p:], k_cache, v_cache, batch.decode_block_tables, batch.decode_context_lens, self.scale
                )
            )
        o = parts[0] if len(parts) == 1 else torch.cat(parts)  # (T, H, hd)
        return project(self.o_proj, o.reshape(T, -1), step)


class MLP(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        d, h, bias = config.hidden_size, config.intermediate_size, getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(d, h, bias=bias)
        self.up_proj = nn.Linear(d, h, bias=bias)
        self.down_proj = nn.Linear(h, d, bias=bias)
        self.fused_gate_up: nn.Module | None = None  # set by server/model/fused.py

    def forward(self, x, step: ForwardStep):
        gate, up = project_together(self.fused_gate_up, (self.gate_proj, self.up_proj), x, step)
        return project(self.down_proj, ops.silu_mul(gate, up), step)


class DecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, step: ForwardStep, kv):
        """x (T, D) -> (T, D); x itself is the residual stream, updated in place."""
        attn = self.self_attn(self.input_layernorm(x), cos, sin, step, kv)
        return x.add_(self.mlp(self.post_attention_layernorm(x, attn), step))


class LlamaBackbone(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: PretrainedConfig, max_positions: int):
        super().__init__()
        self.config = config
        self.model = LlamaBackbone(config)
        self.rotary = Rotary(config, max_positions)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def hidden_states(self, input_ids, positions, step: ForwardStep, kv_cache: KVCache) -> torch.Tensor:
        """input_ids, positions (T,) -> final normed hidden states (T, D)."""
        x = self.model.embed_tokens(input_ids)  # (T, D)
        cos, sin = self.rotary(positions, x.dtype)
        for layer, kv in zip(self.model.layers, kv_cache, strict=True):
            x = layer(x, cos, sin, step, kv)
        return self.model.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.model.embed_tokens.weight if self.tied else self.lm_head.weight
        return F.linear(h, w)  # (S, V)

    def greedy_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """(S, D) -> (S,) the argmax of each row's logits; a serving mode may swap in a faster exact path."""
        return self.logits(h).argmax(-1)

    def forward(self, input_ids, positions, step: ForwardStep, kv_cache: KVCache) -> torch.Tensor:
        h = self.hidden_states(input_ids, positions, step, kv_cache)
        return self.logits(h[step.attention.logits_indices])  # (S, V)

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        if self.tied:
            state.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(state, strict=False, assign=True)
        missing = [m for m in missing if not m.startswith("rotary.")]
        unexpected = [u for u in unexpected if "rotary_emb" not in u]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
