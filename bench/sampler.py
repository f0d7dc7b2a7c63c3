"""The batched sampler against the per-row loop it replaced, on logits of the real vocabulary size.

Rows S in {1, 16, 64}, V = 49152: the next-token logits of the real model (fp32) on eight prompts,
tiled. Mixes: greedy; random (temperature 0.8, top_p 0.9, half
seeded); every parameter on (penalties over a 64-token prompt and 32 output tokens, logit_bias,
min_p, top_k, min_tokens). The per-row loop (the sampler before issue 15) has no penalties, so the
last mix is reported against the random mix of the batched sampler. Validation before timing:
greedy tokens equal the loop's; every random token lies in its row's top-p set.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py --out bench/results/sampler.md
"""

import argparse
import platform
import statistics
import time

import torch

from server.config import default_cache_dir
from server.engine.sampler import SampleRow, sample
from server.engine.sampling_params import SamplingParams

V = 49152


def loop_sample(logits, rows, default_generator):
    """The sampler before issue 15: a Python loop over rows, each filtering and drawing over V."""
    logits = logits.float()
    tokens = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        p = row.params
        if p.greedy:
            continue
        x = logits[i] / p.temperature
        if p.top_k and p.top_k < V:
            x = x.masked_fill(x < torch.topk(x, p.top_k).values[-1], float("-inf"))
        if p.top_p < 1.0:
            s, order = torch.sort(x, descending=True)
            drop = s.softmax(-1).cumsum(-1) - s.softmax(-1) >= p.top_p
            x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        probs = x.softmax(-1)
        tokens[i] = int(torch.multinomial(probs, 1, generator=row.generator or default_generator))
    return tokens, [None] * len(rows)


def rows_for(mix: str, S: int) -> list[SampleRow]:
    g = torch.Generator().manual_seed(S)
    out = []
    for i in range(S):
        prompt, output = torch.randint(0, V, (64,), generator=g).tolist(), torch.randint(0, V, (32,), generator=g)
        gen = torch.Generator().manual_seed(i) if i % 2 else None
        if mix == "greedy":
            params = SamplingParams(temperature=0)
        elif mix == "random":
            params = SamplingParams(temperature=0.8, top_p=0.9, seed=i if gen else None)
        else:
            params = SamplingParams(
                max_tokens=64, temperature=0.8, top_p=0.9, top_k=50, min_p=0.05, presence_penalty=0.5,
                frequency_penalty=0.3, repetition_penalty=1.1, logit_bias={5: 2.0, 7: -3.0}, min_tokens=40,
                stop_token_ids=[2], seed=i if gen else None,
            )
        out.append(SampleRow(params, gen, prompt, output.tolist()))
    return out


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def validate(logits: torch.Tensor, S: int) -> None:
    greedy = rows_for("greedy", S)
    assert sample(logits, greedy, torch.Generator())[0] == loop_sample(logits, greedy, torch.Generator())[0]
    rand = rows_for("random", S)
    tokens, _ = sample(logits, rand, torch.Generator().manual_seed(0))
    for i, t in enumerate(tokens):
        probs, order = (logits[i] / 0.8).softmax(-1).sort(descending=True)
        keep = order[(probs.cumsum(-1) - probs) < 0.9]
        assert t in set(keep.tolist()), (i, t)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "The best way to learn is",
           "Water boils at", "My favourite colour is", "import numpy as np\n", "Dear Sir or Madam,"]


def model_logits() -> torch.Tensor:
    """(8, V) next-token logits of the default model, fp32."""
    from transformers import AutoModelForCausalLM

    from server.model.loader import resolve_checkpoint

    ckpt = resolve_checkpoint(None, default_cache_dir())
    model = AutoModelForCausalLM.from_pretrained(ckpt.directory, dtype=torch.float32).eval()
    with torch.inference_mode():
        return torch.cat([model(torch.tensor([ckpt.tokenizer(p)["input_ids"]])).logits[0, -1:] for p in PROMPTS])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = ["# Sampler: batched over rows vs the per-row loop it replaced", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py --out {args.out}`  ",
             f"Host: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s); measured under load (other jobs shared the 2 cores), so "
             "compare the ratios within a row, not absolute times across runs.", "",
             "| rows | mix | loop ms | batched ms | loop / batched | batched ms per row |",
             "|---|---|---|---|---|---|"]
    real = model_logits()
    for S in (1, 16, 64):
        logits = real.repeat(S // len(PROMPTS) + 1, 1)[:S].contiguous()  # (S, V)
        validate(logits, S)
        base = {}
        for mix in ("greedy", "random", "all"):
            rows = rows_for(mix, S)
            new = timed(lambda rows=rows, logits=logits: sample(logits, rows, torch.Generator(), {2}), args.repeats)
            base[mix] = new
            if mix == "all":
                old_txt, ratio = "-", f"{new / base['random']:.2f}x the batched random mix"
            else:
                old = timed(lambda rows=rows, logits=logits: loop_sample(logits, rows, torch.Generator()),
                            args.repeats)
                old_txt, ratio = f"{old * 1e3:.2f}", f"{old / new:.2f}"
            lines.append(f"| {S} | {mix} | {old_txt} | {new * 1e3:.2f} | {ratio} | {new * 1e3 / S:.3f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
