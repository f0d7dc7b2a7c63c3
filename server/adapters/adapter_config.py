"""Validate a PEFT adapter_config.json against the base model, without touching the weights.

Its patterns (a target_modules regex, layers_pattern) are matched with RE2, in time linear in the
input: under Python's re a pattern like "(.*){20}z" backtracks for hours with the GIL held.
"""

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import re2

from server.adapters.formats import CONFIG_FIELDS, format_for_config
from server.adapters.types import MODULES, AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"

# Fields that do not change what a trained LoRA computes at inference (training-time or bookkeeping).
IGNORED_FIELDS = frozenset({
    "auto_mapping", "base_model_name_or_path", "revision", "peft_version", "inference_mode", "lora_dropout",
    "fan_in_fan_out",  # PEFT resets it to False on nn.Linear, so the layout is the same
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "megatron_core", "qalora_group_size",
    "runtime_config", "ensure_weight_tying",
})
HANDLED_FIELDS = frozenset({
    "peft_type", "task_type", "r", "lora_alpha", "use_rslora", "target_modules", "layers_to_transform",
    "layers_pattern", "init_lora_weights",
}) | CONFIG_FIELDS  # and what the formats (server/adapters/formats) handle, e.g. use_dora
# These initialisations rewrite the base weights too; an adapter saved without converting them is only
# correct on that rewritten base.
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
MAX_PATTERN_CHARS = 1024
MAX_TARGETS = 4096  # names in a target_modules list (PEFT configs may list every layer's modules)
MAX_LAYER_PATTERNS = 64
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the adapter's problem, reported in its AdapterError


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """What the registry needs from adapter_config.json."""

    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]  # subset of MODULES, in MODULES order
    layers: tuple[int, ...]  # sorted decoder layer indices
    format: str = "lora"  # server/adapters/formats name


def _fail(name: str, problem: str) -> AdapterError:
    return AdapterError(f"adapter {name!r}: {problem}")


def load_config_json(name: str, data: bytes) -> dict:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise _fail(name, f"cannot read {CONFIG_FILE}: {e}") from None
    if not isinstance(raw, dict):
        raise _fail(name, f"{CONFIG_FILE} is not a JSON object")
    return raw


