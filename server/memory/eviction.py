"""Which idle thing the unified pool evicts first, across idle adapters and idle cached KV blocks. No torch here.

Every use of an evictable thing (an adapter's last pin released, a cached block's last holder gone)
is stamped by the pool's policy; the pool evicts the smallest stamp first, whoever owns it.

- lru (the default): the stamp is the pool's logical clock, so the least recently used goes first.
- cost: GreedyDual-Size-Frequency (Young 1994; Cao and Irani 1997; Cherkasova 1998). The stamp is
  L + uses x what the thing would cost to bring back per page it holds; evicting raises L to the
  evicted stamp. A thing unused for long ages out whatever its value, and of two things used about as
  recently the one worth less per page goes first. Restoring a KV block is a prefill of block_size
  tokens; restoring an adapter is a host-to-pool copy. Per page those differ by over an order of
  magnitude on CPUs (bench/eviction_costs.py: a cached block of SmolLM2-135M in fp32 saves ~20x what a
  page of adapter costs to page back in), so under pressure the pool gives up adapter pages before
  cached prefixes of about the same age. uses estimates a block's re-use: how many sequences have held
  it (1 + its hits). A shared system prompt's blocks gather hits; the block holding a request's own
  question never does, so it goes before them although released later. Adapters count 1: a Zipf-
  popular adapter is re-pinned before it ages out anyway, and its page-in is cheap. A chain's blocks
  each cost one prefill of block_size tokens: the prefix cache evicts leaves first, and a block with
  cached children never (they would be unreachable).
"""

from dataclasses import dataclass

KV = "kv"  # owners of pool pages (page_pool.py re-exports them)
ADAPTER = "adapter"

POLICIES = ("lru", "cost")

Stamp = tuple[float, int]  # (priority, tick): smaller is evicted first; the tick breaks ties, oldest first


@dataclass(frozen=True, slots=True)
class EvictionConfig:
    policy: str = "lru"  # lru | cost
    # what restoring one page costs, in ms (cost policy only; their ratio is what matters). Measured on the
    # 2-core AVX2 host, fp32, one thread: bench/results/prefix/eviction/costs.json
    kv_page_cost_ms: float = 42.0  # prefill of one 16-token block of SmolLM2-135M
    adapter_page_cost_ms: float = 2.1  # host-to-pool copy of one adapter page (0.70 MiB), mean over ranks 8-64

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"eviction policy {self.policy!r}: one of {', '.join(POLICIES)}")
        if self.kv_page_cost_ms <= 0 or self.adapter_page_cost_ms <= 0:
            raise ValueError("eviction costs must be positive")


class Eviction:
    """Stamps uses and learns from evictions; the pool compares stamps across its reclaimers."""

    def __init__(self, config: EvictionConfig | None = None):
        self.config = config or EvictionConfig()
        self._clock = 0
        self._floor = 0.0  # GreedyDual's L: the priority of the latest eviction
        self._cost = {KV: self.config.kv_page_cost_ms, ADAPTER: self.config.adapter_page_cost_ms}

    @property
    def in_release_order(self) -> bool:
        """Whether a later stamp is always larger (LRU): the first idle thing in release order is the smallest."""
        return self.config.policy == "lru"

    def stamp(self, owner: str, uses: int = 1) -> Stamp:
        """A use now of a thing of this owner that uses sequences have held so far (cost policy only)."""
        self._clock += 1
        if self.config.policy == "lru":
            return (float(self._clock), self._clock)
        return (self._floor + self._cost[owner] * uses, self._clock)

    def evicted(self, stamp: Stamp) -> None:
        self._floor = max(self._floor, stamp[0])
