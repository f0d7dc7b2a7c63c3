"""Sizes the kernels accept, as plain constants: config checks them without importing torch."""

# lora.c's MAX_RANK: a row's shrink output y[MAX_RANK] lives on the C kernel's stack.
MAX_LORA_RANK = 256
