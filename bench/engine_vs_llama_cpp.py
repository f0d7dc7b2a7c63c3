"""loraplex's engine beside llama.cpp on the same weights: one request (prefill tok/s, decode ms/token)
and 16 / 64 in flight (generated tok/s), for each `--weights` mode, in one run of --rounds interleaved rounds.

    python -m bench.engine --llama-cpp --weights fp32,gguf --threads 2 --rounds 3 \
        --out bench/results/engine_vs_llama_cpp.json

fp32 weights are compared with llama.cpp's F32 file converted from the same checkpoint; gguf (the
embedded file's own Q4_1 blocks) with llama.cpp on that same Q4_1 file. Greedy tokens are validated
against transformers fp32 before anything is timed (ours here, llama.cpp's in bench/llama_cpp_engine.py).
"""

import statistics
import time

import torch

from server.config import EngineConfig
from server.engine.llm_engine import EngineRequest, LLMEngine
from server.engine.sampling_params import SamplingParams
from server.startup import freeze_startup_objects

PROMPT, GEN, PARALLEL = 128, 64, (16, 64)
LLAMA_KIND = {"fp32": "f32", "gguf": "q4_1"}  # our weights mode -> the llama.cpp file of the same weights


def _prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1000, vocab - 1000, (PROMPT,), generator=g).tolist() for _ in range(n)]


def _timed_run(engine: LLMEngine, prompts: list[list[int]]) -> dict:
    """Step by step: seconds in steps that prefill, seconds in pure decode steps, generated tokens."""
    params = SamplingParams(max_tokens=GEN, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(f"r{i}-{time.monotonic_ns()}", p, params))
    prefill_s = decode_s = 0.0
    generated = 0
    t_all = time.perf_counter()
    while engine.has_work():
        t0 = time.perf_counter()
        deltas = engine.step()
        dt = time.perf_counter() - t0
        if engine.last_step is not None and engine.last_step.prefills:
            prefill_s += dt
        else:
            decode_s += dt
        generated += sum(len(d.token_ids) for d in deltas)
    return {"prefill_s": prefill_s, "decode_s": decode_s, "total_s": time.perf_counter() - t_all,
            "generated": generated}


def engine_for(weights: str, threads: int, seed: int = 0) -> LLMEngine:
    torch.set_num_threads(threads)
    engine = LLMEngine.from_config(EngineConfig(dtype="float32", weights=weights, pool_mb=1024,
                                                max_num_seqs=max(PARALLEL), max_batch_tokens=2048,
                                                max_model_len=PROMPT + GEN + 16, num_threads=threads))
    _timed_run(engine, _prompts(2, engine.checkpoint.config.vocab_size, seed + 1))  # warm-up: kernels built, caches hot
    freeze_startup_objects()  # as the server does
    return engine


def _decode_ms(run: dict) -> float:
    return run["decode_s"] / (GEN - 1) * 1e3


def paired_decode(engine: LLMEngine, kind: str, threads: int, pairs: int, seed: int = 0) -> dict:
    """One-request decode, loraplex and llama.cpp in turn, `pairs` times: each pair is one request of ours
    (PROMPT-token prompt, then GEN tokens) beside one llama-bench run of GEN tokens after a PROMPT-token
    context (-d), seconds apart, so both see the same moment of a shared host and the same context length;
    who goes first alternates. The ratio of record is the median of the pairs' ratios."""
    from bench.llama_cpp_engine import decode_at_depth
    from bench.peers import llama_cpp

    build, model = llama_cpp.ensure_built(), llama_cpp.convert_model(kind)
    torch.set_num_threads(threads)
    vocab = engine.checkpoint.config.vocab_size

    def ours_ms(i: int) -> float:
        return _decode_ms(_timed_run(engine, _prompts(1, vocab, seed + 7919 * (i + 1))))

    def theirs_ms() -> float:
        return decode_at_depth(build, model, threads)["decode_ms_per_token"]

    rows = []
    for i in range(pairs):  # a tuple is evaluated left to right: who goes first alternates
        mine, theirs = (ours_ms(i), theirs_ms()) if i % 2 == 0 else reversed((theirs_ms(), ours_ms(i)))
        rows.append({"loraplex_ms_per_token": round(mine, 3), "llama_cpp_ms_per_token": round(theirs, 3),
                     "ratio": round(theirs / mine, 3)})
    ratios = [r["ratio"] for r in rows]
    return {"ratio": round(statistics.median(ratios), 3), "range": [min(ratios), max(ratios)],
            "llama_bench": f"-p 0 -n {GEN} -d {PROMPT} -r 1 -t {threads}", "pairs": rows}


