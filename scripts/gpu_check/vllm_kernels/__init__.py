"""vLLM's Triton unified-attention kernel without vLLM (see README.md here).

    from vllm_kernels.triton_unified_attention import unified_attention

with scripts/gpu_check/ on sys.path. Only this package's own modules and the
real torch/triton are imported; nothing named `vllm`.
"""
