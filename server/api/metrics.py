"""Prometheus metrics, all named loraplex_*, in a registry of their own (one per app).

Counters and histograms move as requests run; pool pages and request gauges are read at scrape
time. Per-adapter series are bounded by TopLabels so thousands of adapters stay a few series.
"""

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import suppress

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.api.state import ServerState
from server.memory.adapter_pages import ResidencyStats
from server.memory.page_pool import PoolStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
OTHER = "other"


class TopLabels:
    """Maps names onto at most `size` label values: the most requested names keep their own, the rest get "other".

    A name is promoted once its count passes the least-counted labelled name, which is demoted:
    on_demote drops its series, and its later traffic counts under "other".
    """

    def __init__(self, size: int, on_demote: Callable[[str], None] = lambda name: None):
        self.size = size
        self.on_demote = on_demote
        self.counts: Tally[str] = Tally()
        self.labelled: set[str] = set()

    def label(self, name: str) -> str:
        """Count one use of name and return the label value to record it under."""
        self.counts[name] += 1
        if name in self.labelled:
            return name
        if len(self.labelled) < self.size:
            self.labelled.add(name)
            return name
        weakest = min(self.labelled, key=lambda n: (self.counts[n], n))
        if self.counts[name] <= self.counts[weakest]:
            return OTHER
        self.labelled.remove(weakest)
        self.on_demote(weakest)
        self.labelled.add(name)
        return name


class _ScrapeTime(Collector):
    def __init__(self, pool_stats: Callable[[], PoolStats], state: ServerState,
                 adapter_stats: Callable[[], ResidencyStats] | None, adapters_pinned: Callable[[], int] | None):
        self.pool_stats = pool_stats
        self.state = state
        self.adapter_stats = adapter_stats or ResidencyStats
        self.adapters_pinned = adapters_pinned or (lambda: 0)

    def describe(self) -> list:
        return []  # read only at scrape time: the engine may not exist yet when this registers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.pool_stats()
        pages = GaugeMetricFamily("loraplex_pool_pages", "Unified pool pages by use", labels=["use"])
        pages.add_metric(["kv"], s.kv)
        pages.add_metric(["adapter"], s.adapter)
        pages.add_metric(["free"], s.free)
        pages.add_metric(["cached"], s.cached)
        yield pages
        yield GaugeMetricFamily("loraplex_pool_pages_capacity", "Pages in the unified pool", value=s.total)
        yield GaugeMetricFamily(
            "loraplex_requests_running", "Admitted sequences (prompts x n) whose request has produced a token",
            value=self.state.running,
        )
        a = self.adapter_stats()
        yield GaugeMetricFamily("loraplex_adapters_resident", "Adapters with pages in the pool", value=a.resident)
        yield GaugeMetricFamily("loraplex_adapters_pinned", "Resident adapters pinned by running sequences",
                                value=self.adapters_pinned())
        yield CounterMetricFamily("loraplex_adapter_loads", "Adapter loads into the pool", value=a.loads)
        yield CounterMetricFamily("loraplex_adapter_evictions", "Adapters evicted from the pool", value=a.evictions)
        yield CounterMetricFamily("loraplex_adapter_hits", "Admissions that found the adapter resident", value=a.hits)
        yield GaugeMetricFamily(
            "loraplex_requests_waiting",
            "Admitted sequences (prompts x n) waiting for their request's first token (at most --max-queue)",
            value=self.state.waiting,
        )


class Metrics:
    def __init__(self, pool_stats: Callable[[], PoolStats], state: ServerState, adapter_labels: int = 20,
                 adapter_stats: Callable[[], ResidencyStats] | None = None,
                 adapters_pinned: Callable[[], int] | None = None):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "loraplex_requests", "HTTP requests to /v1 by route and status code (499: the client went away)",
            ["route", "status"], registry=r,
        )
        self.time_to_first_token = Histogram(
            "loraplex_time_to_first_token_seconds", "Admission to first generated token", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "loraplex_time_per_output_token_seconds", "Mean gap between a sequence's tokens after its first",
            buckets=TOKEN_GAP_BUCKETS, registry=r,
        )
        self.e2e_latency = Histogram(
            "loraplex_e2e_request_latency_seconds", "Admission to last token of completed requests",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_time = Histogram(
            "loraplex_request_queue_time_seconds", "Engine arrival to first scheduled step", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("loraplex_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("loraplex_generation_tokens", "Generated tokens", registry=r)
        self.adapter_requests = Counter(
            "loraplex_adapter_requests", f"Requests by adapter (the base model's name for base requests); "
            f"the {adapter_labels} most requested keep a label, the rest count as '{OTHER}'", ["adapter"], registry=r,
        )
        self.adapter_generation_tokens = Counter(
            "loraplex_adapter_generation_tokens", "Generated tokens by adapter, labelled as loraplex_adapter_requests",
            ["adapter"], registry=r,
        )
        self.prefix_queried_tokens = Counter(
            "loraplex_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache, by adapter "
            "(labelled as loraplex_adapter_requests)", ["adapter"], registry=r,
        )
        self.prefix_hit_tokens = Counter(
            "loraplex_prefix_cache_hit_tokens", "Prompt tokens whose KV came from the prefix cache, by adapter; "
            "hit rate = rate(hit) / rate(queried)", ["adapter"], registry=r,
        )
        self.adapter_labels = TopLabels(adapter_labels, self._drop_adapter_series)
        self.router_choices = Counter(
            "loraplex_router_choices", "Adapters chosen by routers ('' = fell back to the base model)",
            ["router", "adapter"], registry=r,
        )
        self.adapter_load_time = Histogram(
            "loraplex_adapter_load_seconds", "Time to bring an adapter into the pool", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_ScrapeTime(pool_stats, state, adapter_stats, adapters_pinned))

    def _drop_adapter_series(self, name: str) -> None:
        for family in (self.adapter_requests, self.adapter_generation_tokens, self.prefix_queried_tokens,
                       self.prefix_hit_tokens):
            with suppress(KeyError):
                family.remove(name)
