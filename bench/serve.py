"""Load generator for any OpenAI-compatible server: S-LoRA's workload, streamed, TTFT measured at the client.

Adapter popularity Zipf(alpha) over n adapters, Gamma inter-arrivals at rate R with coefficient of
variation cv (cv = 1 is Poisson), prompt and output lengths drawn from ranges or read from a JSONL
trace; fixed seed; bounded request count and duration. Every request streams /v1/completions with
greedy decoding and `ignore_eos` so outputs run to their drawn length on servers that honour it.

    python bench/serve.py run --url http://127.0.0.1:8000 --n 100 --alpha 1 --rate 2 --cv 1 \\
        --num-requests 200 --duration 60 --out result.json
    python bench/serve.py plot result1.json result2.json --out latency.png
"""

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

QUANTILES = (50, 90, 99)
TOKEN_RANGE = (1000, 48000)  # random prompt ids away from specials and rare tail ids (SmolLM2 vocab 49152)


@dataclass(frozen=True, slots=True)
class Workload:
    n_adapters: int  # 0 = every request names the base model
    alpha: float  # Zipf exponent of adapter popularity; ~0 = uniform
    rate: float  # mean requests per second; inf = all at time zero
    cv: float  # coefficient of variation of inter-arrival times; 1 = Poisson
    num_requests: int
    prompt_len: tuple[int, int]  # inclusive range, tokens
    output_len: tuple[int, int]  # inclusive range, tokens
    seed: int = 0
    trace: str | None = None  # JSONL: {"prompt": str} or {"prompt_len": int}, and {"output_len": int}

    def __post_init__(self) -> None:
        if self.n_adapters < 0 or self.num_requests < 1:
            raise ValueError("n_adapters must be >= 0 and num_requests >= 1")
        if self.rate <= 0 or self.cv <= 0 or self.alpha < 0:
            raise ValueError("rate and cv must be positive, alpha non-negative")
        for lo, hi in (self.prompt_len, self.output_len):
            if not 1 <= lo <= hi:
                raise ValueError(f"a length range must satisfy 1 <= lo <= hi, got {(lo, hi)}")


@dataclass(slots=True)
class Request:
    index: int
    arrival: float  # seconds after the start
    adapter: int  # index into the adapter names; -1 = base model
    prompt: list[int] | str  # token ids (exact length) or trace text
    prompt_len: int  # tokens, or -1 for trace text until the server's usage says
    output_len: int  # max_tokens asked for


@dataclass(slots=True)
class Record:
    index: int
    adapter: int
    prompt_len: int
    output_len: int  # asked for
    start: float = 0.0  # seconds after the run's start when sent
    ttft: float | None = None  # seconds to the first streamed token
    e2e: float | None = None  # seconds to the end of the stream
    tokens: int = 0  # output tokens received (usage, else streamed chunks)
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.e2e is None or self.ttft is None or self.tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.tokens - 1)


def zipf_probs(n: int, alpha: float) -> np.ndarray:
    """Popularity of adapter i (0 = most popular) proportional to 1 / (i + 1) ** alpha."""
    w = 1.0 / np.arange(1, n + 1) ** alpha
    return w / w.sum()


def gamma_intervals(rng: np.random.Generator, n: int, rate: float, cv: float) -> np.ndarray:
    """n inter-arrival gaps with mean 1 / rate and coefficient of variation cv (shape 1 / cv^2)."""
    if math.isinf(rate):
        return np.zeros(n)
    shape = 1.0 / cv**2
    return rng.gamma(shape, 1.0 / (rate * shape), size=n)


def read_trace(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or not all(("prompt" in r or "prompt_len" in r) and "output_len" in r for r in rows):
        raise ValueError(f"{path}: every line needs output_len and one of prompt / prompt_len")
    return rows


def build_workload(w: Workload) -> list[Request]:
    """The whole schedule, fixed by the seed: same seed and workload, same requests on every system."""
    rng = np.random.default_rng(w.seed)
    arrivals = np.cumsum(gamma_intervals(rng, w.num_requests, w.rate, w.cv))
    arrivals -= arrivals[0]  # the first request leaves at once
    adapters = rng.choice(w.n_adapters, size=w.num_requests, p=zipf_probs(w.n_adapters, w.alpha)) \
        if w.n_adapters else np.full(w.num_requests, -1)
    trace = read_trace(w.trace) if w.trace else None
    reqs = []
    for i in range(w.num_requests):
        if trace:
            row = trace[i % len(trace)]
            prompt = row.get("prompt") or rng.integers(*TOKEN_RANGE, int(row["prompt_len"])).tolist()
            plen, olen = (len(prompt) if isinstance(prompt, list) else -1), int(row["output_len"])
        else:
            plen = int(rng.integers(w.prompt_len[0], w.prompt_len[1] + 1))
            olen = int(rng.integers(w.output_len[0], w.output_len[1] + 1))
            prompt = rng.integers(*TOKEN_RANGE, plen).tolist()
        reqs.append(Request(i, float(arrivals[i]), int(adapters[i]), prompt, plen, olen))
    return reqs


def percentiles(values: list[float], qs: tuple[int, ...] = QUANTILES) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in qs} | {"mean": None}
    a = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(a, q)) for q in qs} | {"mean": float(a.mean())}


