"""Maintenance commands (no vLLM import): python -m vllm_nfoxhead.tools.<name>."""
