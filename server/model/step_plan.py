"""A step through all decoder layers in one C call (kernels/cpu/step_plan.c).

At one decode row a layer's ~15 Python calls (module calls, argument checks, ctypes) cost about as much as
its matmuls on GGUF blocks. The plan reads the model once: each layer's fused q/k/v and gate/up, o and down
(QuantLinears, also for dense fp32 weights), its norms and which projections are wrapped for LoRA; per step
it hands over the step's tensors, and the same kernels run in the same order as in the model's forward.
Prefill chunks and decode rows both (the same two attention kernels as Attention.forward). At each wrapped
projection the step's adapter rows as LoRALinear.add_delta orders them: lora.c (plain rows, or a mixture's
(row, slot) entries), arrow.c (rows routed per token), dora.c's rescale. A step with a routing capture, or a
model it cannot read, goes through the model's forward as before, which is also what tests compare the plan
against. LoRA groups of any size take lora.c here (the forward hands groups of more than 8 rows to a GEMM
pair, and a mixture's entries to a gather and index_add): equal up to summation order.
"""

import ctypes
import os

import torch
from torch import nn

from kernels.cpu import quant_matmul as cpu_quant
from kernels.cpu import step_plan as c
from server.model.batch import ForwardStep
from server.model.fused import FusedProjections
from server.model.quant import QuantLinear

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def _base(proj: nn.Module) -> nn.Module:
    return getattr(proj, "base", proj)


def _plain(m: nn.Module) -> QuantLinear | None:
    """m as a QuantLinear the plan can call: no bias, rows of blocks contiguous, on the CPU."""
    ok = isinstance(m, QuantLinear) and m.bias is None and m.blocks.stride(1) == 1 and m.blocks.device.type == "cpu"
    return m if ok else None


