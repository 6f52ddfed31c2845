"""Commands for measuring and maintaining the plugin: python -m vllm_nfoxhead.tools.<name>.

bench (interleaved speed runs through vLLM's public `LLM` API), verify_cost (cost
table of verifying N tokens), tree_builder (best tree for measured accuracies),
vllm_api_check (the plugin against each supported vLLM wheel's sources),
triton_interpret (vLLM's Triton helpers under Triton's interpreter).
"""
