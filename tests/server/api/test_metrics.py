"""/metrics: every family is there, and the request families move with traffic."""

from tests.server.api.harness import MODEL

FAMILIES = [
    "loraplex_requests_total",
    "loraplex_time_to_first_token_seconds_count",
    "loraplex_time_per_output_token_seconds_count",
    "loraplex_e2e_request_latency_seconds_count",
    "loraplex_request_queue_time_seconds_count",
    "loraplex_prompt_tokens_total",
    "loraplex_generation_tokens_total",
    "loraplex_requests_running",
    "loraplex_requests_waiting",
    "loraplex_pool_pages",
    "loraplex_pool_pages_capacity",
    "loraplex_adapters_resident",
    "loraplex_adapter_loads_total",
    "loraplex_adapter_evictions_total",
    "loraplex_adapter_load_seconds_count",
    "loraplex_adapter_requests_total",
    "loraplex_adapter_generation_tokens_total",
]


def totals(server) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, _labels), value in server.metrics().items():
        out[name] = out.get(name, 0.0) + value
    return out


def test_families_exist_and_move_after_traffic(idle, checkpoint):
    server = idle
    before = totals(server)
    # the labelled families appear with their first sample; every other family is there from the start
    assert {f for f in FAMILIES if f not in before} <= {"loraplex_requests_total", "loraplex_adapter_requests_total",
                                                         "loraplex_adapter_generation_tokens_total"}
    client = server.client()
    prompt = "Metrics are"
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, extra_body={"ignore_eos": True})
    list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True,
        extra_body={"ignore_eos": True},
    ))
    client.completions.create(model="sentiment", prompt="Review: fine.\nSentiment:", max_tokens=3,
                              extra_body={"ignore_eos": True})
    after = totals(server)
    assert set(FAMILIES) <= set(after)
    moved = {f: after[f] - before.get(f, 0.0) for f in FAMILIES}
    assert moved["loraplex_requests_total"] == 3
    assert moved["loraplex_generation_tokens_total"] == 13
    assert moved["loraplex_adapter_generation_tokens_total"] == 13
    assert moved["loraplex_adapter_requests_total"] == 3
    assert moved["loraplex_prompt_tokens_total"] > len(checkpoint.tokenizer(prompt)["input_ids"])
    for family in ["time_to_first_token", "time_per_output_token", "e2e_request_latency", "request_queue_time"]:
        assert moved[f"loraplex_{family}_seconds_count"] == 3, family
    labels = {dict(k[1]).get("adapter") for k in server.metrics() if k[0] == "loraplex_adapter_requests_total"}
    assert {MODEL, "sentiment"} <= labels
    assert after["loraplex_adapters_resident"] >= 1 and after["loraplex_adapter_loads_total"] >= 1
    assert after["loraplex_adapter_load_seconds_count"] == after["loraplex_adapter_loads_total"]
    pages = {dict(k[1])["use"]: v for k, v in server.metrics().items() if k[0] == "loraplex_pool_pages"}
    assert set(pages) == {"kv", "cached", "adapter", "free"}  # cached: idle KV blocks kept for prefix reuse
    assert sum(pages.values()) == after["loraplex_pool_pages_capacity"]
