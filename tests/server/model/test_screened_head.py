"""The screened greedy head (server/model/screened_head.py) against the full fp32 head it stands in for."""

import pytest
import torch

from kernels import ops
from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from server.model.screened_head import F32, MAX_ROWS, Q8_0, TINY, ScreenedHead
from tests.server.model.prompts import PROMPTS


def head(weight: torch.Tensor) -> ScreenedHead:
    blocks = weight.contiguous().view(torch.uint8)  # (V, K * 4), as dense_cpu serves an fp32 head
    return ScreenedHead(blocks, weight.shape[1], lambda h: ops.quant_matmul(h, blocks, F32))


def full_argmax(s: ScreenedHead, h: torch.Tensor) -> torch.Tensor:
    return s.logits(h).argmax(-1)


def wide_range_weight(v: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(v, k, generator=g) * 10 ** (torch.rand(v, 1, generator=g) * 6 - 3)  # rows 1e-3 .. 1e3
    w[::17, ::5] = 1e-41  # float32 subnormals
    w[3] = 0
    w[::29, 0] = 3e4  # a block whose scale is set by one large value
    return w


def test_the_bound_covers_every_logit():
    s = head(wide_range_weight(4000, 96, 0))
    g = torch.Generator().manual_seed(1)
    h = torch.randn(MAX_ROWS, 96, generator=g) * torch.tensor([1e-3, 1, 30, 1e3, 1, 1, 1, 1])[:, None]
    h[1, ::3] = 0
    exact = ops.quant_matmul(h, s.exact, F32).double()  # (S, V)
    approx = ops.quant_matmul(h, s.screen, Q8_0).double()
    bound = h.double().norm(dim=1, keepdim=True) * s.row_bound.double() + TINY
    gap = (exact - approx).abs()
    assert (gap <= bound).all()
    assert (gap > 0).any() and (gap <= bound / 2).all()  # the copy is not exact; the bound is not loose beyond 2x


@pytest.mark.parametrize("rows", [1, 2, 5, MAX_ROWS])
def test_argmax_is_the_full_heads(rows):
    w = torch.randn(6000, 96, generator=torch.Generator().manual_seed(2))
    s = head(w)
    for seed in range(20):
        h = torch.randn(rows, 96, generator=torch.Generator().manual_seed(seed)) * (seed + 1)
        assert torch.equal(s.argmax(h), full_argmax(s, h))
    cand = s.candidates(torch.randn(rows, 96, generator=torch.Generator().manual_seed(99)))
    assert cand.sum(dim=1).max() < 6000 // 100  # the screen rules out almost everything


def test_near_ties_and_exact_ties_are_settled_by_the_fp32_rows():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(96, generator=g)
    w = torch.randn(3000, 96, generator=g) * 0.1
    w[100:160] = base + torch.randn(60, 96, generator=g) * 1e-6  # 60 rows the 8-bit copy cannot tell apart
    w[700] = w[130]  # an exact tie with a near-tie: the first index wins, as torch's argmax
    s = head(w)
    assert torch.equal(s.argmax(base[None]), full_argmax(s, base[None]))
    hits = 0
    for seed in range(40):
        h = base + torch.randn(96, generator=torch.Generator().manual_seed(seed)) * 1e-3
        hits += int(s.candidates(h[None]).sum()) > 1
        assert torch.equal(s.argmax(h[None]), full_argmax(s, h[None]))
    assert hits == 40  # every draw needed the fp32 rows
    h = w[130][None] * 2
    assert s.argmax(h).item() == full_argmax(s, h).item()


def test_more_rows_or_a_non_finite_screen_take_the_full_head():
    s = head(torch.randn(500, 64, generator=torch.Generator().manual_seed(4)))
    calls = []
    full = s.logits
    s.logits = lambda h: calls.append(h.shape[0]) or full(h)
    h = torch.randn(MAX_ROWS + 1, 64)
    assert torch.equal(s.argmax(h), full(h).argmax(-1)) and calls == [MAX_ROWS + 1]
    h = torch.randn(2, 64)
    h[1, 5] = float("nan")
    assert torch.equal(s.argmax(h), full(h).argmax(-1)) and calls[-1] == 2
    s.argmax(torch.randn(2, 64))
    assert len(calls) == 2  # a finite step of few rows does not read the full head


def test_the_real_heads_argmax_on_real_hidden_states(fp32_model, hf_fp32, checkpoint):
    s = fp32_model.greedy_tokens.__self__
    assert isinstance(s, ScreenedHead)
    tok = checkpoint.tokenizer
    with torch.inference_mode():
        hidden = torch.cat([hf_fp32.model(torch.tensor([tok(p)["input_ids"]])).last_hidden_state[0] for p in PROMPTS])
    assert hidden.shape[0] > 100
    for rows in (1, 3, MAX_ROWS):
        for i in range(0, hidden.shape[0] - rows, rows):
            h = hidden[i : i + rows].contiguous()
            assert torch.equal(s.argmax(h), full_argmax(s, h))


def test_the_engine_takes_greedy_rows_through_it_and_the_rest_through_the_sampler(make_engine, fp32_model, monkeypatch,
                                                                                  checkpoint):
    calls = []
    screened = fp32_model.greedy_tokens
    monkeypatch.setattr(fp32_model, "greedy_tokens", lambda h: calls.append(h.shape[0]) or screened(h))
    ids = checkpoint.tokenizer(PROMPTS[0])["input_ids"]
    engine = make_engine()
    greedy = engine.generate([ids, ids[:5]], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert calls and max(calls) == 2
    monkeypatch.setattr(fp32_model, "greedy_tokens", lambda h: calls.append(-1) or fp32_model.logits(h).argmax(-1))
    assert engine.generate([ids, ids[:5]], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)) == greedy
    n = len(calls)
    engine.add_request(EngineRequest("lp", ids, SamplingParams(max_tokens=4, temperature=0, logprobs=2)))
    engine.add_request(EngineRequest("drawn", ids, SamplingParams(max_tokens=4, temperature=0.8, seed=1)))
    deltas = []
    while engine.has_work():
        deltas += engine.step()
    assert len(calls) == n  # logprobs and draws read the full logits
    lp = [d for d in deltas if d.request_id == "lp"]
    assert [t for d in lp for t in d.token_ids] == greedy[0][:4]
    assert sum(len(d.logprobs) for d in lp) == 4
