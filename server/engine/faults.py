"""Seeded fault injection for reliability tests: `LORAPLEX_FAULTS=schedule=0.05,step=0.05,seed=1`.

Sites: schedule (after the scheduler placed a step), step (before the forward), output (per sampled
token), adapter_load (reading an adapter's weights), recover (in fail_step: kills the engine loop, to
test what a dead engine looks like from outside). Off unless the variable is set; tests set it.
"""

import os
import random
import threading

SITES = ("schedule", "step", "output", "adapter_load", "recover")
ENV = "LORAPLEX_FAULTS"


class InjectedFault(RuntimeError):
    pass


class Faults:
    def __init__(self, rates: dict[str, float], seed: int = 0):
        if unknown := set(rates) - set(SITES):
            raise ValueError(f"{ENV}: unknown fault sites {sorted(unknown)} (known: {', '.join(SITES)})")
        self.rates = rates
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # adapter loads may run off the engine thread
        self.fired = dict.fromkeys(SITES, 0)

    @classmethod
    def from_env(cls) -> "Faults | None":
        raw = os.environ.get(ENV)
        if not raw:
            return None
        pairs = dict(item.split("=", 1) for item in raw.split(",") if item)
        seed = int(pairs.pop("seed", 0))
        return cls({k: float(v) for k, v in pairs.items()}, seed)

    def maybe(self, site: str) -> None:
        with self._lock:
            hit = self._rng.random() < self.rates.get(site, 0.0)
            if hit:
                self.fired[site] += 1
        if hit:
            raise InjectedFault(f"injected fault at {site}")
