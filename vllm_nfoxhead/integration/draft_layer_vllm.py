"""The draft layer (core/draft_layer.py) next to a loaded vLLM target model.

The layer itself is small and replicated on every tensor-parallel rank: each
rank holds the same hidden states and tokens, so each computes the same
drafts. Token embeddings come from the target's own embedding layer, and the
vocabulary projection is the target's LM head restricted to the draft
vocabulary (a ParallelLMHead of V' rows, as heads_vllm does for heads), or
the target's full `compute_logits` for a layer without a draft vocabulary.
Drafting runs the layer's serving form (`ServedLayer`) with vLLM's own GEMM
for each fused projection (integration/vllm_linear.py).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_nfoxhead.core.draft_layer import DraftLayer, load_layer
from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, HeadsConfig, read_heads_tensors
from vllm_nfoxhead.core.served_layer import ServedLayer
from vllm_nfoxhead.integration.heads_vllm import load_projection, vocab_rows
from vllm_nfoxhead.integration.vllm_linear import vllm_gemm


class VllmDraftLayer(nn.Module):
    """Draft layer + draft-vocabulary projection, on the target's device and dtype."""

    def __init__(self, config: HeadsConfig, target_model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        from vllm.model_executor.layers.logits_processor import LogitsProcessor
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        self.config = config
        self.target_model = [target_model]  # a list: not registered as a submodule
        self.layer = DraftLayer(config.hidden_size, config.layer_spec)
        self.draft_head: nn.Module | None = None
        if config.draft_vocab_size:
            self.draft_head = ParallelLMHead(config.draft_vocab_size, config.hidden_size, params_dtype=dtype,
                                             prefix="nfoxhead.draft_layer_head")
            self.draft_logits = LogitsProcessor(config.draft_vocab_size)
        self.register_buffer("draft_vocab", None, persistent=False)  # [V'] int64 on the device
        self.served: ServedLayer | None = None  # built by load_weights
        self.to(dtype)

    def load_weights(self, heads_dir: str) -> None:
        """Load a validated draft-layer directory; call after moving to the target device."""
        tensors = read_heads_tensors(heads_dir, self.config)
        param = next(self.layer.parameters())
        load_layer(self.layer, {k: v.to(param.device) for k, v in tensors.items()})
        if self.draft_head is not None:
            ids = tensors[DRAFT_VOCAB_KEY].to(param.device)
            self.draft_vocab = ids
            with torch.no_grad():
                rows = vocab_rows(self.target_model[0].lm_head, ids, param.dtype)  # [V', H]
            load_projection(self.draft_head, rows)
        self.served = ServedLayer(self.layer, vllm_gemm)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [M] -> the target's input embeddings [M, H]."""
        return self.target_model[0].embed_input_ids(ids)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """Layer outputs [M, H] -> logits [M, V'] (or [M, V] without a draft vocabulary)."""
        if self.draft_head is None:
            return self.target_model[0].compute_logits(g)
        return self.draft_logits(self.draft_head, g)

    @torch.inference_mode()
    def entries(self, hidden: torch.Tensor, next_ids: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [n, H] at accepted positions (the final states), next_ids [n] their next
        tokens, aux [n, (P - 1) * H] the states after the layer's feature layers (None
        without them) -> entries z [n, H]."""
        parts = hidden if aux is None else torch.cat([aux.to(hidden.dtype), hidden], dim=-1)
        return self.served.entry(self.served.features(parts), self.embed(next_ids).to(hidden.dtype))
