"""Side-by-side benchmark: plain vLLM, vLLM's ngram and Medusa, NFoxHead chain and trees.

Run `python -m vllm_nfoxhead.tools.bench --help`.
"""
