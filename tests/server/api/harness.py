"""Start real `loraplex serve` processes on free local ports; read their /metrics."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[3]
DEMO_ADAPTERS = REPO / "server" / "adapters" / "demo" / "adapters"
MODEL = "SmolLM2-135M-Instruct"
MAX_MODEL_LEN = 1024
MAX_TOKENS_CAP = 256
START_DEADLINE_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path
    api_key: str | None = None  # --api-key also guards /metrics

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def async_client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample: (name, sorted labels) -> value."""
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, deadline_s: float = 60.0, what: str = "condition"):
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_server(log_dir: Path, *flags: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = log_dir / f"server-{port}.log"
    cmd = [
        sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--dtype", "float32", "--pool-mb", "64",
        "--max-model-len", str(MAX_MODEL_LEN), "--max-tokens-cap", str(MAX_TOKENS_CAP), *flags,
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    key = flags[flags.index("--api-key") + 1] if "--api-key" in flags else None
    server = Server(proc, f"http://127.0.0.1:{port}", log, key)
    try:
        wait_healthy(proc, server.url, log)
    except BaseException:  # never leave a half-started server behind
        proc.kill()
        proc.wait()
        raise
    return server


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Until /health says 200; the process's log in the error if it dies first."""

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, START_DEADLINE_S, f"{url} to become healthy")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
