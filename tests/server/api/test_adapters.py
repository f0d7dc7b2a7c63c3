"""Adapters over HTTP: named in `model`, listed, loaded and unloaded at run time, only from allowed roots."""

import asyncio
import json
import shutil

import httpx
import pytest

from server.engine.llm_engine import EngineRequest
from server.engine.sampling_params import SamplingParams
from tests.server.api.harness import DEMO_ADAPTERS, MODEL

TASKS = ["sentiment", "arithmetic", "reverse", "json_extract"]


@pytest.fixture(scope="module")
def eval_rows():
    rows = [json.loads(line) for line in (DEMO_ADAPTERS.parent / "eval.jsonl").read_text().splitlines()]
    return {t: [r for r in rows if r["task"] == t][:2] for t in TASKS}


@pytest.fixture(scope="module")
def direct(make_engine):
    engine = make_engine()
    engine.registry.register_dir(DEMO_ADAPTERS)

    def run(prompt: str, adapter: str | None) -> str:
        ids = engine.tokenizer(prompt)["input_ids"]
        engine.add_request(EngineRequest("d", ids, SamplingParams(max_tokens=16, temperature=0), adapter))
        text = ""
        while engine.has_work():
            text += "".join(d.text for d in engine.step())
        return text

    return run


def test_models_lists_adapters_with_rank_and_targets(server):
    cards = {m.id: m for m in server.client().models.list().data}
    for task in TASKS:
        card = cards[task].model_dump()
        assert card["loraplex_kind"] == "adapter" and card["parent"] == MODEL
        assert card["rank"] >= 1 and card["target_modules"]
    assert cards["sentiment"].model_dump()["target_modules"] == ["q_proj", "v_proj"]


def test_several_adapters_concurrently_equal_the_engine(server, direct, eval_rows):
    jobs = [(task, row["prompt"]) for task in TASKS for row in eval_rows[task]]
    jobs.append((MODEL, eval_rows["reverse"][0]["prompt"]))

    async def main():
        client = server.async_client()
        return await asyncio.gather(
            *(client.completions.create(model=m, prompt=p, max_tokens=16, temperature=0) for m, p in jobs)
        )

    answers = asyncio.run(main())
    for (model, prompt), answer in zip(jobs, answers, strict=True):
        assert answer.choices[0].text == direct(prompt, None if model == MODEL else model), model
    # the adapters do their tasks: output and expected answer agree as far as 16 tokens reach
    for (model, _), answer, row in zip(jobs, answers, [r for t in TASKS for r in eval_rows[t]], strict=False):
        text = answer.choices[0].text.strip()
        n = min(len(text), len(row["answer"]))
        assert n > 0 and text[:n] == row["answer"][:n] or model == "arithmetic", (model, text, row["answer"])
    assert server.sample("loraplex_adapter_loads_total") >= len(TASKS)


def post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", json=body, timeout=30)


def test_load_use_and_unload_at_run_time(server, adapter_root):
    shutil.copytree(DEMO_ADAPTERS / "sentiment", adapter_root / "mood")
    r = post(server, "load_lora_adapter", {"lora_name": "mood", "lora_path": str(adapter_root / "mood")})
    assert r.status_code == 200, r.text
    prompt = "Review: The soup was wonderful. Five stars from me.\nSentiment:"
    client = server.client()
    same = client.completions.create(model="sentiment", prompt=prompt, max_tokens=3, temperature=0).choices[0].text
    assert client.completions.create(model="mood", prompt=prompt, max_tokens=3, temperature=0).choices[0].text == same
    assert post(server, "unload_lora_adapter", {"lora_name": "mood"}).status_code == 200
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "mood", "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(server, "unload_lora_adapter", {"lora_name": "mood"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"


@pytest.mark.parametrize("case", ["outside", "dotdot", "symlink"])
def test_loads_outside_the_allowed_roots_are_refused(server, adapter_root, tmp_path, case):
    outside = tmp_path / "evil"
    shutil.copytree(DEMO_ADAPTERS / "sentiment", outside)
    path = {
        "outside": str(outside),
        "dotdot": str(adapter_root / ".." / outside.relative_to(adapter_root.parent)),
        "symlink": str(adapter_root / f"link-{case}"),
    }[case]
    if case == "symlink":
        (adapter_root / f"link-{case}").symlink_to(outside)
    r = post(server, "load_lora_adapter", {"lora_name": f"evil-{case}", "lora_path": path})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["param"] == "lora_path" and r.json()["error"]["type"] == "permission_error"
    assert server.client().completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text is not None


@pytest.mark.parametrize("case", ["pickle", "bad_rank", "name_taken", "base_name"])
def test_bad_adapters_get_400_naming_the_problem(server, adapter_root, case):
    folder = adapter_root / f"bad-{case}"
    shutil.copytree(DEMO_ADAPTERS / "sentiment", folder)
    name, expect = f"bad-{case}", case
    if case == "pickle":
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
        expect = "adapter_model.bin"
    elif case == "bad_rank":
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["r"] = 4096
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        expect = "rank"
    elif case == "name_taken":
        name, expect = "sentiment", "already registered"
    else:
        name, expect = MODEL, "base model"
    r = post(server, "load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
    assert r.status_code == 400, r.text
    assert expect in r.json()["error"]["message"]
    assert server.client().completions.create(model="sentiment", prompt="Hi", max_tokens=2).choices[0].text is not None


def test_unload_lets_running_requests_finish(server, adapter_root):
    shutil.copytree(DEMO_ADAPTERS / "reverse", adapter_root / "busy")
    r = post(server, "load_lora_adapter", {"lora_name": "busy", "lora_path": str(adapter_root / "busy")})
    assert r.status_code == 200
    client = server.client()
    stream = client.completions.create(model="busy", prompt="Reverse: alpha beta gamma\nAnswer:", max_tokens=40,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)
    assert post(server, "unload_lora_adapter", {"lora_name": "busy"}).status_code == 200
    rest = list(chunks)
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
    assert first.choices[0].text is not None
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "busy", "prompt": "x"}, timeout=30)
    assert r.status_code == 404
