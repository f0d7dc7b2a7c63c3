"""Prefix caching on a live server: caching on vs off (and vLLM-CPU with its prefix caching), same run.

Two workloads over 1, 10 and 100 synthetic adapters (Zipf(alpha) popularity; adapter content differs,
so every adapter needs its own cached copy of a prefix):
- shared system prompt: every request = one long system prompt + its own question;
- multi-turn chat: conversations whose turn t+1 = turn t's prompt + an assistant reply + a new user
  message. The reply is a pre-drawn synthetic one of the same length as the generated text (the
  client sees text, not ids), so the reused prefix is the previous turn's prompt; the generated
  tokens' own blocks are not reused. Conversations run side by side, each turn after the last.
Requests are token-id prompts to /v1/completions, greedy with ignore_eos, streamed; TTFT is measured
at the client. Closed loop: Spec.concurrency requests in flight (conversations for multi-turn).

Every adapter a workload uses is paged in before timing. Validation before timing: each server
answers a probe twice (the second time from its cache when caching is on); loraplex with caching on
must return the same text as with caching off for every request of every workload (fp32 greedy),
else the run fails.

Hit rate = sum(usage.prompt_tokens_details.cached_tokens) / sum(prompt_tokens). The ideal comes from
the trace: block chains (block_size tokens, at least one prompt token computed) per adapter, with an
infinite cache; `ideal_in_order` lets a request reuse every request of its adapter sent before it,
`ideal_at_send` only those whose first token had arrived when it was sent (their prefill was done:
what a cache that registers blocks as they are computed can reach in this closed loop).

    .venv/bin/python -m bench.prefix --out bench/results/prefix/prefix.json \\
        --plot bench/results/prefix/ttft_vs_turn.png [--vllm]
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.peers import process
from bench.peers.assets import adapter_names, adapters_dir

REPO = Path(__file__).resolve().parents[1]
BASE = "SmolLM2-135M-Instruct"
BLOCK = 16
VLLM_BLOCK = 32
TOKENS = (1000, 48000)  # random prompt ids away from specials and rare tail ids


@dataclass(slots=True)
class Req:
    key: str  # workload/conversation/turn or workload/index
    adapter: str  # model name
    prompt: list[int]
    max_tokens: int
    conversation: int = -1
    turn: int = -1


@dataclass(slots=True)
class Rec:
    key: str
    adapter: str
    prompt_tokens: int
    turn: int
    start: float = 0.0
    ttft: float | None = None
    e2e: float | None = None
    cached: int = 0
    output_tokens: int = 0
    text: str = ""
    error: str | None = None


@dataclass(slots=True)
class Spec:
    system_len: int = 256
    question: tuple[int, int] = (16, 32)
    output_len: int = 8
    shared_requests: int = 16
    conversations: int = 4
    turns: int = 4
    chat_system_len: int = 64
    user: tuple[int, int] = (24, 48)
    reply_len: int = 32
    concurrency: int = 4
    alpha: float = 1.0
    seed: int = 0
    ns: tuple[int, ...] = (1, 10, 100)
    names: list[str] = field(default_factory=list)


def zipf_choice(rng, n: int, size: int, alpha: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** alpha
    return rng.choice(n, size=size, p=w / w.sum())


def ids(rng, n: int) -> list[int]:
    return rng.integers(*TOKENS, n).tolist()


def shared_prompt(spec: Spec, n: int) -> list[Req]:
    rng = np.random.default_rng([spec.seed, n, 1])
    system = ids(rng, spec.system_len)
    picks = zipf_choice(rng, n, spec.shared_requests, spec.alpha)
    return [Req(f"shared/n{n}/{i}", spec.names[a], system + ids(rng, int(rng.integers(*spec.question))),
                spec.output_len) for i, a in enumerate(picks)]


def multi_turn(spec: Spec, n: int) -> list[list[Req]]:
    """One list of turns per conversation; a turn's prompt extends the previous turn's."""
    rng = np.random.default_rng([spec.seed, n, 2])
    system = ids(rng, spec.chat_system_len)  # the same default system prompt in every conversation
    picks = zipf_choice(rng, n, spec.conversations, spec.alpha)
    convs = []
    for c, a in enumerate(picks):
        prompt, turns = list(system), []
        for t in range(spec.turns):
            if t:
                prompt = prompt + ids(rng, spec.reply_len)  # the assistant's (synthetic) reply
            prompt = prompt + ids(rng, int(rng.integers(*spec.user)))
            turns.append(Req(f"chat/n{n}/c{c}/t{t}", spec.names[a], prompt, spec.output_len, c, t))
        convs.append(turns)
    return convs


def chain(prompt: list[int], own: bool = True, block: int = BLOCK) -> list[int]:
    """Block hashes of a prompt's full blocks: as a look-up (own: one token left to compute) or as cached
    after its prefill (every full block)."""
    out, h = [], None
    for i in range(((len(prompt) - 1) if own else len(prompt)) // block):
        h = hash((h, tuple(prompt[i * block : (i + 1) * block])))
        out.append(h)
    return out


def ideal(recs: list[Rec], prompts: dict[str, list[int]], block: int) -> dict[str, float]:
    """Ideal hit rates of this trace (see the module docstring): infinite cache, per adapter."""
    order = sorted(recs, key=lambda r: r.start)
    total = sum(r.prompt_tokens for r in recs)
    in_order = at_send = 0
    for i, r in enumerate(order):
        mine = chain(prompts[r.key], block=block)
        earlier = [o for o in order[:i] if o.adapter == r.adapter]
        done = [o for o in earlier if o.ttft is not None and o.start + o.ttft <= r.start]
        for pool, acc in ((earlier, "in"), (done, "at")):
            seen = {h for o in pool for h in chain(prompts[o.key], own=False, block=block)}
            k = next((j for j, h in enumerate(mine) if h not in seen), len(mine))
            if acc == "in":
                in_order += k * block
            else:
                at_send += k * block
    return {"ideal_in_order": in_order / total, "ideal_at_send": at_send / total}


async def send(client, url: str, req: Req, rec: Rec, t0: float) -> None:
    body = {"model": req.adapter, "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    rec.start = time.perf_counter() - t0
    text = []
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                rec.error = f"http_{resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                msg = json.loads(line[5:])
                if msg.get("error"):
                    rec.error = str(msg["error"])[:200]
                    return
                for ch in msg.get("choices") or []:
                    if ch.get("text") and rec.ttft is None:
                        rec.ttft = time.perf_counter() - t0 - rec.start
                    text.append(ch.get("text") or "")
                if msg.get("usage"):
                    u = msg["usage"]
                    rec.output_tokens = int(u["completion_tokens"])
                    rec.cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        rec.e2e = time.perf_counter() - t0 - rec.start
        rec.text = "".join(text)
    except Exception as e:  # counted, not raised: a broken request is the server's failure
        rec.error = f"{type(e).__name__}: {e}"[:200]


async def run_shared(url: str, reqs: list[Req], concurrency: int) -> tuple[list[Rec], float]:
    import httpx

    recs = [Rec(r.key, r.adapter, len(r.prompt), r.turn) for r in reqs]
    queue = list(zip(reqs, recs, strict=True))
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        t0 = time.perf_counter()

        async def worker():
            while queue:
                req, rec = queue.pop(0)
                await send(client, url, req, rec, t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return recs, time.perf_counter() - t0


async def run_chat(url: str, convs: list[list[Req]]) -> tuple[list[Rec], float]:
    import httpx

    recs = [[Rec(r.key, r.adapter, len(r.prompt), r.turn) for r in turns] for turns in convs]
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        t0 = time.perf_counter()

        async def conversation(turns, rs):
            for req, rec in zip(turns, rs, strict=True):
                await send(client, url, req, rec, t0)

        await asyncio.gather(*(conversation(t, r) for t, r in zip(convs, recs, strict=True)))
        return [r for rs in recs for r in rs], time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def summarize(recs: list[Rec], wall: float, prompts: dict[str, list[int]], block: int) -> dict:
    ok = [r for r in recs if r.error is None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    prompt = sum(r.prompt_tokens for r in ok)
    return {
        "requests": len(recs), "errors": len(recs) - len(ok), "wall_s": wall,
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
        "req_per_s": len(ok) / wall, "output_tok_per_s": sum(r.output_tokens for r in ok) / wall,
        "prompt_tok_per_s": prompt / wall,
        "hit_rate": sum(r.cached for r in ok) / max(1, prompt), **ideal(ok, prompts, block),
    }


def loraplex(port: int, log: Path, caching: bool, threads: int, pool_mb: int = 1024,
             eviction: str = "lru") -> process.ServerProcess:
    cmd = [str(REPO / ".venv" / "bin" / "loraplex"), "serve", "--port", str(port), "--dtype", "float32",
           "--pool-mb", str(pool_mb), "--num-threads", str(threads), "--adapter-dir", str(adapters_dir(100)),
           "--eviction", eviction, "--log-level", "warning"] + ([] if caching else ["--no-prefix-caching"])
    return process.start("loraplex", cmd, port, log, cwd=REPO)


def vllm(port: int, log: Path) -> process.ServerProcess:
    from bench.peers import vllm_cpu

    # prefix caching is on by default in vLLM's V1 engine; usage details must be asked for,
    # and its CPU default block (128) is set to 32, the smallest its CPU attention takes (loraplex: 16); the
    # ideal is computed with each system's own block size
    return vllm_cpu.start(port, 100, log, "float32",
                          extra=["--enable-prompt-tokens-details", "--block-size", str(VLLM_BLOCK)])


POOL_COUNTERS = ("loraplex_adapter_loads_total", "loraplex_adapter_evictions_total", "loraplex_adapter_hits_total",
                 "loraplex_adapter_load_seconds_sum")


def pool_counters(url: str) -> dict[str, float]:
    """The server's adapter load / eviction counters and pool pages by use, from /metrics (loraplex only)."""
    import httpx

    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in POOL_COUNTERS or name.startswith("loraplex_pool_pages{"):
            out[name] = float(value)
    return out