def parse_adapter_config(name: str, raw: dict, num_layers: int, max_rank: int) -> AdapterSpec:
    if raw.get("peft_type") != "LORA":
        raise _fail(name, f"peft_type {raw.get('peft_type')!r} is not supported (only LORA)")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise _fail(name, f"task_type {raw['task_type']!r} is not supported (only CAUSAL_LM)")
    for key in CONFIG_FIELDS:
        if key in raw and raw[key] is not None and not isinstance(raw[key], bool):
            raise _fail(name, f"{key} must be true or false, got {raw[key]!r}")
    fmt = format_for_config(raw)
    if problem := fmt.config_problem(raw):  # before the generic refusal below: the format says why
        raise _fail(name, problem)
    for key, value in raw.items():
        if key not in IGNORED_FIELDS and key not in HANDLED_FIELDS and _is_set(value):
            raise _fail(name, f"unsupported option {key}={value!r}")
    init = raw.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        raise _fail(name, f"unsupported option init_lora_weights={init!r} (the adapter expects rewritten base weights)")

    rank = raw.get("r")
    if not _is_int(rank) or rank < 1:
        raise _fail(name, f"r must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise _fail(name, f"rank r={rank} is above the configured max rank {max_rank}")
    alpha = raw.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise _fail(name, f"lora_alpha must be a finite number, got {alpha!r}")
    use_rslora = raw.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise _fail(name, f"use_rslora must be true or false, got {use_rslora!r}")

    targets = raw.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        targets = tuple(dict.fromkeys(targets))  # order kept: errors name the first bad one
        if len(targets) > MAX_TARGETS:
            raise _fail(name, f"target_modules lists {len(targets)} names, more than {MAX_TARGETS}")
        if long := next((t for t in targets if len(t) > MAX_PATTERN_CHARS), None):
            raise _fail(name, f"target_modules name {long[:40]!r}... is longer than {MAX_PATTERN_CHARS} characters")
    elif isinstance(targets, str):
        if len(targets) > MAX_PATTERN_CHARS:
            raise _fail(name, f"target_modules regex is longer than {MAX_PATTERN_CHARS} characters")
    else:
        raise _fail(name, f"target_modules must be a list of names, a regex or 'all-linear', got {targets!r}")
    layers_to_transform = raw.get("layers_to_transform")
    if _is_int(layers_to_transform):
        layers_to_transform = (layers_to_transform,)
    elif isinstance(layers_to_transform, list) and all(_is_int(i) for i in layers_to_transform):
        layers_to_transform = tuple(sorted(set(layers_to_transform))) or None  # PEFT treats [] as "every layer"
    elif layers_to_transform is not None:
        raise _fail(name, f"layers_to_transform must be an integer or a list of integers, got {layers_to_transform!r}")
    pattern = raw.get("layers_pattern")
    if isinstance(pattern, list) and all(isinstance(p, str) for p in pattern):
        pattern = tuple(pattern)
        if len(pattern) > MAX_LAYER_PATTERNS:
            raise _fail(name, f"layers_pattern lists {len(pattern)} patterns, more than {MAX_LAYER_PATTERNS}")
    elif pattern is not None and not isinstance(pattern, str):
        raise _fail(name, f"layers_pattern must be a string or a list of strings, got {pattern!r}")
    if pattern and any(len(p) > MAX_PATTERN_CHARS for p in ((pattern,) if isinstance(pattern, str) else pattern)):
        raise _fail(name, f"layers_pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        modules, layers = resolve_targets(targets, layers_to_transform, pattern or None, num_layers)
    except AdapterError as e:
        raise _fail(name, str(e)) from None
    return AdapterSpec(rank, float(alpha), use_rslora, modules, layers, fmt.name)


def _is_set(value) -> bool:
    return value not in (None, False, "", "none", 0) and value != [] and value != {}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _module_names(num_layers: int) -> list[str]:
    """Every module name PEFT could match on a Llama-family model (named_modules of *ForCausalLM)."""
    names = ["model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb", "lm_head"]
    for i in range(num_layers):
        p = f"model.layers.{i}"
        names += [p, f"{p}.self_attn", f"{p}.mlp", f"{p}.mlp.act_fn", f"{p}.input_layernorm",
                  f"{p}.post_attention_layernorm"]
        names += [f"{p}.self_attn.{m}" for m in MODULES[:4]] + [f"{p}.mlp.{m}" for m in MODULES[4:]]
    return names


def compile_pattern(regex: str, field: str, given: str):
    """RE2 (linear time); AdapterError naming the field for what RE2 cannot run (backreferences, lookaround)."""
    try:
        return re2.compile(regex, _RE2_OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise AdapterError(f"{field} {given!r} is not a valid RE2 regex ({reason}); RE2 syntax is required:"
                           f" no backreferences or lookaround") from None


_ANY_LAYER = re2.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


def _layer_of(key: str, layer_regexes) -> int | None:
    """PEFT's layer-index extraction for layers_to_transform (first numbered segment)."""
    for regex in layer_regexes or (_ANY_LAYER,):
        if match := regex.match(key):
            return int(match["idx"])
    return None


@lru_cache(maxsize=1024)  # adapters share a handful of target specs; 10,000 registrations resolve each once
def resolve_targets(targets: str | tuple[str, ...], layers_to_transform: tuple[int, ...] | None,
                    layers_pattern: str | tuple[str, ...] | None, num_layers: int):
    """PEFT's matching rules (exact name, ".suffix", full-match regex, "all-linear") over the base's modules.

    Raises AdapterError with the problem only; the caller adds the adapter's name."""
    keys = _module_names(num_layers)
    supported = {k: (int(k.split(".")[2]), k.rsplit(".", 1)[1]) for k in keys if k.endswith(MODULES)}
    if layers_to_transform is not None:
        bad = [i for i in layers_to_transform if not 0 <= i < num_layers]
        if bad:
            raise AdapterError(f"layers_to_transform {bad} outside the base model's {num_layers} layers")

    if isinstance(targets, str):
        if layers_to_transform is not None or layers_pattern:
            raise AdapterError("layers_to_transform/layers_pattern cannot be combined with a target_modules regex")
        if targets.lower() == "all-linear":
            matched = [k for k in keys if k in supported]
        else:
            regex = compile_pattern(targets, "target_modules regex", targets)
            matched = [k for k in keys if regex.fullmatch(k)]
        if not matched:
            raise AdapterError(f"target_modules regex {targets!r} matches no module of the base model")
    else:
        patterns = (layers_pattern,) if isinstance(layers_pattern, str) else layers_pattern or ()
        layer_regexes = [compile_pattern(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", "layers_pattern", p)
                         for p in patterns] if layers_to_transform is not None else []
        matched = []
        for target in targets:
            hits = [k for k in keys if k == target or k.endswith("." + target)]
            if not hits:
                raise AdapterError(f"target module {target!r} is not supported (only {', '.join(MODULES)})")
            if layers_to_transform is not None and target not in keys:
                hits = [k for k in hits if _layer_of(k, layer_regexes) in layers_to_transform]
            matched += hits

    unsupported = sorted({k for k in matched if k not in supported})
    if unsupported:
        via = f"target_modules {targets!r} selects " if isinstance(targets, str) else ""
        raise AdapterError(f"{via}target module {unsupported[0]!r} is not supported (only {', '.join(MODULES)})")
    pairs = {supported[k] for k in matched}
    if not pairs:
        raise AdapterError("target_modules and layers_to_transform select no module of the base model")
    modules = tuple(m for m in MODULES if any(pm == m for _, pm in pairs))
    layers = tuple(sorted({layer for layer, _ in pairs}))
    if len(pairs) != len(modules) * len(layers):
        raise AdapterError("target_modules select different modules in different layers, which is not supported")
    return modules, layers
