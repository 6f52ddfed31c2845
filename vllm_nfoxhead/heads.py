"""NFoxHead decoding heads in plain torch (no vLLM import).

Head k reads the base model's final post-norm hidden state h_t and predicts
token t+k+2 (the base LM head predicts t+1):

    r_k    = ResBlock_k,L(... ResBlock_k,1(h_t))        ResBlock(x) = x + SiLU(W x + b)
    logits = W_vocab_k r_k        (own projection)  or  base_lm_head(r_k)  (shared)

This module is used by training, conversion and tests; the vLLM layer reuses
`ResidualStack` and swaps the vocabulary projection for vLLM's parallel head.
"""

from __future__ import annotations

import torch
from torch import nn

from .format import HeadsConfig, head_key


class ResBlock(nn.Module):
    """x + SiLU(W x + b). W starts at zero so a new head starts as the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=True)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class ResidualStack(nn.Module):
    """The residual blocks of every head, applied to one hidden state."""

    def __init__(self, num_heads: int, num_layers: int, hidden_size: int) -> None:
        super().__init__()
        # Separate modules per layer (the reference's `[ResBlock]*n` tied them).
        self.heads = nn.ModuleList(
            nn.Sequential(*(ResBlock(hidden_size) for _ in range(num_layers)))
            for _ in range(num_heads)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [T, H] -> per-head hidden [K, T, H]."""
        return torch.stack([head(hidden) for head in self.heads])

    def load_from(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy `heads.{k}.res.{l}.{weight,bias}` tensors into the blocks."""
        for k, head in enumerate(self.heads):
            for layer_idx, block in enumerate(head):
                for name in ("weight", "bias"):
                    src = tensors[head_key(k, layer_idx, name)]
                    getattr(block.linear, name).data.copy_(src)


class NFoxHeads(nn.Module):
    """All heads of one checkpoint, with their vocabulary projection."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        self.residual = ResidualStack(
            config.num_heads, config.num_layers, config.hidden_size
        )
        self.lm_heads: nn.ModuleList | None = None
        if not config.shared_lm_head:
            self.lm_heads = nn.ModuleList(
                nn.Linear(config.hidden_size, config.vocab_size, bias=False)
                for _ in range(config.num_heads)
            )

    def forward(
        self, hidden: torch.Tensor, base_lm_head: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden [T, H] -> logits [K, T, V].

        `base_lm_head` [V, H] is required when the heads share the base model's
        LM head and ignored otherwise.
        """
        states = self.residual(hidden)  # [K, T, H]
        if self.lm_heads is None:
            if base_lm_head is None:
                raise ValueError("these heads share the base LM head: pass base_lm_head")
            return states @ base_lm_head.T
        return torch.stack([proj(s) for proj, s in zip(self.lm_heads, states)])

    def state_dict_for_format(self) -> dict[str, torch.Tensor]:
        """Tensors under the project's on-disk key names."""
        out: dict[str, torch.Tensor] = {}
        for k, head in enumerate(self.residual.heads):
            for layer_idx, block in enumerate(head):
                out[head_key(k, layer_idx, "weight")] = block.linear.weight
                out[head_key(k, layer_idx, "bias")] = block.linear.bias
            if self.lm_heads is not None:
                out[head_key(k, None, "weight")] = self.lm_heads[k].weight
        return {name: t.detach().contiguous() for name, t in out.items()}

    def load_format_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors read by `format.read_heads_tensors`."""
        self.residual.load_from(tensors)
        if self.lm_heads is not None:
            for k, proj in enumerate(self.lm_heads):
                proj.weight.data.copy_(tensors[head_key(k, None, "weight")])
