"""Training NFoxHead heads: prompt sets, self-distillation through vLLM (datagen), head
training (train, trainer) and the draft vocabulary (draft_vocab)."""
