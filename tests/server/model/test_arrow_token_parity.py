"""Per-token Arrow served by the engine equals PEFT's create_arrow_model, greedy fp32 token for token:
20 prompts one at a time, and all of them in one mixed batch with plain adapter rows and base rows.

PEFT requires adapters of one rank and one target set; each gets a dominant singular direction so
PEFT's 15 power iterations (its prototypes) agree with our exact top singular vectors to fp32 noise.
"""

import copy

import pytest
import torch

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from server.engine.sequence import TokenRouting
from tests.server.model.prompts import PROMPTS as ALL_PROMPTS

TASKS = ["task_0", "task_1", "task_2"]  # PEFT's names in create_arrow_model, in candidate order
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
TOP_K, TEMPERATURE = 2, 1.0
PROMPTS = ALL_PROMPTS[:20]
N = 10
GREEDY = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)
ROUTING = TokenRouting(TOP_K, TEMPERATURE)
CANDIDATES = tuple((t, 1.0) for t in TASKS)


@pytest.fixture(scope="module")
def arrow_adapters(tmp_path_factory, hf_fp32):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("arrow_adapters")
    for i, name in enumerate(TASKS):
        torch.manual_seed(100 + i)
        model = get_peft_model(copy.deepcopy(hf_fp32), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS,
                                                                  init_lora_weights=False))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_A" in n:
                    p[0].mul_(4.0)  # a dominant direction: the top singular vector is well separated
                if "lora_B" in n:
                    p.mul_(0.5)
                    p[:, 0].mul_(4.0)
        model.save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def peft_arrow(arrow_adapters, hf_fp32):
    from peft import ArrowConfig, create_arrow_model

    config = ArrowConfig(top_k=TOP_K, router_temperature=TEMPERATURE, rng_seed=0)
    return create_arrow_model(copy.deepcopy(hf_fp32), [str(arrow_adapters / t) for t in TASKS], config).eval()


def _greedy(model, ids: list[int]) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def refs(checkpoint, peft_arrow):
    """prompt -> {"arrow": PEFT's Arrow tokens, task name: that adapter alone, None: the base model}."""
    tok, out = checkpoint.tokenizer, {}
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        out[p] = {"arrow": _greedy(peft_arrow, ids)}
    for t in TASKS[:2]:
        peft_arrow.set_adapter(t)
        for p in PROMPTS[:6]:
            out[p][t] = _greedy(peft_arrow, tok(p)["input_ids"])
    with peft_arrow.disable_adapter():
        for p in PROMPTS[:6]:
            out[p][None] = _greedy(peft_arrow, tok(p)["input_ids"])
    peft_arrow.set_adapter("arrow_router")
    return out


@pytest.fixture(scope="module")
def engine(make_engine, arrow_adapters):
    engine = make_engine()
    for t in TASKS:
        engine.registry.register(t, arrow_adapters / t)
    return engine


def _run(engine, requests: list[EngineRequest]) -> tuple[dict[str, list[int]], list[tuple[int, int, int]]]:
    """Outputs by request id, and per step (routed rows, plain adapter rows, base rows)."""
    for r in requests:
        engine.add_request(r)
    got: dict[str, list[int]] = {}
    steps = []
    while engine.has_work():
        for d in engine.step():
            got.setdefault(d.request_id, []).extend(d.token_ids)
        lora = engine.runner.last_lora
        routed = 0 if lora is None or lora.arrow is None else lora.arrow.rows.numel()
        plain = 0 if lora is None else int((lora.info.row_slots >= 0).sum())
        steps.append((routed, plain, engine.last_step.num_tokens - routed - plain))
    return got, steps


def test_routing_per_token_changes_the_text(refs):
    differs = [p for p in PROMPTS[:6] if refs[p]["arrow"] not in (refs[p]["task_0"], refs[p]["task_1"], refs[p][None])]
    assert differs, "per-token routing gave the text of one adapter or the base on every prompt"


def test_one_at_a_time_matches_peft_arrow(engine, checkpoint, refs):
    tok = checkpoint.tokenizer
    for i, p in enumerate(PROMPTS):
        got, steps = _run(engine, [EngineRequest(f"one{i}", tok(p)["input_ids"], GREEDY, mixture=CANDIDATES,
                                                 routing=ROUTING)])
        assert got[f"one{i}"] == refs[p]["arrow"], p
        assert all(s[0] > 0 and s[1] == 0 for s in steps)  # every row routed, none through the plain path


def test_mixed_batch_matches_peft(engine, checkpoint, refs):
    tok = checkpoint.tokenizer
    requests, expect = [], {}
    for i, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        requests.append(EngineRequest(f"arrow{i}", ids, GREEDY, mixture=CANDIDATES, routing=ROUTING))
        expect[f"arrow{i}"] = refs[p]["arrow"]
        if i < 6:
            for t in TASKS[:2]:
                requests.append(EngineRequest(f"{t}-{i}", ids, GREEDY, t))
                expect[f"{t}-{i}"] = refs[p][t]
            requests.append(EngineRequest(f"base{i}", ids, GREEDY))
            expect[f"base{i}"] = refs[p][None]
    got, steps = _run(engine, requests)
    assert any(all(n > 0 for n in s) for s in steps)  # routed, plain and base rows in one forward
    for rid, ref in expect.items():
        assert got[rid] == ref, rid


def test_routing_is_refused_without_candidates_or_with_bad_options(engine):
    bad = [EngineRequest("b1", [1, 2], GREEDY, "task_0", routing=ROUTING),
           EngineRequest("b2", [1, 2], GREEDY, routing=ROUTING),
           EngineRequest("b3", [1, 2], GREEDY, mixture=CANDIDATES, routing=TokenRouting(0, 1.0)),
           EngineRequest("b4", [1, 2], GREEDY, mixture=CANDIDATES, routing=TokenRouting(1, float("nan")))]
    for req in bad:
        with pytest.raises(ValueError, match="per-token routing"):
            engine.check_request(req)
