"""The serving core: head format, heads, trees, acceptance, drafting, prompt lookup, KV
compaction, load policy and tuner. Imports no vLLM, so all of it is tested in milliseconds."""
