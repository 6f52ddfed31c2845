"""Checkpoint converters: Medusa-family heads from other tools -> the NFoxHead head format.

Entry point: `python -m conversion.to_vllm` (see docs/conversion.md). This package
is pure torch/safetensors and never imports vLLM, so conversion runs on any box.

Layout:
- `checkpoint.py`   lazy tensor access to safetensors / torch pickles (+ index JSON)
- `base_model.py`   the base model's config and, on demand, its LM head
- `result.py`       the common in-memory result every family reader produces
- `families/`       one reader per input family, plus auto-detection
- `vllm_medusa.py`  writer (and evaluator) for vLLM 0.32's built-in Medusa format
- `verify.py`       logits comparison of original vs converted heads
- `output.py`       staged, all-or-nothing publishing of the output directories
- `to_vllm.py`      the command line
"""
