"""The batched sampler against a per-row torch reference of vLLM's formulas, on random logits."""

import pytest
import torch

from server.engine import logits_processors as lp
from server.engine.sampler import SampleRow, process, sample, warp
from server.engine.sampling_params import SamplingParams

V = 64
EOS = 3


def ref_process(logits: torch.Tensor, row: SampleRow) -> torch.Tensor:
    """One row (V,), written out the way vLLM states each parameter."""
    p, x = row.params, logits.clone()
    if len(row.output_ids) < p.min_tokens:  # min_tokens: stop tokens cannot be drawn yet
        for t in {*p.stop_token_ids, *([] if p.ignore_eos else [EOS])}:
            x[t] = float("-inf")
    for t, b in p.logit_bias.items():
        x[t] += b
    counts = torch.zeros(V)
    for t in row.output_ids:
        counts[t] += 1
    for t in set(row.prompt_ids) | set(row.output_ids):  # repetition: prompt and output
        x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    x -= p.frequency_penalty * counts  # frequency and presence: output only
    x -= p.presence_penalty * (counts > 0).float()
    return x


def ref_warp(x: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    x = x / p.temperature
    if p.min_p:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    if p.top_k:
        x = x.masked_fill(x < x.topk(p.top_k).values[-1], float("-inf"))
    if p.top_p < 1:
        probs, order = x.softmax(-1).sort(descending=True)
        keep = (probs.cumsum(-1) - probs) < p.top_p  # the smallest prefix reaching top_p
        x = torch.full_like(x, float("-inf")).scatter(0, order[keep], x[order[keep]])
    return x


def ref_draw(x: torch.Tensor, seed: int) -> int:
    u = float(torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    cdf = x.softmax(-1).double().cumsum(-1)
    return int((cdf <= u * cdf[-1]).sum())


def make_rows() -> list[SampleRow]:
    g = torch.Generator().manual_seed(0)
    toks = lambda n: torch.randint(0, V, (n,), generator=g).tolist()  # noqa: E731
    cases = [
        dict(temperature=0),
        dict(temperature=0, presence_penalty=1.5),
        dict(temperature=0.8, frequency_penalty=0.7),
        dict(temperature=1.0, repetition_penalty=1.3),
        dict(temperature=0.7, presence_penalty=-0.5, frequency_penalty=1.1, repetition_penalty=0.8),
        dict(temperature=1.0, logit_bias={5: 100.0, 7: -100.0, 9: 2.5}),
        dict(temperature=0, logit_bias={11: 30.0}),
        dict(temperature=1.2, min_p=0.2),
        dict(temperature=0.9, min_tokens=10, stop_token_ids=[4, 6]),
        dict(temperature=0, min_tokens=10, stop_token_ids=[4]),
        dict(temperature=1.0, min_tokens=10, ignore_eos=True),
        dict(temperature=1.0, top_k=5, min_p=0.05, repetition_penalty=1.2),
        dict(temperature=0.6, top_p=0.8, frequency_penalty=0.4, logit_bias={1: 3.0}),
        dict(temperature=1.0),
    ]
    return [
        SampleRow(SamplingParams(max_tokens=20, seed=i, **kw), torch.Generator().manual_seed(i), toks(7),
                  toks(i % 5 * 2))
        for i, kw in enumerate(cases)
    ]


@pytest.fixture
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(make_rows()), V, generator=g) * 3  # (S, V)


def test_penalties_bias_and_min_tokens_equal_the_reference(logits):
    rows = make_rows()
    got = process(logits, rows, {EOS})
    for i, row in enumerate(rows):
        torch.testing.assert_close(got[i], ref_process(logits[i], row), rtol=1e-6, atol=1e-6)
    assert got[8, EOS] == got[8, 4] == got[8, 6] == float("-inf")  # short of min_tokens
    assert torch.isfinite(got[10, EOS])  # ignore_eos: end-of-sequence is no stop token, nothing to mask


def test_min_p_top_k_top_p_equal_the_reference(logits):
    rows = make_rows()
    rand = [i for i, r in enumerate(rows) if not r.params.greedy]
    processed = process(logits, rows, {EOS})
    got = warp(processed[rand], [rows[i] for i in rand])
    for j, i in enumerate(rand):
        want = ref_warp(ref_process(logits[i], rows[i]), rows[i].params)
        assert torch.equal(torch.isinf(got[j]), torch.isinf(want)), i
        torch.testing.assert_close(got[j].softmax(-1), want.softmax(-1), rtol=1e-5, atol=1e-6)


def test_tokens_equal_the_reference_draw(logits):
    rows = make_rows()
    tokens, _ = sample(logits, rows, torch.Generator().manual_seed(5), {EOS})
    for i, row in enumerate(rows):
        x = ref_process(logits[i], row)
        want = int(x.argmax()) if row.params.greedy else ref_draw(ref_warp(x, row.params), seed=i)
        assert tokens[i] == want, (i, row.params)


def test_a_seeded_row_draws_the_same_in_any_batch(logits):
    rows = make_rows()
    alone = {i: sample(logits[i : i + 1], [make_rows()[i]], torch.Generator())[0][0] for i in range(len(rows))}
    order = list(reversed(range(len(rows))))
    together, _ = sample(logits[order], [rows[i] for i in order], torch.Generator().manual_seed(9))
    assert dict(zip(order, together, strict=True)) == alone


def test_logprobs_stay_the_models_own(logits):
    rows = [SampleRow(SamplingParams(temperature=0, logprobs=3, logit_bias={2: 50.0}, presence_penalty=2), None,
                      [], [2, 2])]
    tokens, lps = sample(logits[:1], rows, torch.Generator())
    raw = logits[0].log_softmax(-1)
    assert lps[0].token_id == tokens[0] and lps[0].logprob == pytest.approx(float(raw[tokens[0]]), abs=1e-6)
    assert [t for t, _ in lps[0].top] == raw.topk(3).indices.tolist()


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0), ("min_p", 1.5),
    ("min_tokens", 50), ("logit_bias", {1: 101.0}), ("prompt_logprobs", 21),
])
def test_out_of_range_parameters_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(max_tokens=20, **{field: value})


