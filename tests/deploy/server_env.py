"""Start deploy/docker-entrypoint.sh the way the image does: LORAPLEX_* env only, no flags."""

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.files import ENTRYPOINT, dockerfile_env
from tests.server.api.harness import free_port, wait_healthy


@dataclass
class EntrypointServer:
    proc: subprocess.Popen
    url: str
    env: dict[str, str]
    log: Path


def image_env(bin_dir: Path, **overrides: str) -> dict[str, str]:
    """The process env: this machine's minus any LORAPLEX_*, then the Dockerfile's LORAPLEX_* ENV, then overrides.

    PATH gets bin_dir first, as the image puts /opt/venv/bin first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAPLEX_")}
    env.update({k: v for k, v in dockerfile_env().items() if k.startswith("LORAPLEX_")})
    env.update(overrides)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_entrypoint(cwd: Path, env: dict[str, str]) -> EntrypointServer:
    log = cwd / "entrypoint.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = EntrypointServer(proc, f"http://127.0.0.1:{env['LORAPLEX_PORT']}", env, log)
    wait_healthy(proc, server.url, log)
    return server


def stop(server: EntrypointServer) -> int:
    """SIGTERM, as docker stop / the kubelet send it; the exit code."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            raise
    return server.proc.returncode


def sizing_env(port: int) -> dict[str, str]:
    """Test-sized limits, still as env: small pool and context, fp32 for CPUs without bf16."""
    return {
        "LORAPLEX_PORT": str(port), "LORAPLEX_DTYPE": "float32", "LORAPLEX_POOL_MB": "64",
        "LORAPLEX_MAX_MODEL_LEN": "1024", "LORAPLEX_MAX_TOKENS_CAP": "256",
    }


__all__ = ["EntrypointServer", "free_port", "image_env", "sizing_env", "start_entrypoint", "stop"]
