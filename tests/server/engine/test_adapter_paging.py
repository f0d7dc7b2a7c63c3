"""A pool that holds only a few adapters at once still serves requests spread over many adapters."""

import torch

from bench.adapter_tools.synthetic import generate
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams


def run_all(engine, requests: list[EngineRequest]) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for r in requests:
        engine.add_request(r)
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
    return got


def test_200_requests_over_100_adapters_with_eviction(tmp_path, make_engine, checkpoint):
    paths = generate(tmp_path, checkpoint.config, 100, seed=1, ranks=(4, 8), dtype=torch.float32)
    tok = checkpoint.tokenizer
    prompts = [tok(f"Item {i}: the")["input_ids"] for i in range(200)]
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    requests = [EngineRequest(f"r{i}", prompts[i], params, paths[i % 100].name) for i in range(200)]

    roomy = make_engine(pool_mb=512, adapter_cache_mb=2048)
    tight = make_engine(pool_mb=40, adapter_cache_mb=24, max_num_seqs=16)  # ~3 adapters in the pool, 2-3 on host
    for engine in (roomy, tight):
        for p in paths:
            engine.registry.register(p.name, p)
    reference = run_all(roomy, requests)
    got = run_all(tight, requests)
    assert got == reference and len(got) == 200

    pages, host = tight.adapters.pages.stats, tight.registry.host_cache.stats
    assert pages.loads >= 100 and pages.evictions > 0
    assert host.evictions > 0 and host.bytes <= 24 * 2**20
    book = tight.pool.book.stats()
    assert book.kv == 0 and book.free + book.adapter == book.total


def test_an_adapter_that_fails_to_load_fails_only_its_requests(tmp_path, make_engine, checkpoint):
    paths = generate(tmp_path, checkpoint.config, 2, seed=2, ranks=(4,), dtype=torch.float32)
    engine = make_engine()
    for p in paths:
        engine.registry.register(p.name, p)
    (paths[1] / "adapter_model.safetensors").write_bytes(b"not a safetensors file")  # broken after registration
    ids = checkpoint.tokenizer("Hello there")["input_ids"]
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    requests = [EngineRequest("good", ids, params, paths[0].name), EngineRequest("bad", ids, params, paths[1].name),
                EngineRequest("base", ids, params)]
    for r in requests:
        engine.add_request(r)
    finals = {}
    while engine.has_work():
        for d in engine.step():
            if d.finish_reason:
                finals[d.request_id] = d
    assert finals["bad"].finish_reason == "error" and paths[1].name in finals["bad"].error
    assert finals["good"].finish_reason == "length" and finals["good"].num_output_tokens == 3
    assert finals["base"].finish_reason == "length"
    assert engine.pool.book.stats().kv == 0
