"""Train the demo LoRA adapters on the default base (PEFT, CPU, fixed seeds, generated data) and score them.

    python -m bench.adapter_tools.train_demo --out server/adapters/demo/adapters --threads 1

Writes <out>/<task>/{adapter_config.json, adapter_model.safetensors, loraplex.json}, the held-out set
eval.jsonl (its own seed; rejected from training and from the examples), then evaluates every adapter
greedily on its held-out prompts against the base model and prints a markdown table.
"""

import argparse
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.adapter_tools.demo_tasks import TASKS, Example, Task

DEMO = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo"  # the weights ship with the server
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
BATCH = 8
EVAL_BATCH = 25
WARMUP = 10


def unique_examples(task: Task, seed: int, n: int, exclude: set[str] = frozenset()) -> list[Example]:
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        prompt, answer = task.make(rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


def stream(task: Task, seed: int, exclude: set[str]) -> Iterator[Example]:
    rng = random.Random(seed)
    while True:
        example = task.make(rng)
        if example[0] not in exclude:
            yield example


def collate(tokenizer, examples: list[Example]):
    """Right-padded ids (B, T) and, for the answer tokens + EOS only, the positions that predict them."""
    rows, rows_idx, pos_idx, targets = [], [], [], []
    for row, (prompt, answer) in enumerate(examples):
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        a = tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(p + a)
        rows_idx += [row] * len(a)
        pos_idx += range(len(p) - 1, len(p) + len(a) - 1)
        targets += a
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.eos_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask, torch.tensor(rows_idx), torch.tensor(pos_idx), torch.tensor(targets)


def train(task: Task, base_dir: Path, tokenizer, data: Iterator[Example], seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **task.lora))
    model.peft_config["default"].base_model_name_or_path = BASE_NAME  # not this machine's cache path
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=task.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP) * max(0.1, 1 - s / task.steps))
    causal_lm = model.base_model.model
    losses = []
    model.train()
    for step in range(task.steps):
        ids, mask, rows, pos, targets = collate(tokenizer, [next(data) for _ in range(BATCH)])
        hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        logits = causal_lm.lm_head(hidden[rows, pos])  # only where an answer token is predicted: (N, V)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == task.steps - 1:
            print(f"  {task.name} step {step:3d} loss {sum(losses[-10:]) / len(losses[-10:]):.3f}", flush=True)
    return model, losses


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations, cut at EOS or the first newline."""
    tokenizer.padding_side = "left"
    outs = []
    for i in range(0, len(prompts), EVAL_BATCH):
        enc = tokenizer(prompts[i : i + EVAL_BATCH], return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        for row in gen[:, enc.input_ids.shape[1] :]:
            outs.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return outs


def accuracy(outputs: list[str], answers: list[str]) -> float:
    return sum(o == a for o, a in zip(outputs, answers, strict=True)) / len(answers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEMO / "adapters")
    p.add_argument("--eval-out", type=Path, default=DEMO / "eval.jsonl")
    p.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-n", type=int, default=50, help="held-out prompts per task")
    p.add_argument("--examples", type=int, default=10, help="example prompts per adapter in loraplex.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from server.config import default_cache_dir
    from server.model.loader import resolve_checkpoint

    t_start = time.perf_counter()
    ckpt = resolve_checkpoint(args.model, default_cache_dir())
    tokenizer = ckpt.tokenizer
    tasks = [t for t in TASKS if t.name in args.tasks.split(",")]

    held_out = {t.name: unique_examples(t, args.seed + 1000, args.eval_n) for t in TASKS}
    args.eval_out.parent.mkdir(parents=True, exist_ok=True)
    with args.eval_out.open("w") as f:
        for name, examples in held_out.items():
            for prompt, answer in examples:
                f.write(json.dumps({"task": name, "prompt": prompt, "answer": answer}) + "\n")

    base = AutoModelForCausalLM.from_pretrained(ckpt.directory, dtype=torch.float32).eval()
    results = {}
    for task in tasks:
        prompts, answers = zip(*held_out[task.name], strict=True)
        exclude = set(prompts)
        t0 = time.perf_counter()
        print(f"training {task.name}: {task.lora} steps={task.steps} lr={task.lr}", flush=True)
        model, losses = train(task, ckpt.directory, tokenizer, stream(task, args.seed, exclude), args.seed)
        folder = args.out / task.name
        model.save_pretrained(folder, safe_serialization=True)
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
        (folder / "adapter_model.safetensors").chmod(0o644)  # PEFT writes it owner-only
        examples = [pr for pr, _ in unique_examples(task, args.seed + 2000, args.examples, exclude)]
        meta = {"task": task.name, "description": task.description, "examples": examples,
                "max_tokens": task.max_new_tokens}
        (folder / "loraplex.json").write_text(json.dumps(meta, indent=2) + "\n")
        train_s = time.perf_counter() - t0
        del model

        tuned = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(ckpt.directory, dtype=torch.float32), folder).eval()
        adapter_acc = accuracy(generate(tuned, tokenizer, list(prompts), task.max_new_tokens), list(answers))
        base_out = generate(base, tokenizer, list(prompts), task.max_new_tokens)
        results[task.name] = dict(task=task, base=accuracy(base_out, list(answers)), adapter=adapter_acc,
                                  first_loss=sum(losses[:10]) / 10, last_loss=sum(losses[-10:]) / 10,
                                  train_s=train_s, mb=(folder / "adapter_model.safetensors").stat().st_size / 2**20)
        r = results[task.name]
        print(f"{task.name}: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, base {r['base']:.0%}, "
              f"adapter {r['adapter']:.0%}, trained in {train_s:.0f}s, {r['mb']:.1f} MiB", flush=True)

    print(f"\nheld-out accuracy (greedy, exact match, {args.eval_n} prompts per task); "
          f"total {time.perf_counter() - t_start:.0f}s with {torch.get_num_threads()} threads\n")
    print("| adapter | rank | targets | layers | steps | loss first->last 10 | base | adapter | train s | MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        lora = r["task"].lora
        layers = lora.get("layers_to_transform")
        span = f"{layers[0]}-{layers[-1]}" if layers else "all"
        print(f"| {name} | {lora['r']}{' (rslora)' if lora.get('use_rslora') else ''} | "
              f"{', '.join(lora['target_modules'])} | {span} | {r['task'].steps} | {r['first_loss']:.2f} -> "
              f"{r['last_loss']:.3f} | {r['base']:.0%} | {r['adapter']:.0%} | {r['train_s']:.0f} | {r['mb']:.2f} |")


if __name__ == "__main__":
    main()
