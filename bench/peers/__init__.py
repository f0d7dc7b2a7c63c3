"""Peer servers for the serving benchmark (vLLM's CPU build, a plain transformers + PEFT server) and its driver."""
