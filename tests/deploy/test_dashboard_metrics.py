"""Every metric the Grafana dashboard queries is one a live server exports, under the exact sample name
Prometheus stores (counters as NAME_total, histograms as NAME_bucket/_sum/_count), with the labels it matches on."""

import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.files import DASHBOARD, DEMO_ADAPTERS
from tests.server.api.harness import MODEL, start_server, stop_server

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}


def expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def referenced(expr: str) -> tuple[set[str], list[tuple[str, str, str]], set[str]]:
    """(metric names, (metric, label, value) equality matchers, grouping labels) of one PromQL expression."""
    matchers = [(m, label, value) for m, body in _SELECTOR.findall(expr)
                for label, op, value in _MATCHER.findall(body) if op == "="]
    grouping = {g.strip() for _, labels in _GROUPING.findall(expr) for g in labels.split(",") if g.strip()}
    bare = _GROUPING.sub(" ", _STRING.sub('""', expr))
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # ranges, [$__rate_interval] included
    names = {name for name, call in _IDENT.findall(bare) if not call and name not in _KEYWORDS}
    return names, matchers, grouping


def test_the_parser_on_a_known_expression():
    names, matchers, grouping = referenced(
        'histogram_quantile(0.9, sum by (le) (rate(x_bucket{use="kv", a!="b"}[$__rate_interval]))) / sum(y_total)'
    )
    assert names == {"x_bucket", "y_total"}
    assert matchers == [("x_bucket", "use", "kv")]
    assert grouping == {"le"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """sample name -> label sets, from /metrics after traffic to the base model, a demo adapter and a router."""
    server = start_server(
        tmp_path_factory.mktemp("dashboard"), "--adapter-dir", str(DEMO_ADAPTERS), "--router", "auto=embedding"
    )
    try:
        client = server.client()
        for model in (MODEL, "sentiment", "auto"):
            client.completions.create(model=model, prompt="Deploying is", max_tokens=3, temperature=0)
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        stop_server(server)
    out: dict[str, set] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).add(tuple(sorted(s.labels.items())))
    return out


def test_dashboard_queries_only_exported_metrics(exported):
    exprs = expressions()
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        names, matchers, grouping = referenced(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - exported.keys()
        assert not missing, f"{expr!r} queries {sorted(missing)}, which /metrics does not export"
        used |= names
        for metric, label, value in matchers:
            assert any((label, value) in labels for labels in exported[metric]), f"{metric}{{{label}={value!r}}}"
        labels_here = {k for n in names for labels in exported[n] for k, _ in labels}
        assert grouping <= labels_here, f"{expr!r} groups by {sorted(grouping - labels_here)}"
    # the panels: throughput, latency percentiles, queue, batch, pool, adapters, top adapters
    assert {
        "loraplex_requests_total", "loraplex_generation_tokens_total",
        "loraplex_time_to_first_token_seconds_bucket", "loraplex_time_per_output_token_seconds_bucket",
        "loraplex_requests_waiting", "loraplex_requests_running", "loraplex_pool_pages",
        "loraplex_adapter_loads_total", "loraplex_adapter_evictions_total", "loraplex_adapter_load_seconds_bucket",
        "loraplex_adapter_requests_total",
    } <= used
