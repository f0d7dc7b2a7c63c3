"""Train the validation adapters (bench/adapter_tools/validation_tasks.py): PEFT, CPU, fixed seeds, generated data.

    OMP_NUM_THREADS=1 python -m bench.adapter_tools.train_validation --threads 1

Writes bench/validation/adapters/<task>/ (adapter_config.json, fp16 adapter_model.safetensors, loraplex.json),
eval.jsonl (held-out prompts per task, seed 1000), composite.jsonl (two-adapter chains, seed 3000) and
prints each adapter's held-out accuracy through PEFT. Held-out and composite prompts are rejected from
training and from the router examples. Routers are never tuned on this set: bench/router_eval.py reports it.
"""

import argparse
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.adapter_tools.train_demo import accuracy, generate, stream, train, unique_examples
from bench.adapter_tools.validation_tasks import BY_NAME, CHAINS, TASKS

OUT = Path(__file__).resolve().parents[1] / "validation"


def composites(n_per_chain: int, seed: int) -> list[dict]:
    rows, rng = [], random.Random(seed)
    for (first, second), (make, final) in CHAINS.items():
        seen = set()
        while len(seen) < n_per_chain:
            (prompt, answer), template = make(rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            rows.append({"tasks": [first, second], "prompt": prompt, "answer1": answer, "template": template,
                         "answer": final(answer)})
    return rows


def to_fp16(path: Path) -> None:
    tensors = {k: v.half().contiguous() for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    path.chmod(0o644)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=30, help="held-out prompts per task")
    p.add_argument("--composite-n", type=int, default=20, help="composite prompts per chain")
    p.add_argument("--examples", type=int, default=10, help="example prompts per adapter in loraplex.json")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--eval-only", action="store_true", help="score the adapters already in --out (no training)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from server.config import default_cache_dir
    from server.model.loader import resolve_checkpoint

    t_start = time.perf_counter()
    ckpt = resolve_checkpoint(None, default_cache_dir())
    tokenizer = ckpt.tokenizer
    held_out = {t.name: unique_examples(t, args.seed + 1000, args.eval_n) for t in TASKS}
    chains = composites(args.composite_n, args.seed + 3000)
    exclude = {t.name: {p for p, _ in held_out[t.name]} for t in TASKS}
    for row in chains:
        exclude[row["tasks"][0]].add(row["prompt"])
        exclude[row["tasks"][1]].add(row["template"].format(prev=row["answer1"]))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "eval.jsonl").open("w") as f:
        for name, examples in held_out.items():
            for prompt, answer in examples:
                f.write(json.dumps({"task": name, "prompt": prompt, "answer": answer}) + "\n")
    (args.out / "composite.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chains))

    results = {}
    for name in args.tasks.split(","):
        task = BY_NAME[name]
        t0 = time.perf_counter()
        folder = args.out / "adapters" / name
        losses, train_s = [], None
        if not args.eval_only:
            print(f"training {name}: {task.lora} steps={task.steps} lr={task.lr}", flush=True)
            model, losses = train(task, ckpt.directory, tokenizer, stream(task, args.seed, exclude[name]), args.seed)
            model.save_pretrained(folder, safe_serialization=True)
            (folder / "README.md").unlink(missing_ok=True)
            to_fp16(folder / "adapter_model.safetensors")
            train_s = time.perf_counter() - t0
            del model
        examples = [pr for pr, _ in unique_examples(task, args.seed + 2000, args.examples, exclude[name])]
        meta = {"task": name, "description": task.description, "examples": examples,
                "max_tokens": task.max_new_tokens}
        (folder / "loraplex.json").write_text(json.dumps(meta, indent=2) + "\n")
        prompts, answers = zip(*held_out[name], strict=True)
        tuned = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(ckpt.directory, dtype=torch.float32), folder).eval()
        acc = accuracy(generate(tuned, tokenizer, list(prompts), task.max_new_tokens), list(answers))
        results[name] = dict(lora=task.lora, steps=task.steps, adapter=acc,
                             mb=(folder / "adapter_model.safetensors").stat().st_size / 2**20)
        if losses:
            results[name].update(first_loss=sum(losses[:10]) / 10, last_loss=sum(losses[-10:]) / 10, train_s=train_s)
        print(f"{name}: {results[name]}", flush=True)

    total = time.perf_counter() - t_start
    print(f"\nheld-out accuracy through PEFT (greedy, exact match, {args.eval_n} prompts per task); "
          f"total {total:.0f}s with {torch.get_num_threads()} threads\n")
    print("| adapter | rank | targets | layers | steps | loss first->last 10 | held-out | train s | MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    log = args.out / "training.json"  # a --tasks subset run updates its adapters' entries
    previous = json.loads(log.read_text())["adapters"] if log.is_file() else {}
    results = {n: previous.get(n, {}) | results.get(n, {}) for n in {**previous, **results}}
    for name, r in sorted(results.items(), key=lambda kv: [t.name for t in TASKS].index(kv[0])):
        lora, layers = r["lora"], r["lora"].get("layers_to_transform")
        span = f"{layers[0]}-{layers[-1]}" if layers else "all"
        print(f"| {name} | {lora['r']}{' (rslora)' if lora.get('use_rslora') else ''} | "
              f"{', '.join(lora['target_modules'])} | {span} | {r['steps']} | {r['first_loss']:.2f} -> "
              f"{r['last_loss']:.3f} | {r['adapter']:.0%} | {r['train_s']:.0f} | {r['mb']:.2f} |")
    log.write_text(json.dumps(
        {"command": "OMP_NUM_THREADS=1 python -m bench.adapter_tools.train_validation --threads 1",
         "measured_under_load": True, "threads": torch.get_num_threads(), "adapters": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
