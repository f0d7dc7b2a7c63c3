"""Kernels: Triton for GPUs, torch twins for CPUs and as the reference; `kernels.ops` dispatches."""
