"""xgrammar vs llguidance on this CPU, with SmolLM2's tokenizer (vocab 49152).

For a few JSON schemas: compile time (cold, no cache), then per-token mask time while forcing a valid
document through the matcher token by token (the tokens of a known-valid JSON text). Each engine's
masks are validated first: every forced token must be allowed by the mask computed before it.

    OMP_NUM_THREADS=1 .venv/bin/python bench/grammar_engines.py [--out bench/results/grammar_engines.md]
"""

import argparse
import json
import platform
import statistics
import time

import llguidance
import llguidance.hf
import llguidance.torch
import torch
import xgrammar as xgr

from server.config import default_cache_dir
from server.model.loader import resolve_checkpoint

SCHEMAS = {
    "one_field": ({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                  {"name": "Ada Lovelace"}),
    "three_fields": ({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "tags"]}, {"name": "Bob", "age": 42, "tags": ["x", "yz"]}),
    "enum_nested": ({"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                  "required": ["lat", "lon"]}}, "required": ["city", "where"]},
        {"city": "Oslo", "where": {"lat": 59.9, "lon": 10.75}}),
}


def xgrammar_run(tokenizer, vocab: int, schema: dict, tokens: list[int]) -> tuple[float, list[float]]:
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
    compile_s = time.perf_counter() - t0
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab)
    times = []
    for t in tokens:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(mask, 0)
        times.append(time.perf_counter() - t0)
        assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"xgrammar masked a valid token {t}"
        assert matcher.accept_token(t)
    return compile_s, times


def llguidance_run(tokenizer, vocab: int, schema: dict, tokens: list[int]) -> tuple[float, list[float]]:
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(lltok, grammar)
    compile_s = time.perf_counter() - t0
    assert not matcher.is_error(), matcher.get_error()
    mask = llguidance.torch.allocate_token_bitmask(1, vocab)
    times = []
    for t in tokens:
        t0 = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
        times.append(time.perf_counter() - t0)
        assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"llguidance masked a valid token {t}"
        assert matcher.consume_token(t), matcher.get_error()
    return compile_s, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = resolve_checkpoint(None, default_cache_dir())
    tokenizer, vocab = ckpt.tokenizer, ckpt.config.vocab_size
    rows = []
    for name, (schema, doc) in SCHEMAS.items():
        tokens = tokenizer(json.dumps(doc, separators=(",", ":")), add_special_tokens=False)["input_ids"]
        res = {}
        for engine, fn in (("xgrammar", xgrammar_run), ("llguidance", llguidance_run)):
            compiles, steps = [], []
            for _ in range(args.repeats):
                c, ts = fn(tokenizer, vocab, schema, tokens)
                compiles.append(c)
                steps += ts
            res[engine] = (statistics.median(compiles) * 1e3, statistics.median(steps) * 1e6, max(steps) * 1e6)
        rows.append((name, len(tokens), res))
    lines = [
        "# xgrammar vs llguidance on this CPU",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/grammar_engines.py --out {args.out}`",
        f"Host: {platform.processor() or platform.machine()}, 1 thread; measured under load (five other helpers "
        "share the 2 cores), so absolute numbers are noisy; the ratios are the point.",
        f"xgrammar {xgr.__dict__.get('__version__', '0.2.9')}, llguidance 1.9.1, vocab {vocab} (SmolLM2-135M).",
        "Compile: cold (no cache), median of runs, including the tokenizer-independent grammar build.",
        "Mask: median / max microseconds per token to fill one row's bitmask while forcing a valid document "
        "(every forced token checked to be allowed first).",
        "",
        "| schema | tokens | xgrammar compile ms | llguidance compile ms | xgrammar mask us (median / max) | "
        "llguidance mask us (median / max) | mask ratio llg/xgr |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, n, r in rows:
        x, g = r["xgrammar"], r["llguidance"]
        lines.append(f"| {name} | {n} | {x[0]:.1f} | {g[0]:.1f} | {x[1]:.0f} / {x[2]:.0f} | {g[1]:.0f} / {g[2]:.0f} "
                     f"| {g[1] / x[1]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