def summarize(records: list[Record], duration: float, slo_ttft: float) -> dict:
    """Throughput over the wall time of the run; latencies of completed requests; SLO over all sent."""
    ok = [r for r in records if r.error is None]
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    tokens = sum(r.tokens for r in ok)
    ends = sorted(r.start + r.e2e for r in ok)
    starts = sorted(r.start for r in records)
    return {
        "sent": len(records), "completed": len(ok), "errors": sum(errors.values()), "error_kinds": errors,
        "duration_s": duration,
        "req_per_s": len(ok) / duration if duration > 0 else 0.0,
        "output_tok_per_s": tokens / duration if duration > 0 else 0.0,
        # completions per second between the first and the last: the offered rate while the server keeps
        # up, its service rate once it does not (then completions run back to back)
        "completion_rate": (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else 0.0,
        # the rate requests actually left at (a Gamma draw over a bounded duration is not the nominal rate)
        "arrival_rate": (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 and starts[-1] > starts[0]
        else 0.0,
        "output_tokens": tokens,
        "output_tokens_asked": sum(r.output_len for r in ok),
        "ttft_s": percentiles([r.ttft for r in ok]),
        "tpot_s": percentiles([r.tpot for r in ok if r.tpot is not None]),
        "e2e_s": percentiles([r.e2e for r in ok]),
        "slo_ttft_s": slo_ttft,
        # a failed request misses its SLO: attainment is over every request sent
        "slo_attainment": sum(r.ttft is not None and r.ttft <= slo_ttft for r in ok) / max(1, len(records)),
    }


@dataclass(slots=True)
class Target:
    url: str  # http://HOST:PORT (no /v1)
    base_model: str  # the name requests without an adapter use
    adapter_names: list[str] = field(default_factory=list)  # index -> model name
    api_key: str | None = None
    ignore_eos: bool = True
    lora_ids: dict[str, int] | None = None  # llama-server: adapter name -> the id its request's lora field names

    def body(self, req: Request) -> dict:
        name = self.base_model if req.adapter < 0 else self.adapter_names[req.adapter]
        body = {
            "model": name,
            "prompt": req.prompt, "max_tokens": req.output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **({"ignore_eos": True} if self.ignore_eos else {}),
        }
        if self.lora_ids is not None and req.adapter >= 0:  # llama-server ignores model; adapters go by id
            body["lora"] = [{"id": self.lora_ids[name], "scale": 1.0}]
        return body


async def send(client, target: Target, req: Request, rec: Record, t0: float) -> None:
    rec.start = time.perf_counter() - t0
    chunks = 0
    usage = None
    try:
        async with client.stream("POST", f"{target.url}/v1/completions", json=target.body(req)) as resp:
            if resp.status_code != 200:
                await resp.aread()
                rec.error = f"http_{resp.status_code}"
                return
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                msg = json.loads(data)
                if msg.get("error"):
                    rec.error = "stream_error"
                    return
                if msg.get("choices"):
                    if rec.ttft is None:
                        rec.ttft = time.perf_counter() - t0 - rec.start
                    chunks += 1
                if msg.get("usage"):
                    usage = msg["usage"]
            rec.e2e = time.perf_counter() - t0 - rec.start
            if not done:
                rec.error = "incomplete_stream"
            rec.tokens = int(usage["completion_tokens"]) if usage else chunks
            if usage and rec.prompt_len < 0:
                rec.prompt_len = int(usage["prompt_tokens"])
            if rec.ttft is None and rec.error is None:
                rec.error = "no_tokens"
    except asyncio.CancelledError:
        rec.error = "timeout"
    except Exception as e:  # a refused or broken connection is the server's failure, counted
        rec.error = type(e).__name__


async def run_load(target: Target, reqs: list[Request], duration: float, drain_timeout: float,
                   progress: bool = True) -> tuple[list[Record], float]:
    """Open loop: each request leaves at its arrival time whatever the server is doing."""
    import httpx
    from tqdm import tqdm

    reqs = [r for r in reqs if r.arrival <= duration]
    records = [Record(r.index, r.adapter, r.prompt_len, r.output_len) for r in reqs]
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    bar = tqdm(total=len(reqs), disable=not progress, unit="req", dynamic_ncols=True, file=sys.stderr)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits, headers=headers) as client:
        t0 = time.perf_counter()
        tasks = []
        for req, rec in zip(reqs, records, strict=True):
            delay = req.arrival - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(client, target, req, rec, t0))
            task.add_done_callback(lambda _: bar.update())
            tasks.append(task)
        issued = time.perf_counter() - t0
        _, late = await asyncio.wait(tasks, timeout=max(0.0, drain_timeout)) if tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    bar.close()
    ends = [rec.start + rec.e2e for rec in records if rec.e2e is not None]
    return records, max([issued, *ends])