def _fp32_vector(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"


def _int32_rows(tables: torch.Tensor) -> torch.Tensor:
    assert tables.dtype == torch.int32 and tables.dim() == 2 and tables.stride(1) == 1
    return tables


class StepPlan:
    def __init__(self, model: nn.Module, layers: ctypes.Array, kernels: c.Kernels):
        self.model, self.layers, self.kernels = model, layers, kernels
        cfg = model.config
        self.D, self.H, self.kvh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = model.model.layers[0].self_attn.head_dim
        self.inter, self.n_layers = cfg.intermediate_size, len(model.model.layers)
        self.eps = model.model.layers[0].input_layernorm.eps
        self._caches: tuple[int, ctypes.Array] | None = None  # (id of the kv cache list, its Cache array)

    @classmethod
    def build(cls, model: nn.Module) -> "StepPlan | None":
        """The plan of this model, or None when a layer is not one it can drive (or the kernels are not built)."""
        if os.environ.get("LORAPLEX_STEP_PLAN") == "off":  # benchmarks and profiles of the forward itself
            return None
        kernels = c.kernels()
        if kernels is None or model.model.norm.weight.dtype != torch.float32:  # fp32 compute only
            return None
        layers = (c.Layer * len(model.model.layers))()
        for entry, layer in zip(layers, model.model.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            if not isinstance(attn.fused_qkv, FusedProjections) or not isinstance(mlp.fused_gate_up, FusedProjections):
                return None
            mats = [_plain(attn.fused_qkv.base), _plain(_base(attn.o_proj)), _plain(mlp.fused_gate_up.base),
                    _plain(_base(mlp.down_proj))]
            norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
            if any(m is None for m in mats) or not all(_fp32_vector(w) for w in norms):
                return None
            for i, m in enumerate(mats):
                entry.w[i], entry.ws[i], entry.type[i] = m.blocks.data_ptr(), m.blocks.stride(0), m.qtype
            entry.norm_in, entry.norm_post = norms[0].data_ptr(), norms[1].data_ptr()
            projs = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            entry.lora_wrapped = sum(1 << i for i, p in enumerate(projs) if getattr(p, "reads_step", False))
        return cls(model, layers, kernels)

    def serves(self, step: ForwardStep) -> bool:
        if step.capture is not None:
            return False
        lora = step.lora
        return lora is None or (lora.pool_flat.dtype == torch.float32 and lora.a_offsets.device.type == "cpu")

    def _cache_array(self, kv_cache: KVCache) -> ctypes.Array:
        if self._caches is None or self._caches[0] != id(kv_cache):
            arr = (c.Cache * len(kv_cache))(*((k.data_ptr(), v.data_ptr()) for k, v in kv_cache))
            self._caches = (id(kv_cache), arr)
        return self._caches[1]

    def hidden_states(self, input_ids, positions, step: ForwardStep, kv_cache: KVCache) -> torch.Tensor:
        """model.hidden_states, with the layers in one C call when the step is one the plan serves."""
        m = self.model
        if not self.serves(step):
            return m.hidden_states(input_ids, positions, step, kv_cache)
        x = m.model.embed_tokens(input_ids)  # (T, D)
        assert x.dtype == torch.float32
        cos, sin = m.rotary(positions, x.dtype)  # (T, hd) each
        batch, (k0, _) = step.attention, kv_cache[0]
        T, D, nq, nkv, inter = x.shape[0], self.D, self.H * self.hd, self.kvh * self.hd, self.inter
        slots, P = batch.slot_mapping, batch.num_prefill_tokens
        assert x.is_contiguous() and cos.is_contiguous() and sin.is_contiguous() and slots.is_contiguous()
        assert k0.stride()[1:] == (nkv, self.hd, 1)
        sizes = [D, nq + 2 * nkv, nq, nq, D, 2 * inter, inter, D]  # h, qkv, q, attn, o, gu, act, down
        scratch = torch.empty(T * sum(sizes), dtype=torch.float32).split([T * s for s in sizes])
        s = c.Step(
            T=T, D=D, H=self.H, kvh=self.kvh, hd=self.hd, inter=inter, num_threads=torch.get_num_threads(),
            gemv_rows=cpu_quant.GEMV_MAX_ROWS,
            eps=self.eps, scale=self.hd**-0.5, x=x.data_ptr(), cos=cos.data_ptr(), sin=sin.data_ptr(),
            slots=slots.data_ptr(), P=P, page_stride=k0.stride(0), slot_stride=k0.stride(1), bs=k0.shape[1],
            num_pages=k0.shape[0],
            h=scratch[0].data_ptr(), qkv=scratch[1].data_ptr(), q=scratch[2].data_ptr(), attn=scratch[3].data_ptr(),
            o=scratch[4].data_ptr(), gu=scratch[5].data_ptr(), act=scratch[6].data_ptr(), down=scratch[7].data_ptr(),
            n_layers=self.n_layers,
        )  # fmt: skip
        if P:
            tables = _int32_rows(batch.prefill_block_tables)
            cu, ctx = batch.prefill_cu_seqlens, batch.prefill_context_lens
            assert cu.dtype == ctx.dtype == torch.int32 and cu.is_contiguous() and ctx.is_contiguous()
            s.S, s.p_table_stride, s.p_max_blocks = ctx.shape[0], tables.stride(0), tables.shape[1]
            s.p_tables, s.p_cu, s.p_ctx = tables.data_ptr(), cu.data_ptr(), ctx.data_ptr()
        if P < T:
            tables, ctx = _int32_rows(batch.decode_block_tables), batch.decode_context_lens
            assert ctx.dtype == torch.int32 and ctx.is_contiguous()
            s.tables, s.table_stride, s.ctx = tables.data_ptr(), tables.stride(0), ctx.data_ptr()
        made = self._lora_fields(s, step.lora) if step.lora is not None else ()
        c.run_layers(self.kernels, self.layers, self._cache_array(kv_cache), self.n_layers, s)
        del made  # the step's pointers into them were live until here
        return m.model.norm(x)

    def _lora_fields(self, s: c.Step, lora) -> tuple:
        """The step's adapter rows into s; returns the tensors made here, to keep alive through the C call."""
        groups = lora.info.row_groups()
        offs = [lora.a_offsets, lora.b_offsets, lora.proto_offsets, lora.scale_offsets]
        assert all(t is None or (t.is_contiguous() and t.shape[1:] == (self.n_layers, c.N_MODULES)) for t in offs)
        rows, s.lora_threads = groups.rows, s.num_threads
        if lora.info.entry_rows is not None:  # mixture entries: token rows shared across groups, one thread
            rows, s.lora_threads = lora.info.entry_rows[groups.rows].contiguous(), 1  # (n,)
        targeted = torch.tensor([sum(1 << m for m, t in enumerate(row) if t) for row in lora.targeted])  # (L,)
        s.n_groups, s.rows, s.table = len(groups.spans), rows.data_ptr(), groups.table.data_ptr()
        s.group_slots, s.scales = groups.slots.data_ptr(), groups.group_scalings.data_ptr()
        s.targeted = targeted.data_ptr()
        s.a_off, s.b_off, s.pool = lora.a_offsets.data_ptr(), lora.b_offsets.data_ptr(), lora.pool_flat.data_ptr()
        arrow = lora.arrow
        if arrow is not None and arrow.rows.numel():
            s.ar_R, s.ar_C = arrow.cand_slots.shape
            assert arrow.cand_slots.is_contiguous() and arrow.levels.is_contiguous()
            s.proto_off, s.ar_rows = lora.proto_offsets.data_ptr(), arrow.rows.data_ptr()
            s.ar_cand_slots, s.ar_top_k = arrow.cand_slots.data_ptr(), arrow.top_k.data_ptr()
            s.ar_levels, s.ar_inv_temp = arrow.levels.data_ptr(), arrow.inv_temperature.data_ptr()
            s.ar_ranks, s.ar_scalings = arrow.entries.ranks.data_ptr(), arrow.entries.scalings.data_ptr()
        if lora.scale_offsets is not None:
            assert lora.info.entry_rows is None and lora.info.row_slots.dtype == torch.int32
            s.row_slots, s.scale_off = lora.info.row_slots.data_ptr(), lora.scale_offsets.data_ptr()
        return rows, targeted