def test_token_ids_past_the_vocabulary_are_refused():
    for kw in (dict(stop_token_ids=[V]), dict(logit_bias={V + 3: 1.0})):
        with pytest.raises(ValueError, match=next(iter(kw))):
            SamplingParams(**kw).check_vocab(V)


@pytest.mark.parametrize("levels", [(4,), (4, 16), (16, 128), (1024,)])
def test_top_k_top_p_on_candidates_equals_the_full_sort(monkeypatch, levels):
    """Rows whose kept set closes within a level's candidates take the short path; the rest the full sort."""
    monkeypatch.setattr(lp, "LEVELS", levels)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 500, generator=g) * torch.tensor([0.5, 1, 2, 4, 8, 1, 3, 6])[:, None]  # (S, V)
    logits[7, 10:20] = logits[7].max() + 1  # ten tied best tokens
    top_k = torch.tensor([500, 3, 40, 500, 12, 2, 500, 5])
    top_p = torch.tensor([0.9, 1.0, 0.7, 0.5, 1.0, 0.99, 1.0, 1.0])
    got = lp.apply_top_k_top_p(logits, top_k, top_p)
    want = lp._top_k_top_p_sorted(logits, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    min_p = torch.tensor([0.0, 0.1, 0.0, 0.3, 0.001, 0.0, 0.05, 0.2])
    got = lp.apply_min_p_top_k_top_p(logits, min_p, top_k, top_p)
    want = lp._top_k_top_p_sorted(lp.apply_min_p(logits, min_p), top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got.softmax(-1), want.softmax(-1))
    got = lp.apply_top_k_top_p(logits, top_k, top_p)
    assert torch.equal(got[6], logits[6])  # neither filter on: untouched
    assert torch.isfinite(got[7, 10:20]).all() and torch.isinf(got[7]).sum() == 490  # top_k 5 keeps all ten ties


def test_a_row_with_nothing_to_draw_takes_the_argmax(logits):
    x = logits[:3].clone()
    x[0] = float("-inf")
    x[1, 5] = float("nan")
    rows = [SampleRow(SamplingParams(temperature=1.0, top_p=0.5), None) for _ in range(3)]
    tokens, _ = sample(x, rows, torch.Generator().manual_seed(0))
    assert all(0 <= t < V for t in tokens)


@pytest.mark.parametrize("levels", [(16, 128), (1024,)])
def test_draws_on_candidates_equal_the_reference_draw(monkeypatch, levels):
    """Rows drawn on their candidates read the CDF in the vocabulary's order, as the reference does."""
    monkeypatch.setattr(lp, "LEVELS", levels)
    g = torch.Generator().manual_seed(4)
    cases = [dict(top_p=0.9), dict(top_k=7), dict(min_p=0.1), dict(top_p=0.5, top_k=40, min_p=0.01), dict(),
             dict(top_k=300), dict(top_p=0.99, temperature=2.0)]
    rows = [SampleRow(SamplingParams(seed=i, **{"temperature": 0.8, **kw}), torch.Generator().manual_seed(i))
            for i, kw in enumerate(cases * 3)]
    logits = torch.randn(len(rows), 500, generator=g) * torch.linspace(0.5, 6, len(rows))[:, None]  # (S, V)
    tokens, _ = sample(logits, rows, torch.Generator())
    for i, row in enumerate(rows):
        assert tokens[i] == ref_draw(ref_warp(logits[i], row.params), seed=i), (i, row.params)
