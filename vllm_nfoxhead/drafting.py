"""Turning head logits into draft tokens (no vLLM import).

A drafter maps per-head logits [K, B, V] to a token tensor per request. The
chain takes the top-1 of each head; a tree (later) takes the top-k of each head
and arranges them by rank paths, through the same interface.
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


class PathTreeDrafter:
    """Tree of rank paths (`[[0], [0, 0], [1], ...]`, Medusa's notation), node order
    sorted by (depth, path) so every parent comes before its children.

    Node j at depth d with last rank r drafts topk(head d-1)[r]. `parents[j]` is the
    node index of its parent (-1 for the root, the token the model just sampled).
    """

    def __init__(self, paths: list[list[int]]) -> None:
        self.paths = sorted((list(p) for p in paths), key=lambda p: (len(p), p))
        index = {tuple(p): j for j, p in enumerate(self.paths)}
        self.parents = [index[tuple(p[:-1])] if len(p) > 1 else -1 for p in self.paths]
        self.num_heads_used = max(len(p) for p in self.paths)
        self.topk = max(max(p) for p in self.paths) + 1
        self._depth = torch.tensor([len(p) - 1 for p in self.paths])  # head of each node
        self._rank = torch.tensor([p[-1] for p in self.paths])

    def draft(self, head_logits: torch.Tensor) -> torch.Tensor:
        # [K, B, V] -> top-k ids [K, B, topk] -> node tokens [B, N]
        top = head_logits[: self.num_heads_used].topk(self.topk, dim=-1).indices
        depth, rank = self._depth.to(top.device), self._rank.to(top.device)
        return top[depth, :, rank].T.contiguous()
