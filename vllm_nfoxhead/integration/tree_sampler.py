"""Tree verification in vLLM's sampling step, and the KV compaction after it.

`TreeRejectionSampler` replaces the runner's `rejection_sampler`. It first runs
vLLM's own sampler for the whole batch (chains, logprobs, penalties stay
exactly vLLM's), then re-decides the rows of requests whose drafts branch:
walk from the root, at each node take the target's token (argmax when greedy,
a sample from the temperature/top-k/top-p distribution otherwise) and move into
the child drafted with that token, else stop and emit it. Siblings hold
distinct tokens, so this is plain sampling: lossless at any temperature.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .cpu_tree_attention import layout_for, split_cache
from .tree_step import TreeRequest, TreeStep, current_step

_SAMPLING_EPS = 1e-5  # vLLM's threshold below which a temperature means greedy


def walk_tree(parents: list[int], tokens: list[int], choose: Callable[[int], int]) -> tuple[list[int], int]:
    """Accepted node path and the token emitted after it.

    `choose(row)` gives the target's token at a row (0 = root, j+1 = node j).
    """
    children: dict[int, dict[int, int]] = {}
    for node, (parent, token) in enumerate(zip(parents, tokens)):
        children.setdefault(parent, {}).setdefault(token, node)
    path: list[int] = []
    current = -1
    while True:
        token = choose(current + 1)
        child = children.get(current, {}).get(token)
        if child is None:
            return path, token
        path.append(child)
        current = child


def row_chooser(logits: torch.Tensor, index: int, sampling_metadata: Any) -> Callable[[int], int]:
    """How request `index` turns a logits row [V] into a token."""
    temperature = sampling_metadata.temperature
    t = 0.0 if sampling_metadata.all_greedy or temperature is None else float(temperature[index])
    if t < _SAMPLING_EPS:
        return lambda row: int(logits[row].argmax())
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    top_k = sampling_metadata.top_k
    top_p = sampling_metadata.top_p
    k = top_k[index : index + 1].expand(logits.shape[0]) if top_k is not None else None
    p = top_p[index : index + 1].expand(logits.shape[0]) if top_p is not None else None
    probs = apply_top_k_top_p(logits / t, k, p).softmax(dim=-1)  # [n+1, V]
    generator = sampling_metadata.generators.get(index)
    return lambda row: int(torch.multinomial(probs[row], 1, generator=generator))


class TreeRejectionSampler:
    """Drop-in for vLLM's RejectionSampler (same call), adding tree verification."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # the runner reads a few attributes
        return getattr(self.inner, name)

    def __call__(self, metadata: Any, draft_probs: Any, logits: torch.Tensor,
                 sampling_metadata: Any) -> Any:
        step = current_step()
        if step is None or not step.requests:
            return self.inner(metadata, draft_probs, logits, sampling_metadata)
        rows = {req.batch_index: self._rows(req, metadata, logits) for req in step.requests}
        out = self.inner(metadata, draft_probs, logits, sampling_metadata)
        tokens = out.sampled_token_ids  # [B, max_spec + 1], -1 = rejected
        drafts = metadata.draft_token_ids.tolist()
        cu = metadata.cu_num_draft_tokens.tolist()
        for req in step.requests:
            i = req.batch_index
            n = req.num_rows - 1
            req_drafts = drafts[cu[i] - n : cu[i]]
            choose = row_chooser(rows[i], i, sampling_metadata)
            path, bonus = walk_tree(req.parents, req_drafts, choose)
            req.accepted = path
            tokens[i].fill_(-1)
            tokens[i, : len(path)] = torch.tensor([req_drafts[j] for j in path], dtype=tokens.dtype)
            tokens[i, len(path)] = bonus
        compact_kv(step)
        return out

    @staticmethod
    def _rows(req: TreeRequest, metadata: Any, logits: torch.Tensor) -> torch.Tensor:
        """The request's logits rows [n+1, V] (root first), copied before vLLM edits them in place."""
        last = int(metadata.bonus_logits_indices[req.batch_index])
        return logits[last - (req.num_rows - 1) : last + 1].float().clone()


def compact_kv(step: TreeStep) -> None:
    """Move each accepted node's K/V to the slot of its position (ctx + depth).

    The scheduler then treats the first `a` drafted positions as accepted, and
    the cache holds exactly the accepted path there. All reads happen before
    any write, per layer, so overlapping sources and destinations are safe.
    """
    from vllm import _custom_ops as ops

    src_rows, dst_rows = [], []
    for req in step.requests:
        for j, node in enumerate(req.accepted):
            if node != j:
                src_rows.append(req.start + 1 + node)
                dst_rows.append(req.start + 1 + j)
    if not src_rows or step.slot_mapping is None:
        return
    src = step.slot_mapping[torch.tensor(src_rows)].long()
    dst = step.slot_mapping[torch.tensor(dst_rows)].long()
    for layer, impl, kv_cache in step.layers.values():
        key_cache, value_cache = split_cache(kv_cache)
        num_blocks, num_kv_heads, block_size, two_d = kv_cache.shape
        layout = layout_for(block_size, two_d // 2, kv_cache.dtype, layer.isa)
        keys = layout.read(key_cache, src, "key")
        values = layout.read(value_cache, src, "value")
        ops.cpu_attn_reshape_and_cache(
            keys, values, key_cache, value_cache, dst, layer.isa,
            k_scale=layer._k_scale_float, v_scale=layer._v_scale_float,
            kv_cache_dtype=impl.kv_cache_dtype,
        )
