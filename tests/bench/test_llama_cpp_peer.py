"""llama.cpp as a peer: the output parsers on captured llama-bench / llama-batched-bench output, the request
mapping (an adapter by the lora field's id), the server command, the rsLoRA alpha; with LORAPLEX_BENCH_PEERS=1
also the real build (slow: minutes of compiling), a short llama-bench run and llama-server applying an adapter."""

import json
import math
import os
from pathlib import Path

import pytest

from bench import llama_cpp_engine as engine
from bench.peers import llama_cpp, validate
from bench.peers.compare import abbreviate
from bench.peers.systems import SERVED_NAME
from bench.serve import Request, Target, fetch_lora_ids

needs_build = pytest.mark.skipif(os.environ.get("LORAPLEX_BENCH_PEERS") != "1",
                                 reason="builds llama.cpp (minutes); set LORAPLEX_BENCH_PEERS=1")

# captured from `llama-bench -m SmolLM2-135M-Instruct.Q4_1-...q8_0.gguf -p 16 -n 4 -t 2 -r 2 -o json` (llama.cpp
# 0c1e570, a busy 2-core machine), fields trimmed
LLAMA_BENCH_JSON = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "backends": "CPU",
    "model_type": "llama 256M Q8_0",
    "model_size": 143025408,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "flash_attn": -1,
    "n_prompt": 16,
    "n_gen": 0,
    "n_depth": 0,
    "test_time": "2026-12-01T10:38:44Z",
    "avg_ns": 589194086,
    "stddev_ns": 160360954,
    "avg_ts": 28.200225,
    "stddev_ts": 7.675255,
    "samples_ns": [
      702586402,
      475801771
    ],
    "samples_ts": [
      22.773,
      33.6274
    ]
  },
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "backends": "CPU",
    "model_type": "llama 256M Q8_0",
    "model_size": 143025408,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "flash_attn": -1,
    "n_prompt": 0,
    "n_gen": 4,
    "n_depth": 0,
    "test_time": "2026-12-01T10:38:46Z",
    "avg_ns": 511234320,
    "stddev_ns": 155972550,
    "avg_ts": 8.206113,
    "stddev_ts": 2.503604,
    "samples_ns": [
      621523566,
      400945075
    ],
    "samples_ts": [
      6.4358,
      9.97643
    ]
  }
]
"""

# captured from `llama-batched-bench -m ...q8_0.gguf -c 1024 -npp 16 -ntg 4 -npl 2,4 -t 2 --output-format jsonl`,
# with a log line around them as when stderr is merged
BATCHED_JSONL = "\n".join([
    "main: n_kv_max = 1024, n_batch = 2048, n_ubatch = 512",
    ('{"n_kv_max": 1024, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0,'
     ' "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 16, "tg": 4, "pl": 2, "n_kv": 40,'
     ' "t_pp": 0.660130, "speed_pp": 48.475300, "t_tg": 1.314970, "speed_tg": 6.083789, "t": 1.975100,'
     ' "speed": 20.252138}'),
    ('{"n_kv_max": 1024, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0,'
     ' "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 16, "tg": 4, "pl": 4, "n_kv": 80,'
     ' "t_pp": 1.145175, "speed_pp": 55.886658, "t_tg": 1.896934, "speed_tg": 8.434664, "t": 3.042109,'
     ' "speed": 26.297546}'),
    "llama_perf_context_print:        load time =      50.00 ms",
])


def test_llama_bench_gives_prefill_rate_and_decode_ms_per_token():
    r = engine.parse_llama_bench(LLAMA_BENCH_JSON)
    assert r["prefill_tokens"] == 16 and r["prefill_tok_per_s"] == pytest.approx(28.200225)
    assert r["decode_tokens"] == 4 and r["decode_tok_per_s"] == pytest.approx(8.206113)
    assert r["decode_ms_per_token"] == pytest.approx(511.234320 / 4)
    assert r["repetitions"] == 2 and r["build_commit"] == "0c1e570" and r["n_threads"] == 2


def test_llama_bench_output_after_log_noise_still_parses():
    r = engine.parse_llama_bench("load_backend: loaded CPU backend\n" + LLAMA_BENCH_JSON)
    assert r["prefill_tok_per_s"] == pytest.approx(28.200225)


def test_batched_bench_rows_keyed_by_sequences_in_parallel():
    r = engine.parse_batched_bench(BATCHED_JSONL)
    assert sorted(r) == [2, 4]
    assert r[2]["decode_tok_per_s"] == pytest.approx(6.083789) and r[4]["decode_tok_per_s"] == pytest.approx(8.434664)
    assert r[4]["generated_tok_per_s_incl_prefill"] == pytest.approx(4 * 4 / 3.042109)
    assert r[4]["prefill_tok_per_s"] == pytest.approx(55.886658) and r[4]["total_s"] == pytest.approx(3.042109)


def test_bench_commands_carry_the_workload():
    build = llama_cpp.Build("0.3.36", "abc", Path("/src"), Path("/bin"))
    single = engine.llama_bench_command(build, Path("m.gguf"), 2)
    assert single[0] == "/bin/llama-bench" and " -p 128 -n 64 -t 2 -o json" in " ".join(single)
    batched = " ".join(engine.batched_bench_command(build, Path("m.gguf"), 2))
    assert "-npp 128 -ntg 64 -npl 16,64 -t 2 --output-format jsonl" in batched
    assert "-c 24576" in batched  # 64 sequences x 2 x (128 + 64): each sequence's share holds its tokens


def test_greedy_agreement_counts_identical_and_leading_tokens():
    a = engine.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]])
    assert a == {"identical": 1, "of": 2, "matching_prefix_tokens": [3, 1]}


def _request(adapter: int) -> Request:
    return Request(0, 0.0, adapter, [11, 12], 2, 8)


def test_target_names_an_adapter_by_its_lora_id_for_llama_server():
    t = Target("http://x", SERVED_NAME, ["synth-0000", "synth-0001"], lora_ids={"synth-0001": 1, "synth-0000": 0,
                                                                               "strong": 2})
    body = t.body(_request(1))
    assert body["lora"] == [{"id": 1, "scale": 1.0}] and body["model"] == "synth-0001"
    base = t.body(_request(-1))
    assert "lora" not in base and base["model"] == SERVED_NAME  # no lora field: every adapter at its load scale, 0


def test_target_without_lora_ids_sends_no_lora_field():
    assert "lora" not in Target("http://x", SERVED_NAME, ["synth-0000"]).body(_request(0))


class _Response:
    def __init__(self, data):
        self.data = data

    def json(self):
        return self.data

    def raise_for_status(self):
        pass


def test_lora_ids_come_from_the_servers_adapter_list_by_file_name(monkeypatch):
    listing = [{"id": 0, "path": "/c/loras/adapters-qv-seed0/synth-0000.gguf", "scale": 0.0},
               {"id": 1, "path": "/c/loras/adapters-validate/strong.gguf", "scale": 0.0}]
    monkeypatch.setattr("httpx.get", lambda url, **kw: _Response(listing) if url.endswith("/lora-adapters") else None)
    assert fetch_lora_ids("http://x") == {"synth-0000": 0, "strong": 1}


def test_validation_outputs_pick_adapters_by_lora_field(monkeypatch):
    sent = []
    monkeypatch.setattr(llama_cpp, "fetch_lora_ids", lambda url: {"synth-0000": 0, "strong": 1})

    def post(url, json, timeout):
        sent.append(json)
        return _Response({"choices": [{"text": f"out{len(sent)}"}]})

    monkeypatch.setattr("httpx.post", post)
    out = llama_cpp.greedy_outputs("http://x")
    assert list(out) == validate.MODELS and all(len(v) == len(validate.PROMPTS) for v in out.values())
    by_model = {b["model"]: b.get("lora") for b in sent}
    assert by_model == {SERVED_NAME: None, "strong": [{"id": 1, "scale": 1.0}],
                        "synth-0000": [{"id": 0, "scale": 1.0}]}


def test_server_command_loads_adapters_unapplied_and_sizes_the_context():
    build = llama_cpp.Build("0.3.36", "abc", Path("/src"), Path("/bin"))
    cmd = llama_cpp.server_command(build, 9000, Path("m.gguf"), [Path("a.gguf"), Path("b.gguf")], parallel=16)
    text = " ".join(cmd)
    assert cmd[0] == "/bin/llama-server" and "--threads 1 --parallel 16" in text
    assert f"--ctx-size {16 * llama_cpp.CTX_PER_SLOT}" in text and f"--alias {SERVED_NAME}" in text
    assert text.endswith("--lora-scaled a.gguf:0,b.gguf:0")  # at scale 0: a request naming none runs the base
    assert "--lora-init-without-apply" not in text  # it keeps scale 1 for requests that name no adapter
    base = " ".join(llama_cpp.server_command(build, 9000, Path("m.gguf"), [], parallel=4))
    assert "--lora" not in base  # the base alone is measured with no adapter loaded


def test_adapter_paths_with_separators_are_refused():
    build = llama_cpp.Build("0.3.36", "abc", Path("/src"), Path("/bin"))
    with pytest.raises(ValueError):
        llama_cpp.server_command(build, 9000, Path("m.gguf"), [Path("/a:b/x.gguf")], parallel=1)


def test_server_command_is_abbreviated_in_results():
    build = llama_cpp.Build("0.3.36", "abc", Path("/src"), Path("/bin"))
    cmd = llama_cpp.server_command(build, 9000, Path("m.gguf"), [Path(f"{i}.gguf") for i in range(100)], 16)
    short = abbreviate(cmd)
    assert short.endswith("--lora-scaled 0.gguf:0,... (100 entries, DIR/NAME.gguf:0)")


@pytest.mark.parametrize(("rslora", "alpha"), [(False, 16.0), (True, 16.0 * math.sqrt(64))])
def test_staged_adapter_keeps_peft_scale_under_llama_cpps_alpha_over_rank(tmp_path, rslora, alpha):
    src = tmp_path / "src" / "synth-0007"
    src.mkdir(parents=True)
    (src / "adapter_config.json").write_text(json.dumps({"r": 64, "lora_alpha": 16.0, "use_rslora": rslora}))
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    staged = llama_cpp._stage_adapter(src, tmp_path / "stage")
    assert json.loads((staged / "adapter_config.json").read_text())["lora_alpha"] == pytest.approx(alpha)
    assert (staged / "adapter_model.safetensors").read_bytes() == b"weights"  # linked, not rewritten
    assert llama_cpp.lora_path(src).name == "synth-0007.gguf" and llama_cpp.lora_path(src).parent.name == "src"


def test_llama_server_is_a_comparison_system():
    from bench.peers.compare import SYSTEMS

    assert "llama-server" in SYSTEMS and llama_cpp.SERVE_ARGS == ("--lora-field",)


@needs_build
def test_built_llama_bench_runs_and_parses():
    build = llama_cpp.ensure_built()
    model = llama_cpp.convert_model("q4_1")
    out, _, _ = engine._run([str(build.binary("llama-bench")), "-m", str(model), "-p", "16", "-n", "4", "-t", "2",
                             "-r", "1", "-o", "json"])
    r = engine.parse_llama_bench(out)
    assert r["prefill_tok_per_s"] > 0 and r["decode_ms_per_token"] > 0


@needs_build
def test_llama_server_applies_an_adapter_per_request_and_none_to_the_base(tmp_path):
    from bench.peers import process

    outputs = {}
    for n in (0, 1):
        server = llama_cpp.start(process.free_port(), n, tmp_path / f"llama-server-{n}.log", kind="q4_1", parallel=2)
        try:
            outputs[n] = llama_cpp.greedy_outputs(server.url, validate.MODELS if n else [SERVED_NAME])
        finally:
            process.stop(server)
    assert validate.check(outputs[1])["adapters_change_output"]
    assert outputs[1][SERVED_NAME] == outputs[0][SERVED_NAME]  # a loaded adapter leaves the base requests alone
