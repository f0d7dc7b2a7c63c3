"""Offline generation: loraplex engine vs transformers `generate` vs a bare batched forward (the ceiling).

Same model, dtype, prompts and lengths for all three, in one run. Greedy outputs are checked against
each other before anything is timed.

    python bench/engine.py --out bench/results/engine.json
    python -m bench.engine --llama-cpp --weights fp32,gguf --out bench/results/engine_vs_llama_cpp.json
"""

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from server.config import EngineConfig, resolve_dtype
from server.engine.llm_engine import LLMEngine
from server.engine.sampling_params import SamplingParams


def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1000, vocab - 1000, (length,), generator=g).tolist() for _ in range(n)]


def run_engine(engine: LLMEngine, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    return time.perf_counter() - t0, outs


def run_hf(hf, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    x = torch.tensor(prompts)  # equal lengths: no padding needed
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0,
        )
    return time.perf_counter() - t0, out[:, x.shape[1] :].tolist()


@torch.inference_mode()
def run_ceiling(model, prompts, new_tokens: int) -> float:
    """Our model's layers, no paging/scheduling/sampling: dense (B, kvh, L, hd) caches, one SDPA per layer."""
    m, cfg = model.model, model.config
    B, T = len(prompts), len(prompts[0])
    H, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // H
    L = T + new_tokens
    dtype = m.embed_tokens.weight.dtype
    ks = [torch.zeros(B, kvh, L, hd, dtype=dtype) for _ in m.layers]
    vs = [torch.zeros(B, kvh, L, hd, dtype=dtype) for _ in m.layers]

    def forward(ids, start):  # ids (B, n)
        n = ids.shape[1]
        x = m.embed_tokens(ids)  # (B, n, D)
        cos, sin = model.rotary(torch.arange(start, start + n), dtype)  # (n, hd)
        half = hd // 2
        rot = lambda t: t * cos[None, :, None] + torch.cat((-t[..., half:], t[..., :half]), -1) * sin[None, :, None]  # noqa: E731
        for i, layer in enumerate(m.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = rot(a.q_proj(h).view(B, n, H, hd)).transpose(1, 2)  # (B, H, n, hd)
            k = rot(a.k_proj(h).view(B, n, kvh, hd)).transpose(1, 2)
            v = a.v_proj(h).view(B, n, kvh, hd).transpose(1, 2)
            ks[i][:, :, start : start + n] = k
            vs[i][:, :, start : start + n] = v
            o = F.scaled_dot_product_attention(
                q, ks[i][:, :, : start + n], vs[i][:, :, : start + n], is_causal=n > 1, enable_gqa=True
            )
            x = x + a.o_proj(o.transpose(1, 2).reshape(B, n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x), None)  # no step: no adapter rows
        return model.logits(m.norm(x[:, -1]))  # (B, V)

    ids = torch.tensor(prompts)
    t0 = time.perf_counter()
    nxt = forward(ids, 0).argmax(-1, keepdim=True)
    for step in range(new_tokens - 1):
        nxt = forward(nxt, T + step).argmax(-1, keepdim=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-batch-tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--llama-cpp", action="store_true", help="instead: loraplex beside llama.cpp on the same "
                    "weights (bench/engine_vs_llama_cpp.py), one request and 16/64 in flight")
    ap.add_argument("--weights", default=None, help="weights mode(s): one of auto|fp32|gguf (default auto); with "
                    "--llama-cpp a comma list to measure (default fp32,gguf)")
    ap.add_argument("--threads", type=int, default=2, help="with --llama-cpp: threads for both engines")
    ap.add_argument("--rounds", type=int, default=1, help="with --llama-cpp: rounds of both engines, interleaved; "
                    "the median ratio is reported with its range")
    ap.add_argument("--pairs", type=int, default=0, help="with --llama-cpp: each round also times the one-request "
                    "decode in this many adjacent pairs of both engines at the same context length")
    args = ap.parse_args()
    if args.llama_cpp:
        from bench.engine_vs_llama_cpp import compare

        args.weights = args.weights or "fp32,gguf"
        report = compare(args.weights.split(","), args.threads, args.rounds, args.pairs)
        report["command"] = (f"python -m bench.engine --llama-cpp --weights {args.weights} --threads {args.threads}"
                             f" --rounds {args.rounds}" + (f" --pairs {args.pairs}" if args.pairs else "")
                             + (f" --out {args.out}" if args.out else ""))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
        return
    dtype = resolve_dtype(args.dtype, "cpu")

    engine = LLMEngine.from_config(
        EngineConfig(dtype=dtype, pool_mb=1024, max_num_seqs=args.num_prompts, max_batch_tokens=args.max_batch_tokens,
                     max_model_len=args.prompt_len + args.new_tokens + 16, weights=args.weights or "auto")
    )
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(engine.checkpoint.directory, dtype=getattr(torch, dtype)).eval()
    prompts = make_prompts(args.num_prompts, args.prompt_len, engine.checkpoint.config.vocab_size, args.seed)

    # validate first: greedy tokens of a few prompts agree, and warm every path up
    check = prompts[:4]
    _, ours = run_engine(engine, check, 16)
    _, theirs = run_hf(hf, check, 16)
    agree = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"validation: {agree}/{len(check)} prompts greedy-identical to transformers over 16 tokens")
    run_ceiling(engine.runner.model, check, 4)

    total = args.num_prompts * args.new_tokens
    results = {}
    t, outs = run_engine(engine, prompts, args.new_tokens)
    assert all(len(o) == args.new_tokens for o in outs)
    results["loraplex"] = {"seconds": t, "tokens_per_s": total / t}
    print(f"loraplex     {t:7.2f}s  {total / t:8.1f} tok/s")
    t, outs_hf = run_hf(hf, prompts, args.new_tokens)
    results["transformers"] = {"seconds": t, "tokens_per_s": total / t}
    print(f"transformers {t:7.2f}s  {total / t:8.1f} tok/s")
    t = run_ceiling(engine.runner.model, prompts, args.new_tokens)
    results["ceiling"] = {"seconds": t, "tokens_per_s": total / t}
    print(f"ceiling      {t:7.2f}s  {total / t:8.1f} tok/s")

    first_tokens_agree = sum(a[0] == b[0] for a, b in zip(outs, outs_hf, strict=True))
    n_params = sum(p.numel() for p in hf.parameters())  # ours may hold weights as blocks (buffers)
    report = {
        "command": "python bench/engine.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                          if v is not None and k != "out"),
        "dtype": dtype,
        "num_prompts": args.num_prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "results": results,
        "ratio_vs_transformers": results["loraplex"]["tokens_per_s"] / results["transformers"]["tokens_per_s"],
        "ratio_vs_ceiling": results["loraplex"]["tokens_per_s"] / results["ceiling"]["tokens_per_s"],
        "first_token_agreement_with_transformers": f"{first_tokens_agree}/{len(outs)}",
        # napkin math: ~2 FLOP per parameter per token, prompt and output tokens alike
        "loraplex_gflops": 2 * n_params * args.num_prompts * (args.prompt_len + args.new_tokens)
        / results["loraplex"]["seconds"] / 1e9,
    }
    print(json.dumps({k: v for k, v in report.items() if k.startswith("ratio") or k.endswith("gflops")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
