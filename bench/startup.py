"""Start-up time of the engine: first start (GGUF dequantised and cached) vs second start (from the cache).

Each start is a fresh process with an empty (first) or warm (second) LORAPLEX_CACHE_DIR; the time is
process start to "engine ready", imports included.

    python bench/startup.py --out bench/results/startup.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CODE = "from server.config import EngineConfig; from server.engine.llm_engine import LLMEngine; " \
       "LLMEngine.from_config(EngineConfig())"


def start(cache: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE], check=True, env={**os.environ, "LORAPLEX_CACHE_DIR": cache},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = start(cache)
        second = start(cache)
    report = {"command": "python bench/startup.py", "first_start_s": first, "second_start_s": second}
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
