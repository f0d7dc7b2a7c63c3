"""step_plan.c's structs and entry point: every decoder layer of a step in one C call, on the
kernels the Python path calls (their addresses handed over, so both paths compute the same thing). The
twin is the model's own Python forward (server/model/step_plan.py checks each step fits)."""

import ctypes

from kernels.cpu.build import bind, load

P, I64, F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
N_MATS, N_MODULES = 4, 7  # qkv, o, gate_up, down; q, k, v, o, gate, up, down


class Kernels(ctypes.Structure):
    _fields_ = [(n, P) for n in ("matmul", "norm", "rotary", "store", "attend", "prefill", "lora", "silu_mul", "arrow",
                                     "dora")]


class Layer(ctypes.Structure):
    _fields_ = [("w", P * N_MATS), ("ws", I64 * N_MATS), ("type", I64 * N_MATS), ("norm_in", P), ("norm_post", P),
                ("lora_wrapped", I64)]


class Cache(ctypes.Structure):
    _fields_ = [("k", P), ("v", P)]


class Step(ctypes.Structure):
    _fields_ = [
        *((n, I64) for n in ("T", "D", "H", "kvh", "hd", "inter", "num_threads", "gemv_rows")),
        ("eps", F), ("scale", F),
        *((n, P) for n in ("x", "cos", "sin", "slots")),
        *((n, I64) for n in ("P", "S", "p_table_stride", "p_max_blocks")),
        *((n, P) for n in ("p_tables", "p_cu", "p_ctx", "tables", "ctx")),
        *((n, I64) for n in ("table_stride", "page_stride", "slot_stride", "bs", "num_pages")),
        *((n, P) for n in ("h", "qkv", "q", "attn", "o", "gu", "act", "down")),
        *((n, I64) for n in ("n_groups", "n_layers", "lora_threads")),
        *((n, P) for n in ("rows", "table", "group_slots", "a_off", "b_off", "scales", "pool", "targeted")),
        *((n, I64) for n in ("ar_R", "ar_C")),
        *((n, P) for n in ("proto_off", "ar_rows", "ar_cand_slots", "ar_top_k", "ar_ranks", "ar_scalings", "ar_levels",
                           "ar_inv_temp", "row_slots", "scale_off")),
    ]


_SOURCES = {  # field: (library, symbol)
    "matmul": ("quant_matmul", "quant_matmul_f32"),
    "norm": ("elementwise", "add_rms_norm_f32"),
    "rotary": ("elementwise", "rotary_f32"),
    "store": ("elementwise", "store_kv_f32"),
    "attend": ("paged_attention", "paged_decode_f32"),
    "prefill": ("paged_attention", "paged_prefill_f32"),
    "lora": ("lora", "lora_apply_f32"),
    "silu_mul": ("elementwise", "silu_mul_f32"),
    "arrow": ("arrow", "arrow_apply_f32"),
    "dora": ("dora", "dora_rescale_f32"),
}


def kernels() -> Kernels | None:
    """The kernels' addresses, or None when any library cannot be built (the Python path then serves)."""
    libs = {name: load(name) for name, _ in _SOURCES.values()}
    if load("step_plan") is None or any(lib is None for lib in libs.values()):
        return None
    return Kernels(**{f: ctypes.cast(getattr(libs[lib], sym), P).value for f, (lib, sym) in _SOURCES.items()})


def run_layers(k: Kernels, layers, caches, n_layers: int, step: Step) -> None:
    failed = I64(0)
    status = bind("step_plan", "run_layers", "pppipp")(
        ctypes.addressof(k), ctypes.addressof(layers), ctypes.addressof(caches), n_layers, ctypes.addressof(step),
        ctypes.addressof(failed),
    )
    if status != 0:
        raise ValueError(f"step_plan.c: a kernel refused layer {failed.value} (status {status})")
