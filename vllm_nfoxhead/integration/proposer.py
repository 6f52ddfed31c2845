"""NFoxHeadProposer: vLLM's `custom_class` speculative proposer for NFoxHead heads.

vLLM builds it in the model runner (`create_custom_proposer(vllm_config)`),
calls `load_model(target_model)` once weights are loaded, and calls `propose`
after each step's bookkeeping. The runner patch (patches.patch_model_runner)
hands it the step's hidden states first, since vLLM's call does not.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ..drafting import ChainDrafter, Drafter
from ..format import validate_heads_dir
from .options import NFoxHeadOptions

logger = logging.getLogger("vllm_nfoxhead")


class NFoxHeadProposer:
    """Drafts tokens from the target's last hidden state with NFoxHead heads."""

    def __init__(self, vllm_config: Any) -> None:
        from .patches import patch_model_runner

        spec = vllm_config.speculative_config
        self.options = NFoxHeadOptions.from_additional_config(vllm_config.additional_config)
        self.heads_config = validate_heads_dir(self.options.heads_dir)
        self.num_speculative_tokens: int = spec.num_speculative_tokens
        self.max_model_len: int = vllm_config.model_config.max_model_len
        self.dtype: torch.dtype = vllm_config.model_config.dtype
        self.drafter: Drafter = ChainDrafter(self.num_speculative_tokens)
        self.heads: nn.Module | None = None
        # Set by the runner patch before each `propose`: [B, H] and which rows draft.
        self._hidden: torch.Tensor | None = None
        self._has_token: list[bool] = []
        patch_model_runner()

    def load_model(self, target_model: nn.Module) -> None:
        from .heads_vllm import VllmNFoxHeads

        device = next(target_model.parameters()).device
        heads = VllmNFoxHeads(self.heads_config, target_model, self.dtype).to(device)
        heads.load_weights(self.options.heads_dir)
        self.heads = heads.eval()
        logger.info(
            "NFoxHead: %d heads from %s (%s LM head), drafting a chain of %d",
            self.heads_config.num_heads, self.options.heads_dir,
            "shared" if self.heads_config.shared_lm_head else "own",
            self.num_speculative_tokens,
        )

    def set_step_hidden_states(
        self,
        sample_hidden_states: torch.Tensor,
        sampled_token_ids: list[list[int]],
        spec_decode_metadata: Any,
    ) -> None:
        """Pick each request's hidden state at its last accepted token.

        sample_hidden_states [num_logit_rows, H] holds, per request, one row per
        drafted token plus one (or a single row when nothing was drafted).
        """
        if sample_hidden_states.shape[0] == len(sampled_token_ids):
            rows = list(range(len(sampled_token_ids)))
        else:
            rows, offset = [], 0
            for num_draft, tokens in zip(spec_decode_metadata.num_draft_tokens, sampled_token_ids):
                rows.append(offset + max(len(tokens) - 1, 0))
                offset += num_draft + 1
        index = torch.tensor(rows, device=sample_hidden_states.device)
        self._hidden = sample_hidden_states.index_select(0, index)  # [B, H]
        self._has_token = [len(t) > 0 for t in sampled_token_ids]

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: np.ndarray,
        token_ids_cpu: np.ndarray,
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        """Draft tokens per request; [] for requests that produced no token."""
        hidden, self._hidden = self._hidden, None
        if hidden is None or self.heads is None or not any(self._has_token):
            return [[] for _ in sampled_token_ids]
        logits = self.heads.logits(hidden, self.drafter.num_heads_used)  # [K, B, V]
        drafts = self.drafter.draft(logits).tolist()  # [B, N]
        out: list[list[int]] = []
        for i, draft in enumerate(drafts):
            room = self.max_model_len - int(num_tokens_no_spec[i])
            out.append(draft[: max(room, 0)] if self._has_token[i] else [])
        return out