def run_system(label: str, launch, spec: Spec, logs: Path, block: int = BLOCK) -> dict:
    port = process.free_port()
    server = launch(port, logs / f"{label}.log")
    try:
        probe = Req("probe", spec.names[0], list(range(2000, 2000 + 3 * BLOCK + 5)), 4)
        first = asyncio.run(run_shared(server.url, [probe, probe], 1))[0]  # warm-up and cache check
        runs: dict[str, dict] = {"probe_cached_tokens": [r.cached for r in first],
                                 "start_s": server.start_s}
        # every adapter the workloads use, paged in before timing (a prompt under one block caches nothing)
        used = sorted({r.adapter for n in spec.ns for r in shared_prompt(spec, n)}
                      | {t.adapter for n in spec.ns for c in multi_turn(spec, n) for t in c})
        warm = [Req(f"warm/{a}", a, list(range(3000, 3008)), 1) for a in used]
        assert all(r.error is None for r in asyncio.run(run_shared(server.url, warm, 8))[0])
        counters = label.startswith("loraplex")

        def pool_delta(before: dict[str, float]) -> dict[str, float]:
            after = pool_counters(server.url)
            return {k: v - before.get(k, 0.0) if k in POOL_COUNTERS else v for k, v in after.items()}

        for n in spec.ns:
            shared = shared_prompt(spec, n)
            before = pool_counters(server.url) if counters else {}
            recs, wall = asyncio.run(run_shared(server.url, shared, spec.concurrency))
            runs[f"shared/n{n}"] = {"summary": summarize(recs, wall, {r.key: r.prompt for r in shared}, block),
                                    "records": [asdict(r) for r in recs]}
            if counters:  # adapter loads / evictions during this workload; pool pages by use at its end
                runs[f"shared/n{n}"]["pool"] = pool_delta(before)
            convs = multi_turn(spec, n)
            before = pool_counters(server.url) if counters else {}
            recs, wall = asyncio.run(run_chat(server.url, convs))
            prompts = {r.key: r.prompt for t in convs for r in t}
            runs[f"chat/n{n}"] = {"summary": summarize(recs, wall, prompts, block),
                                  "records": [asdict(r) for r in recs]}
            if counters:
                runs[f"chat/n{n}"]["pool"] = pool_delta(before)
            print(f"{label} n={n}: shared {runs[f'shared/n{n}']['summary']}\n  chat {runs[f'chat/n{n}']['summary']}",
                  file=sys.stderr, flush=True)
        return runs
    finally:
        process.stop(server)


