"""Turning head logits into draft tokens (no vLLM import).

A drafter maps per-head logits [K, B, V] to a token tensor per request. The
chain takes the top-1 of each head; a tree (tree.TreeDrafter) takes the top-k
of each head and arranges them by rank paths, through the same interface.

Token-conditioned heads (heads.py) cannot be run all at once: head k needs the
tokens drafted by heads 0..k-1. For them a drafter calls a `HeadStep` head by
head (`draft_conditioned`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

# step(k, rows, context) -> logits [M, V]: head k for M candidates, where
# rows [M] int64 picks each candidate's request (its hidden state) and
# context [M, k+1] int64 holds the tokens t+1..t+k+1 it conditions on.
HeadStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


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

    def draft_conditioned(self, step: HeadStep, first: torch.Tensor, num_tokens: int | None = None,
                          vocab: torch.Tensor | None = None) -> torch.Tensor:
        """first [B] int64 (the sampled token t+1) -> draft tokens [B, n], one head at a time.

        vocab [V'] int64: token id of each logit column when `step` scores a draft vocabulary.
        """
        context = first.view(-1, 1)  # [B, 1]
        rows = torch.arange(len(first), device=first.device)
        for k in range(num_tokens or self.num_heads_used):
            token = step(k, rows, context).argmax(dim=-1)  # [B]
            token = token if vocab is None else vocab[token]
            context = torch.cat([context, token.view(-1, 1)], dim=1)
        return context[:, 1:].contiguous()