def ours(engine: LLMEngine, weights: str, threads: int, seed: int = 0) -> dict:
    """One round; a fresh seed per round keeps the prefix cache from serving a prompt it saw before."""
    torch.set_num_threads(threads)
    vocab = engine.checkpoint.config.vocab_size
    one = _timed_run(engine, _prompts(1, vocab, seed))
    single = {"prefill_tok_per_s": PROMPT / one["prefill_s"],  # the prompt's step also samples token 1
              "decode_ms_per_token": _decode_ms(one)}
    batched = {}
    for n in PARALLEL:
        r = _timed_run(engine, _prompts(n, vocab, seed + n))
        batched[n] = {"generated_tok_per_s": r["generated"] / r["total_s"],
                      "decode_tok_per_s": n * (GEN - 1) / r["decode_s"], "total_s": r["total_s"]}
    return {"weights": weights, "threads": threads, "single": single, "batched": batched}


def ratios(mine: dict, theirs: dict) -> dict:
    """>1 = loraplex faster. decode: ms/token, so theirs / ours."""
    s, t = mine["single"], theirs["single"]
    out = {"single_decode": t["decode_ms_per_token"] / s["decode_ms_per_token"],
           "single_prefill": s["prefill_tok_per_s"] / t["prefill_tok_per_s"]}
    for n, b in mine["batched"].items():
        tb = theirs["batched"].get(n) or theirs["batched"].get(str(n))
        if tb:
            out[f"{n}_in_flight_decode"] = b["decode_tok_per_s"] / tb["decode_tok_per_s"]
            if "generated_tok_per_s_incl_prefill" in tb:  # prompts and generation, llama-batched-bench's total
                out[f"{n}_in_flight_generated"] = b["generated_tok_per_s"] / tb["generated_tok_per_s_incl_prefill"]
    return {k: round(v, 3) for k, v in out.items()}


def compare(weights: list[str], threads: int, rounds: int = 1, pairs: int = 0) -> dict:
    """Each round measures loraplex then llama.cpp, weights mode by weights mode, so a slow phase of a shared
    host lands on both sides of a round's ratios; the median over rounds is reported with its range.
    pairs > 0: each round also times the one-request decode in that many pairs (paired_decode)."""
    from bench.llama_cpp_engine import measure

    engines = {w: engine_for(w, threads) for w in weights}
    by_round: dict[str, list[dict]] = {w: [] for w in weights}
    theirs = {}
    for r in range(rounds):
        for w in weights:
            kind = LLAMA_KIND[w]
            mine = ours(engines[w], w, threads, seed=1000 * r)
            theirs = measure((kind,), (threads,))
            llama = theirs["results"][kind]["by_threads"][threads]
            by_round[w].append({"loraplex": mine, "llama_cpp": {"file": kind, **llama}, "ratio": ratios(mine, llama)})
            if pairs:
                paired = paired_decode(engines[w], kind, threads, pairs, seed=1000 * r)
                by_round[w][-1]["single_decode_pairs"] = paired
                by_round[w][-1]["ratio"]["single_decode_paired"] = paired["ratio"]
            print(f"round {r + 1}/{rounds}: {w} vs llama.cpp {kind}: {by_round[w][-1]['ratio']}")
    rows = {}
    for w, runs in by_round.items():
        keys = runs[0]["ratio"].keys()
        rows[w] = {"ratio": {k: round(statistics.median(x["ratio"][k] for x in runs), 3) for k in keys},
                   "ratio_range": {k: [min(x["ratio"][k] for x in runs), max(x["ratio"][k] for x in runs)]
                                   for k in keys},
                   "rounds": runs}
        print(f"{w} vs llama.cpp {LLAMA_KIND[w]}, median of {rounds}: {rows[w]['ratio']}")
    return {"threads": threads, "rounds": rounds,
            "workload": {"single": f"1 request, {PROMPT}-token prompt, {GEN} generated",
                         "batched": f"{PARALLEL} requests in flight, {PROMPT} + {GEN} each"},
            "llama_cpp": theirs["llama_cpp"], "cpu": theirs["cpu"], "results": rows}
