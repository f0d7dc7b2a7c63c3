"""`loraplex serve` and `loraplex serve-ray` flags: every flag also readable from env LORAPLEX_<FLAG>
(repeatable flags: comma-separated), mapped onto ServerSettings and EngineConfig."""

import argparse
import os
from collections.abc import Callable

from server.api.settings import LOG_LEVELS, ServerSettings
from server.config import EngineConfig
from server.memory.eviction import POLICIES as EVICTION_POLICIES


class _Flags:
    """Adds flags whose default comes from the environment; the env name is in each --help line."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.repeated: dict[str, list[str]] = {}  # dest -> values from the environment

    def add(self, flag: str, help: str, *, repeat: bool = False, switch: bool = False, **kw) -> None:
        env = "LORAPLEX_" + flag.lstrip("-").replace("-", "_").upper()
        raw = os.environ.get(env)
        if switch:  # on/off: the flag turns it on, env 1/true/yes/on too
            default = raw is not None and raw.strip().lower() in ("1", "true", "yes", "on")
            self.parser.add_argument(flag, action="store_true", default=default, help=help + f" (env {env}=1)")
            return
        if repeat:
            kw["action"] = "append"
            dest = flag.lstrip("-").replace("-", "_")
            self.repeated[dest] = [v.strip() for v in (raw or "").split(",") if v.strip()]
            help += f" (repeatable; env {env}, comma-separated)"
            self.parser.add_argument(flag, default=None, help=help, **kw)
            return
        if raw is not None:
            kw["default"] = raw  # argparse runs string defaults through type=
        help += f" (env {env})"
        if kw.get("default") is not None:
            help += " [default: %(default)s]"
        self.parser.add_argument(flag, help=help, **kw)

    def finish(self, args: argparse.Namespace) -> None:
        for dest, from_env in self.repeated.items():
            if getattr(args, dest) is None:
                setattr(args, dest, from_env)


def _add_server_flags(f: _Flags, host_help: str, port_help: str) -> None:
    """The flags of one loraplex server: `serve` runs one, `serve-ray` runs one per replica."""
    f.add("--model", "HF model directory or .gguf file; default: the embedded SmolLM2-135M-Instruct", metavar="PATH")
    f.add("--served-model-name", "name of the base model in the API (default: derived from the model)", metavar="NAME")
    f.add("--adapter", "register a PEFT adapter directory under NAME", repeat=True,
          metavar="NAME=PATH")
    f.add("--adapter-dir", "register every subfolder holding adapter_config.json, named by folder", repeat=True,
          metavar="DIR")
    f.add("--allowed-adapter-root", "where /v1/load_lora_adapter may read from (no file may lead out of it through "
          "a symlink)", repeat=True, metavar="DIR")
    f.add("--enable-adapter-admin", "turn on /v1/load_lora_adapter and /v1/unload_lora_adapter (403 otherwise)",
          switch=True)
    f.add("--admin-key", "the adapter admin routes need `Authorization: Bearer KEY` (default: the API key, if any)",
          metavar="KEY")
    f.add("--router", "expose a task router as model NAME: NAME=embedding[:k=K,fallback=generic|threshold|off,...], "
          "NAME=rules:FILE.json or "
          "NAME=arrow[:KEY=VALUE,...] (top_k, temperature, fallback=generic|threshold|off, alpha, threshold, "
          "mode=request|token (token: every token at every layer mixes top_k of the request's candidates), "
          "candidates=M, rank=pass|proxy, ...; see the README's Routers section)", repeat=True,
          metavar="NAME=KIND")
    f.add("--host", host_help, default="127.0.0.1", metavar="ADDR")
    f.add("--port", port_help, type=int, default=8000, metavar="PORT")
    f.add("--dtype", "compute dtype; auto = float32 where the CPU matmul kernel serves the weights (gguf, bf16, "
          "auto on a .gguf model), bfloat16 on CUDA and on CPUs with native bf16, else float32",
          choices=["auto", "bfloat16", "float32"], default="auto")
    f.add("--weights", "weight precision: gguf = a .gguf model's own Q8_0/Q4_0/Q4_1 blocks (matmuls dequantize "
          "them on the fly, activations stay fp32), fp32 = every weight dequantized to the compute dtype, "
          "bf16 = matmul weights rounded to bfloat16 with fp32 activations and accumulation (CPU); "
          "auto = gguf for a .gguf model on CPU, else fp32", choices=["auto", "fp32", "bf16", "gguf"], default="auto")
    f.add("--device", "compute device; auto = cuda when available, else cpu", choices=["auto", "cpu", "cuda"],
          default="auto")
    f.add("--pool-mb", "unified memory pool (KV pages + adapter pages), MiB", type=int, default=512, metavar="MIB")
    f.add("--max-num-seqs", "most sequences in one engine step", type=int, default=64, metavar="N")
    f.add("--max-batch-tokens", "most tokens in one engine step (prefill chunks + decodes)", type=int, default=2048,
          metavar="N")
    f.add("--max-model-len", "context length, prompt + output (default: the model's)", type=int, metavar="N")
    f.add("--max-lora-rank", "adapters of higher rank are refused", type=int, default=64, metavar="R")
    f.add("--adapter-cache-mb", "host-memory budget for adapter weights read from disk, MiB", type=int,
          default=1024, metavar="MIB")
    f.add("--no-prefix-caching", "recompute every prompt: no reuse of cached KV blocks of shared prefixes "
          "(on by default, keyed by the adapter's content)", switch=True)
    f.add("--eviction", "which idle thing the unified pool evicts first when it needs pages: lru (least recently "
          "used cached KV block or adapter) or cost (GreedyDual: also weighs what each costs to bring back per "
          "page, a block's prefill vs an adapter's page-in)", choices=EVICTION_POLICIES, default="lru")
    f.add("--num-threads", "torch CPU threads (default: torch's choice)", type=int, metavar="N")
    f.add("--api-key", "require `Authorization: Bearer KEY` on /v1/*", metavar="KEY")
    f.add("--max-queue", "requests waiting for their first token before new ones get 429", type=int, default=256,
          metavar="N")
    f.add("--max-body-bytes", "largest request body; bigger ones get 413", type=int, default=1 << 20, metavar="BYTES")
    f.add("--max-tokens-cap", "largest max_tokens a request may ask for; also chat's default", type=int,
          default=4096, metavar="N")
    f.add("--max-prompts", "prompts in one /v1/completions request", type=int, default=64, metavar="N")
    f.add("--max-n", "choices (n) per prompt", type=int, default=16, metavar="N")
    f.add("--max-seqs-per-request", "prompts x n in one request", type=int, default=128, metavar="N")
    f.add("--max-stop", "stop strings per request", type=int, default=4, metavar="N")
    f.add("--max-stop-chars", "characters in one stop string", type=int, default=256, metavar="N")
    f.add("--max-logprob-entries", "max_tokens x n x prompts x (1 + top logprobs) one response may hold", type=int,
          default=1 << 20, metavar="N")
    f.add("--max-connections", "open connections + in-flight requests; past it uvicorn answers 503", type=int,
          default=1024, metavar="N")
    f.add("--keep-alive-timeout", "seconds an idle keep-alive connection stays open", type=float, default=5.0,
          metavar="SECONDS")
    f.add("--header-timeout", "seconds a client may take to send its request headers", type=float, default=10.0,
          metavar="SECONDS")
    f.add("--body-timeout", "seconds a client may take to send its request body (408 past it)", type=float,
          default=30.0, metavar="SECONDS")
    f.add("--metrics-public", "serve /metrics without the API key", switch=True)
    f.add("--enable-docs", "serve /docs and /openapi.json even with --api-key (they are on without a key)",
          switch=True)
    f.add("--allowed-host", "accepted Host header name (default: loopback names when bound to loopback, else any)",
          repeat=True, metavar="NAME")
    f.add("--drain-timeout", "seconds SIGTERM waits for in-flight requests before exiting", type=float,
          default=30.0, metavar="SECONDS")
    f.add("--cors-origin", "allow this browser origin (CORS is off unless given)", repeat=True, metavar="ORIGIN")
    f.add("--log-level", "log level", choices=list(LOG_LEVELS), default="info")


def _serve_parser(sub) -> _Flags:
    p = sub.add_parser("serve", help="start the OpenAI-compatible HTTP server")
    f = _Flags(p)
    _add_server_flags(f, "address to bind", "port to bind")
    return f


def _serve_ray_parser(sub) -> _Flags:
    p = sub.add_parser(
        "serve-ray", help="scale out on Ray Serve: N replicas behind Ray's HTTP proxy, adapter-affinity routing",
        description="Each replica is one loraplex server (the flags below apply to each); Ray's proxy sends a "
        "request to a replica already holding its model (the body's `model`) through Ray Serve model multiplexing.",
    )
    f = _Flags(p)
    _add_server_flags(f, "address Ray's HTTP proxy binds", "port Ray's HTTP proxy binds")
    f.add("--num-replicas", "replicas when autoscaling is off; the starting count when it is on", type=int, default=2,
          metavar="N")
    f.add("--min-replicas", "autoscaling lower bound (giving --min-replicas or --max-replicas turns autoscaling on)",
          type=int, metavar="N")
    f.add("--max-replicas", "autoscaling upper bound", type=int, metavar="N")
    f.add("--target-ongoing-requests", "autoscaling aims at this many in-flight requests per replica", type=float,
          default=16.0, metavar="N")
    f.add("--max-ongoing-requests", "most requests one replica works on; more wait in Ray's proxy", type=int,
          default=64, metavar="N")
    f.add("--max-adapters-per-replica", "models (adapters, base, routers) a replica holds before Ray drops its "
          "least recently used one from the replica's routing entry and host cache", type=int, default=16,
          metavar="N")
    f.add("--replica-cpus", "CPUs Ray reserves for each replica", type=float, default=1.0, metavar="N")
    f.add("--replica-gpus", "GPUs Ray reserves for each replica (--device auto picks cuda when > 0)", type=float,
          default=0.0, metavar="N")
    f.add("--ray-address", "join this Ray cluster (default: start a local Ray instance)", metavar="ADDR")
    f.add("--app-name", "Ray Serve application name", default="loraplex", metavar="NAME")
    return f


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{flag} wants NAME=VALUE, got {v!r}")
        out[name] = rest
    return out


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """ValueError names a bad flag."""
    return ServerSettings(
        host=args.host, port=args.port, served_model_name=args.served_model_name, api_key=args.api_key,
        max_queue=args.max_queue, max_body_bytes=args.max_body_bytes, max_tokens_cap=args.max_tokens_cap,
        max_prompts=args.max_prompts, max_n=args.max_n, max_seqs_per_request=args.max_seqs_per_request,
        max_stop=args.max_stop, max_stop_chars=args.max_stop_chars, max_logprob_entries=args.max_logprob_entries,
        drain_timeout=args.drain_timeout, cors_origins=args.cors_origin, log_level=args.log_level,
        adapters=_pairs(args.adapter, "--adapter"), adapter_dirs=args.adapter_dir,
        allowed_adapter_roots=args.allowed_adapter_root, enable_adapter_admin=args.enable_adapter_admin,
        admin_key=args.admin_key, routers=_pairs(args.router, "--router"), max_connections=args.max_connections,
        keep_alive_s=args.keep_alive_timeout, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        metrics_public=args.metrics_public, enable_docs=True if args.enable_docs else None,
        allowed_hosts=args.allowed_host,
    )


def engine_config(args: argparse.Namespace, device: str) -> EngineConfig:
    """ValueError names a bad flag."""
    return EngineConfig(
        model=args.model, dtype=args.dtype, weights=args.weights, device=device, pool_mb=args.pool_mb,
        max_num_seqs=args.max_num_seqs, max_batch_tokens=args.max_batch_tokens, max_model_len=args.max_model_len,
        num_threads=args.num_threads, max_lora_rank=args.max_lora_rank, adapter_cache_mb=args.adapter_cache_mb,
        prefix_caching=not args.no_prefix_caching, eviction=args.eviction,
    )


def build_parser() -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], None]]:
    """The parser, and what to call on its result to fill repeatable flags from the environment."""
    parser = argparse.ArgumentParser(prog="loraplex", description="LoRA-multiplexing LLM server")
    sub = parser.add_subparsers(dest="command", required=True)
    flags = {"serve": _serve_parser(sub), "serve-ray": _serve_ray_parser(sub)}
    return parser, lambda args: flags[args.command].finish(args)
