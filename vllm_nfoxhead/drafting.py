"""Turning head logits into draft tokens (no vLLM import).

A drafter maps per-head logits [K, B, V] to a token tensor per request. The
chain takes the top-1 of each head; a tree (tree.TreeDrafter) takes the top-k
of each head and arranges them by rank paths, through the same interface.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Drafter(Protocol):
    """What the proposer needs from a drafting strategy."""

    num_heads_used: int

    def draft(self, head_logits: torch.Tensor) -> torch.Tensor:
        """head_logits [K, B, V] -> draft tokens [B, N] (int64)."""
        ...


class ChainDrafter:
    """Top-1 of heads 0..n-1: the token chain t+2, t+3, ... after the sampled token."""

    def __init__(self, num_tokens: int) -> None:
        self.num_heads_used = num_tokens

    def draft(self, head_logits: torch.Tensor) -> torch.Tensor:
        # [K, B, V] -> [K, B] -> [B, K]
        return head_logits[: self.num_heads_used].argmax(dim=-1).T.contiguous()

