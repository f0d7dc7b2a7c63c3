"""lm-evaluation-harness: a local multiple-choice task through `local-completions` (echo + logprobs against a
live fp32 server) scores exactly as `hf` on the same base directory in fp32: equal accuracy, per-choice
loglikelihoods to 1e-4. The served run is the `lm_eval run --model local-completions` CLI; the reference is
the harness's own `hf` model through simple_evaluate (what the CLI calls), in this process, meanwhile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.api.harness import MODEL, start_server, stop_server

pytest.importorskip("lm_eval")

QUESTIONS = [
    ("The capital of France is", [" Paris", " London", " Rome"], 0),
    ("Two plus two equals", [" five", " four", " seven"], 1),
    ("The opposite of hot is", [" loud", " heavy", " cold"], 2),
    ("Water freezes at zero degrees", [" Celsius", " Kelvin"], 0),
    ("The sun rises in the", [" west", " east", " north", " south"], 1),
    ("A baby cat is called a", [" puppy", " kitten", " calf"], 1),
    ("The largest ocean on Earth is the Pacific Ocean, which lies between Asia and", [" America", " Europe"], 0),
    ("def add(a, b):\n    return a", [" + b", " * b", " - b"], 0),
]
TASK = "loraplex_mc"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""


def cli(tasks: Path, out: Path, model: str, model_args: str) -> subprocess.Popen:
    """`lm_eval run` as a user types it, writing its samples under out."""
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "run", "--model", model, "--model_args", model_args,
           "--tasks", TASK, "--include_path", str(tasks), "--batch_size", "8", "--device", "cpu", "--log_samples",
           "--output_path", str(out)]
    return subprocess.Popen(cmd, env={**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(out / "datasets")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def cli_results(proc: subprocess.Popen, out: Path) -> tuple[float, dict[int, list[float]]]:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results["results"][TASK]["acc,none"], {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in samples}


def in_process(tasks: Path, model: str, model_args: str) -> tuple[float, dict[int, list[float]]]:
    """What the CLI computes, through its own call (simple_evaluate), without a second start-up."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], batch_size=8, device="cpu",
                                  task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    lls = {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in out["samples"][TASK]}
    return out["results"][TASK]["acc,none"], lls


@pytest.fixture(scope="module")
def fp32_server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("lm_eval_server"), "--weights", "fp32", "--max-batch-tokens", "64")
    yield s
    stop_server(s)


def test_local_completions_scores_as_hf(tmp_path, fp32_server, checkpoint, monkeypatch):
    if not Path(sys.executable).with_name("lm_eval").exists():
        pytest.skip("the lm_eval console script is missing")
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "data.json"
    data.write_text(json.dumps([{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]))
    (tasks / f"{TASK}.yaml").write_text(YAML.format(task=TASK, data=data))
    hf_dir = checkpoint.directory
    # the served run is the CLI, as users run it; the hf reference runs meanwhile in this process
    proc = cli(tasks, tmp_path / "served", "local-completions",
               f"model={MODEL},base_url={fp32_server.url}/v1/completions,tokenizer_backend=huggingface,"
               f"tokenizer={hf_dir},tokenized_requests=True,num_concurrent=1,max_retries=1")
    try:
        reference = in_process(tasks, "hf", f"pretrained={hf_dir},dtype=float32")
        served = cli_results(proc, tmp_path / "served")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert served[0] == reference[0]
    assert served[1].keys() == reference[1].keys() == set(range(len(QUESTIONS)))
    for doc, lls in reference[1].items():
        assert served[1][doc] == pytest.approx(lls, abs=1e-4, rel=0), doc
