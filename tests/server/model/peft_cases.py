"""The PEFT adapters the LoRA parity tests build, and PEFT's greedy reference."""

import torch

ADAPTERS = {  # name -> LoraConfig kwargs: different ranks, targets, scalings
    "qv8": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "all4rs": dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
    "mlp16": dict(r=16, lora_alpha=8, target_modules=["gate_proj", "down_proj", "o_proj"]),
}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "Hi"]
N = 12


def peft_greedy(model, ids: list[int], adapter: str | None) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False,
            adapter_names=[adapter or "__base__"],
        )
    return out[0, len(ids) :].tolist()
