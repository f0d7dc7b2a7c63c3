"""A full garbage collection in a started server, with start-up's objects frozen (what build_server does)
and thawed (as before): it holds the GIL, so the engine thread waits it out between two kernel calls.

    python bench/gc_pause.py --out bench/results/gc_pause.json
"""

import argparse
import gc
import statistics
import time
from pathlib import Path

from bench.report_file import emit
from server.api.settings import ServerSettings
from server.config import EngineConfig
from server.startup import build_server


def full_collection_ms(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    settings = ServerSettings(adapter_dirs=["server/adapters/demo/adapters"],
                              routers={"auto": "embedding", "arrow": "arrow"})  # as `make serve`
    engine, _app = build_server(settings, EngineConfig())
    frozen, thawed = gc.get_freeze_count(), len(gc.get_objects())
    rounds = []
    for _ in range(2):  # in turn, twice
        rounds.append({"frozen_ms": full_collection_ms(args.repeats)})
        gc.unfreeze()
        rounds[-1]["thawed_ms"] = full_collection_ms(args.repeats)
        gc.freeze()
    engine.shutdown()
    gc.unfreeze()
    emit({"command": "python bench/gc_pause.py" + (f" --out {args.out}" if args.out else ""),
          "server": "build_server as `make serve`: the embedded model, the demo adapters, two routers",
          "frozen_objects": frozen, "tracked_beside_them": thawed, "rounds": rounds},
         args.out)


if __name__ == "__main__":
    main()
