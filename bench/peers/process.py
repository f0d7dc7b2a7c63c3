"""Start a server process on 127.0.0.1, wait until /health answers 200, stop it with its whole process group."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path
    command: list[str]
    start_s: float = 0.0  # launch to first healthy answer

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start(name: str, command: list[str], port: int, log: Path, env: dict[str, str] | None = None,
          deadline_s: float = 600.0, cwd: Path | None = None) -> ServerProcess:
    """Launches in its own session (so stop() reaches every child), waits for /health; raises with the log tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=cwd, start_new_session=True)
    server = ServerProcess(name, proc, f"http://127.0.0.1:{port}", log, command)
    while True:
        if not server.alive():
            raise RuntimeError(f"{name} exited with {proc.returncode} before becoming healthy:\n{server.tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                server.start_s = time.monotonic() - t0
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() - t0 > deadline_s:
            stop(server)
            raise RuntimeError(f"{name} not healthy after {deadline_s:.0f}s:\n{server.tail()}")
        time.sleep(1.0)


def stop(server: ServerProcess, grace_s: float = 30.0) -> None:
    """SIGTERM to the process group (vLLM forks an engine core and a worker), SIGKILL after grace_s."""
    if not server.alive():
        return
    pgid = os.getpgid(server.proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        server.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        server.proc.wait()
    with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
        os.killpg(pgid, signal.SIGKILL)