def validate(on: dict, off: dict) -> int:
    """Requests whose text differs between caching on and off (must be 0), after checking both probes."""
    assert on["probe_cached_tokens"][1] > 0, f"caching on: the probe's repeat was no hit: {on['probe_cached_tokens']}"
    assert off["probe_cached_tokens"] == [0, 0], off["probe_cached_tokens"]
    bad = 0
    for key, run in on.items():
        if not isinstance(run, dict) or "records" not in run:
            continue
        want = {r["key"]: r for r in off[key]["records"]}
        for r in run["records"]:
            assert r["error"] is None and want[r["key"]]["error"] is None, (r, want[r["key"]])
            bad += r["text"] != want[r["key"]]["text"]
    return bad


def plot(result: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = result["spec"]["ns"]
    fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 4), sharey=True)
    for ax, n in zip(np.atleast_1d(axes), ns, strict=True):
        for label, runs in result["systems"].items():
            recs = runs[f"chat/n{n}"]["records"]
            turns = sorted({r["turn"] for r in recs})
            means = [np.mean([r["ttft"] for r in recs if r["turn"] == t and r["ttft"] is not None]) for t in turns]
            ax.plot(turns, [m * 1e3 for m in means], marker="o", label=label)
        ax.set_title(f"multi-turn chat, {n} adapter{'s' if n > 1 else ''}")
        ax.set_xlabel("turn")
        ax.set_xticks(turns)
        ax.set_yscale("log")  # vLLM-CPU runs an order of magnitude slower here
        ax.grid(alpha=0.3, which="both")
    np.atleast_1d(axes)[0].set_ylabel("mean TTFT (ms)")
    np.atleast_1d(axes)[0].legend()
    fig.suptitle("TTFT vs turn: prompts grow each turn; with caching only the new turn is prefilled")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def add_vllm(args, spec: Spec, logs: Path) -> None:
    """vLLM-CPU (prefix caching on, its default) on the same workloads, added to the result in --out."""
    result = json.loads(Path(args.out).read_text())
    label = "vllm-cpu-fp32"
    result["command"] += " && " + " ".join([".venv/bin/python -m bench.prefix", "--add-vllm", "--out", args.out]
                                           + (["--plot", args.plot] if args.plot else []))
    try:
        runs = run_system(label, vllm, spec, logs, VLLM_BLOCK)
    except Exception as e:
        result[f"{label}_failed"] = f"{type(e).__name__}: {e}"[:3000]
        print(f"{label} failed: {e}", file=sys.stderr)
    else:
        result.pop(f"{label}_failed", None)
        result["systems"][label] = runs
        on = result["systems"]["loraplex-cache-on"]
        result["vllm_ratios"] = {
            key: {"ttft_p50_vllm_over_loraplex": runs[key]["summary"]["ttft_p50_s"] / on[key]["summary"]["ttft_p50_s"],
                  "hit_rate": runs[key]["summary"]["hit_rate"],
                  "ideal_in_order": runs[key]["summary"]["ideal_in_order"]}
            for key in on if "/" in key}
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    ap.add_argument("--threads", type=int, default=2, help="loraplex --num-threads")
    ap.add_argument("--ns", default="1,10,100", help="adapter counts (comma-separated)")
    ap.add_argument("--pool-mb", type=int, default=1024, help="loraplex --pool-mb")
    ap.add_argument("--eviction", default="lru", help="loraplex --eviction; a comma-separated list runs one "
                    "caching-on server per policy (labels loraplex-cache-on-POLICY), all against one caching-off run")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one adapter count, few requests")
    ap.add_argument("--vllm", action="store_true", help="also vLLM-CPU (bench/peers/install_vllm.sh) with its "
                    "prefix caching on")
    ap.add_argument("--add-vllm", action="store_true", help="run vLLM-CPU alone and add it to the --out result")
    ap.add_argument("--shared-requests", type=int, default=Spec.shared_requests,
                    help="requests of the shared-system-prompt workload per adapter count")
    ap.add_argument("--conversations", type=int, default=Spec.conversations, help="multi-turn conversations")
    ap.add_argument("--note", default="measured under load: the 2-core machine was shared with five other agents' "
                    "builds and tests", help="how the host was when this ran, kept in the result")
    args = ap.parse_args()
    spec = Spec(names=adapter_names(100), shared_requests=args.shared_requests, conversations=args.conversations,
                ns=tuple(int(n) for n in args.ns.split(",")))
    if args.quick:
        spec = Spec(names=spec.names, ns=(10,), shared_requests=4, conversations=2, turns=2, system_len=64)
    logs = Path(args.out).parent / "logs"
    if args.add_vllm:
        add_vllm(args, spec, logs)
        return
    policies = args.eviction.split(",")
    on_labels = {p: "loraplex-cache-on" if len(policies) == 1 else f"loraplex-cache-on-{p}" for p in policies}
    systems = {on_labels[p]: (lambda port, log, p=p: loraplex(port, log, True, args.threads, args.pool_mb, p))
               for p in policies}
    systems["loraplex-cache-off"] = lambda port, log: loraplex(port, log, False, args.threads, args.pool_mb)
    result = {"command": " ".join([".venv/bin/python -m bench.prefix", *sys.argv[1:]]),
              "spec": {k: v for k, v in asdict(spec).items() if k != "names"}, "block_size": BLOCK,
              "pool_mb": args.pool_mb, "threads": args.threads, "note": args.note,
              "systems": {}}
    for label, launch in systems.items():
        result["systems"][label] = run_system(label, launch, spec, logs)
    off = result["systems"]["loraplex-cache-off"]
    result["mismatched_texts_on_vs_off"] = sum(validate(result["systems"][lab], off) for lab in on_labels.values())
    by_system = {}
    for label in on_labels.values():
        on, ratios = result["systems"][label], {}
        for key in (k for k in on if "/" in k):
            a, b = on[key]["summary"], off[key]["summary"]
            ratios[key] = {"ttft_p50_off_over_on": b["ttft_p50_s"] / a["ttft_p50_s"],
                           "ttft_p99_off_over_on": b["ttft_p99_s"] / a["ttft_p99_s"],
                           "throughput_on_over_off": a["prompt_tok_per_s"] / b["prompt_tok_per_s"],
                           "hit_rate": a["hit_rate"], "ideal_in_order": a["ideal_in_order"],
                           "ideal_at_send": a["ideal_at_send"]}
        by_system[label] = ratios
    result["ratios"] = by_system[on_labels[policies[0]]]
    if len(policies) > 1:
        result["ratios_by_system"] = by_system
    ratios = by_system
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(ratios, indent=1))
    if args.plot:
        plot(result, args.plot)
    if args.vllm:
        add_vllm(args, spec, logs)
    if result["mismatched_texts_on_vs_off"]:
        raise SystemExit(f"{result['mismatched_texts_on_vs_off']} texts differ between caching on and off")


if __name__ == "__main__":
    main()