def fetch_adapter_names(url: str, base_model: str, api_key: str | None) -> list[str]:
    """Every model the server lists except the base, sorted: the n most popular are the first n."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = httpx.get(f"{url}/v1/models", headers=headers, timeout=30).json()["data"]
    return sorted(m["id"] for m in data if m["id"] != base_model and m.get("loraplex_kind", "adapter") == "adapter")


def fetch_lora_ids(url: str, api_key: str | None = None) -> dict[str, int]:
    """llama-server's loaded adapters: name (the GGUF file's stem) -> id, from GET /lora-adapters."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = httpx.get(f"{url}/lora-adapters", headers=headers, timeout=30).json()
    return {Path(a["path"]).stem: int(a["id"]) for a in data}


def run(args: argparse.Namespace) -> dict:
    w = Workload(args.n, args.alpha, args.rate, args.cv, args.num_requests, _range(args.prompt_len),
                 _range(args.output_len), args.seed, args.trace)
    if args.adapter_format:
        names = [args.adapter_format.format(i=i) for i in range(args.n)]
    else:
        names = fetch_adapter_names(args.url, args.model, args.api_key)[: args.n] if args.n else []
    if len(names) < args.n:
        raise SystemExit(f"--n {args.n} but the server lists only {len(names)} adapters")
    lora_ids = fetch_lora_ids(args.url.rstrip("/"), args.api_key) if args.lora_field else None
    if lora_ids is not None and not set(names) <= set(lora_ids):
        raise SystemExit(f"--lora-field: the server loaded no adapter named {sorted(set(names) - set(lora_ids))[:3]}")
    target = Target(args.url.rstrip("/"), args.model, names, args.api_key, not args.no_ignore_eos, lora_ids)
    reqs = build_workload(w)
    records, duration = asyncio.run(run_load(target, reqs, args.duration, args.drain_timeout, not args.no_progress))
    result = {
        "label": args.label, "url": target.url, "command": " ".join(sys.argv),
        "workload": asdict(w), "duration_limit_s": args.duration, "drain_timeout_s": args.drain_timeout,
        "distinct_adapters": len({r.adapter for r in records}),
        "summary": summarize(records, duration, args.slo_ttft),
        "requests": [asdict(r) | {"tpot": r.tpot} for r in records],
        "meta": json.loads(args.meta) if args.meta else {},
    }
    s = result["summary"]
    print(f"{args.label}: n={w.n_adapters} alpha={w.alpha} rate={w.rate} -> {s['completed']}/{s['sent']} ok, "
          f"{s['req_per_s']:.2f} req/s, {s['output_tok_per_s']:.1f} tok/s, TTFT p50/p99 "
          f"{_ms(s['ttft_s']['p50'])}/{_ms(s['ttft_s']['p99'])} ms, TPOT p50/p99 {_ms(s['tpot_s']['p50'])}/"
          f"{_ms(s['tpot_s']['p99'])} ms, SLO {s['slo_attainment']:.0%}, errors {s['errors']}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def curve_key(r: dict) -> str:
    w = r["workload"]
    return f"{r['label']} n={w['n_adapters']} a={w['alpha']:g}"


def plot(files: list[str], out: str) -> None:
    """Latency CDFs of every result, throughput vs offered rate per curve, throughput vs n per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(Path(f).read_text()) for f in files]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for ax, key, title in zip(axes[0], ("ttft", "tpot", "e2e"), ("TTFT", "TPOT", "end-to-end"), strict=True):
        for r in results:
            xs = np.sort([q[key] for q in r["requests"] if q[key] is not None and q["error"] is None])
            if len(xs):
                w = r["workload"]
                ax.step(xs * 1e3, np.arange(1, len(xs) + 1) / len(xs), where="post",
                        label=f"{curve_key(r)} r={w['rate']:g}")
        ax.set(xlabel=f"{title} (ms)", ylabel="fraction of requests", title=f"{title} CDF", xscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    curves: dict[str, list[tuple[float, dict]]] = {}
    for r in results:
        curves.setdefault(curve_key(r), []).append((r["workload"]["rate"], r["summary"]))
    for key, pts in curves.items():
        pts = sorted(p for p in pts if math.isfinite(p[0]))
        if len(pts) > 1:
            axes[1][0].plot([p[0] for p in pts], [s["output_tok_per_s"] for _, s in pts], "o-", label=key)
            axes[1][1].plot([p[0] for p in pts], [(s["ttft_s"]["p99"] or math.nan) * 1e3 for _, s in pts], "o-",
                            label=key)
    axes[1][0].set(xlabel="offered rate (req/s)", ylabel="output tok/s", title="throughput vs rate")
    axes[1][1].set(xlabel="offered rate (req/s)", ylabel="p99 TTFT (ms)", title="p99 TTFT vs rate", yscale="log")
    by_n: dict[str, dict[int, float]] = {}  # system + alpha -> n -> best tok/s over rates
    for r in results:
        w = r["workload"]
        d = by_n.setdefault(f"{r['label']} a={w['alpha']:g}", {})
        d[w["n_adapters"]] = max(d.get(w["n_adapters"], 0.0), r["summary"]["output_tok_per_s"])
    for key, d in by_n.items():
        ns = sorted(n for n in d if n > 0)
        if len(ns) > 1:
            axes[1][2].plot(ns, [d[n] for n in ns], "o-", label=key)
    axes[1][2].set(xlabel="adapters n", ylabel="output tok/s", title="throughput vs n", xscale="log")
    for ax, need in zip(axes[1], ("rates", "rates", "n"), strict=True):
        if not ax.lines:
            ax.text(0.5, 0.5, f"needs results at two or more {need}", ha="center", transform=ax.transAxes)
    for ax in axes[1]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="drive one workload against a server and write its results")
    r.add_argument("--url", default="http://127.0.0.1:8000")
    r.add_argument("--model", default="SmolLM2-135M-Instruct", help="the base model's name on the server")
    r.add_argument("--label", default="server", help="system name recorded in the results")
    r.add_argument("--n", type=int, default=100, help="adapters in play (0: base model only)")
    r.add_argument("--adapter-format", default=None,
                   help="adapter i's model name, e.g. 'synth-{i:04d}' (default: the server's /v1/models, sorted)")
    r.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent of adapter popularity")
    r.add_argument("--rate", type=float, default=1.0, help="mean requests per second (inf: all at once)")
    r.add_argument("--cv", type=float, default=1.0, help="inter-arrival coefficient of variation (1 = Poisson)")
    r.add_argument("--num-requests", type=int, default=200, help="most requests sent")
    r.add_argument("--duration", type=float, default=60.0, help="no request leaves after this many seconds")
    r.add_argument("--drain-timeout", type=float, default=120.0,
                   help="seconds to wait for in-flight requests after the last leaves; the rest count as timeouts")
    r.add_argument("--prompt-len", default="16,128", help="LO,HI tokens (inclusive)")
    r.add_argument("--output-len", default="16,64", help="LO,HI tokens (inclusive)")
    r.add_argument("--trace", default=None, help="JSONL trace of prompt/prompt_len and output_len, cycled")
    r.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT SLO in seconds")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--api-key", default=None)
    r.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos (servers that refuse it)")
    r.add_argument("--lora-field", action="store_true",
                   help="llama-server: name adapters by the request's lora field [{id, scale: 1}], ids from "
                        "GET /lora-adapters by GGUF file name (model names none there)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--meta", default=None, help="JSON object stored as the result's meta (server flags, ...)")
    r.add_argument("--out", default=None)
    p = sub.add_parser("plot", help="latency CDFs and throughput curves from result files")
    p.add_argument("results", nargs="+")
    p.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args)
    else:
        plot(args.results, args.out)


if __name__ == "__main__":
    main()
