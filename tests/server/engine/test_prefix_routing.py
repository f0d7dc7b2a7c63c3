"""The routing pass's base KV goes into the prefix cache: a request the router sends to the base reuses it."""

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def serve(engine, ids, adapter=None):
    engine.add_request(EngineRequest("r", ids, GREEDY, adapter))
    tokens, cached = [], None
    while engine.has_work():
        for d in engine.step():
            tokens += d.token_ids
            cached = d.num_cached_tokens if cached is None else cached
    return tokens, cached


def test_a_routing_pass_leaves_the_base_prompt_cached(make_engine, checkpoint):
    ids = checkpoint.tokenizer("Route me: " + "the quick brown fox jumps over the lazy dog " * 4)["input_ids"]
    assert len(ids) > 40
    engine = make_engine()
    engine.prompt_features(ids, {(0, "q_proj")})
    book = engine.pool.book.stats()
    assert book.kv == 0 and book.cached == len(ids) // 16  # every full block, held by nobody
    got, cached = serve(engine, ids)
    assert cached == (len(ids) - 1) // 16 * 16
    want, none = serve(make_engine(prefix_caching=False), ids)
    assert got == want and none is None
