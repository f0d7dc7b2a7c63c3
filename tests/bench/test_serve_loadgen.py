"""bench/serve.py: the workload's statistics, its determinism, the latency/SLO report, and one short real run."""

import json
import math

import numpy as np
import pytest

from bench.serve import (
    Record,
    Workload,
    build_workload,
    gamma_intervals,
    main,
    percentiles,
    summarize,
    zipf_probs,
)


def workload(**kw) -> Workload:
    args = dict(n_adapters=100, alpha=1.0, rate=4.0, cv=1.0, num_requests=200, prompt_len=(16, 64),
                output_len=(8, 32), seed=0)
    return Workload(**(args | kw))


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_zipf_probabilities_follow_the_power_law(alpha):
    p = zipf_probs(50, alpha)
    assert p.sum() == pytest.approx(1.0)
    assert np.all(np.diff(p) < 0)
    assert p[0] / p[1] == pytest.approx(2**alpha)
    assert p[0] / p[9] == pytest.approx(10**alpha)


def test_adapter_draws_match_zipf_popularity():
    reqs = build_workload(workload(num_requests=40_000, alpha=1.0))
    counts = np.bincount([r.adapter for r in reqs], minlength=100) / len(reqs)
    expected = zipf_probs(100, 1.0)
    assert np.abs(counts - expected).max() < 0.01
    assert counts[0] == pytest.approx(expected[0], rel=0.05)  # the head: ~19% of the traffic at n = 100


def test_skew_free_alpha_is_nearly_uniform():
    reqs = build_workload(workload(num_requests=20_000, alpha=0.1))
    counts = np.bincount([r.adapter for r in reqs], minlength=100)
    assert counts.max() / counts.min() < 2.5  # 100 ** 0.1 = 1.58 between head and tail, plus sampling noise


@pytest.mark.parametrize("rate,cv", [(2.0, 1.0), (10.0, 0.5), (0.5, 2.0)])
def test_gamma_intervals_have_the_asked_mean_and_cv(rate, cv):
    gaps = gamma_intervals(np.random.default_rng(1), 100_000, rate, cv)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.03)


def test_arrivals_start_at_zero_and_never_go_back():
    arrivals = [r.arrival for r in build_workload(workload(num_requests=500))]
    assert arrivals[0] == 0.0
    assert all(b >= a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert arrivals[-1] / 499 == pytest.approx(1 / 4.0, rel=0.15)  # mean gap 1 / rate


def test_infinite_rate_sends_everything_at_once():
    assert {r.arrival for r in build_workload(workload(rate=math.inf))} == {0.0}


def test_same_seed_same_workload_other_seed_other_workload():
    a, b, c = build_workload(workload()), build_workload(workload()), build_workload(workload(seed=1))
    assert a == b
    assert [r.adapter for r in a] != [r.adapter for r in c]
    assert [r.prompt for r in a] != [r.prompt for r in c]


def test_lengths_stay_in_their_inclusive_ranges():
    reqs = build_workload(workload(num_requests=2000, prompt_len=(3, 5), output_len=(7, 7)))
    assert {r.prompt_len for r in reqs} == {3, 4, 5}
    assert all(len(r.prompt) == r.prompt_len for r in reqs)
    assert {r.output_len for r in reqs} == {7}


def test_base_model_only_when_no_adapters():
    assert {r.adapter for r in build_workload(workload(n_adapters=0))} == {-1}


def test_trace_rows_are_cycled(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps({"prompt": "Hello there", "output_len": 5}) + "\n"
                     + json.dumps({"prompt_len": 12, "output_len": 9}) + "\n")
    reqs = build_workload(workload(num_requests=4, trace=str(trace)))
    assert [r.output_len for r in reqs] == [5, 9, 5, 9]
    assert reqs[0].prompt == "Hello there" and reqs[0].prompt_len == -1
    assert len(reqs[1].prompt) == 12


@pytest.mark.parametrize("bad", [dict(rate=0), dict(cv=0), dict(alpha=-1), dict(prompt_len=(5, 4)),
                                 dict(output_len=(0, 3)), dict(num_requests=0)])
def test_bad_workloads_are_refused(bad):
    with pytest.raises(ValueError):
        workload(**bad)


def test_percentiles_interpolate_like_numpy():
    p = percentiles([float(x) for x in range(1, 101)])
    assert p == {"p50": 50.5, "p90": pytest.approx(90.1), "p99": pytest.approx(99.01), "mean": 50.5}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def test_summary_counts_throughput_latency_and_slo():
    ok = [Record(i, 0, 10, 11, ttft=0.1 * (i + 1), e2e=0.1 * (i + 1) + 1.0, tokens=11) for i in range(8)]
    failed = [Record(8, 1, 10, 11, error="http_503"), Record(9, 1, 10, 11, error="timeout")]
    s = summarize(ok + failed, duration=4.0, slo_ttft=0.5)
    assert (s["sent"], s["completed"], s["errors"]) == (10, 8, 2)
    assert s["error_kinds"] == {"http_503": 1, "timeout": 1}
    assert s["req_per_s"] == 2.0 and s["output_tok_per_s"] == 22.0
    assert s["tpot_s"]["p50"] == pytest.approx(0.1)  # 1 s over the 10 tokens after the first
    assert s["ttft_s"]["p50"] == pytest.approx(0.45)
    assert s["slo_attainment"] == pytest.approx(5 / 10)  # TTFT 0.1 ... 0.5 meet it; failures count as misses
    assert s["completion_rate"] == pytest.approx(7 / 0.7)  # 8 completions 0.1 s apart
    assert s["arrival_rate"] == 0.0  # every request left at 0


def test_tpot_needs_two_tokens():
    assert Record(0, 0, 1, 1, ttft=0.2, e2e=0.2, tokens=1).tpot is None
    assert Record(0, 0, 1, 3, ttft=0.2, e2e=0.6, tokens=3).tpot == pytest.approx(0.2)


@pytest.mark.slow
def test_a_short_real_run_against_loraplex(tmp_path):
    from tests.server.api.harness import REPO, start_server, stop_server

    server = start_server(tmp_path, "--adapter-dir", str(REPO / "server/adapters/demo/adapters"))
    try:
        out = tmp_path / "result.json"
        main(["run", "--url", server.url, "--label", "loraplex", "--n", "2", "--rate", "inf", "--num-requests", "6",
              "--prompt-len", "8,16", "--output-len", "4,8", "--no-progress", "--out", str(out)])
    finally:
        stop_server(server)
    result = json.loads(out.read_text())
    s = result["summary"]
    assert (s["sent"], s["completed"], s["errors"]) == (6, 6, 0)
    assert s["output_tokens"] == s["output_tokens_asked"]  # ignore_eos honoured: every output ran to max_tokens
    assert all(r["ttft"] <= r["e2e"] for r in result["requests"])
    assert result["distinct_adapters"] >= 1
    assert s["ttft_s"]["p99"] is not None and 0 <= s["slo_attainment"] <= 1
