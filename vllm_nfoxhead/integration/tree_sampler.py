"""Tree verification in vLLM's sampling step, and the KV compaction after it.

`TreeRejectionSampler` replaces the runner's `rejection_sampler`. It first runs
vLLM's own sampler for the whole batch (chains, logprobs, penalties stay
exactly vLLM's), then re-decides the rows of requests whose drafts branch:
the core acceptance rules (acceptance.py) walk the tree with the target's
argmax (greedy) or with samples of its temperature/top-k/top-p distribution
(exact tree sampling, lossless at any temperature). With the opt-in
`acceptance: "typical"`, sampled tree requests use Medusa's typical acceptance
instead: faster, NOT lossless.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..acceptance import Acceptance, accept_greedy, accept_sampling, accept_typical
from ..kv_compaction import compaction_pairs
from .cpu_kv_layout import split_cache
from .cpu_tree_attention import layout_for
from .options import NFoxHeadOptions
from .tree_step import TreeRequest, TreeStep, current_step

_SAMPLING_EPS = 1e-5  # vLLM's threshold below which a temperature means greedy


def target_probs(logits: torch.Tensor, index: int, sampling_metadata: Any) -> torch.Tensor | None:
    """Request `index`'s sampling distribution per row [n+1, V]; None when it is greedy."""
    temperature = sampling_metadata.temperature
    t = 0.0 if sampling_metadata.all_greedy or temperature is None else float(temperature[index])
    if t < _SAMPLING_EPS:
        return None
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    rows = logits.shape[0]
    top_k, top_p = sampling_metadata.top_k, sampling_metadata.top_p
    k = top_k[index : index + 1].expand(rows) if top_k is not None else None
    p = top_p[index : index + 1].expand(rows) if top_p is not None else None
    return apply_top_k_top_p(logits / t, k, p).softmax(dim=-1)


def verify(req: TreeRequest, drafts: list[int], logits: torch.Tensor, index: int,
           sampling_metadata: Any, options: NFoxHeadOptions) -> Acceptance:
    """Run the core acceptance rule on one request (nodes beyond n disabled)."""
    n, total = req.num_nodes, req.buffers.num_nodes
    tokens = torch.full((1, total), -1, dtype=torch.long)
    tokens[0, :n] = torch.tensor(drafts)
    rows = torch.zeros(total + 1, logits.shape[1], dtype=logits.dtype)
    rows[: n + 1] = logits  # rows of disabled nodes are never read
    probs = target_probs(rows, index, sampling_metadata)
    if probs is None:
        return accept_greedy(req.buffers, tokens, rows[None])
    if options.acceptance == "typical":  # lossy, opt-in (documented as such)
        return accept_typical(req.buffers, tokens, probs[None],
                              threshold=options.posterior_threshold, alpha=options.posterior_alpha)
    generator = sampling_metadata.generators.get(index)
    return accept_sampling(req.buffers, tokens, probs[None], generator=generator)


class TreeRejectionSampler:
    """Drop-in for vLLM's RejectionSampler (same call), adding tree verification."""

    def __init__(self, inner: Any, options: NFoxHeadOptions) -> None:
        self.inner = inner
        self.options = options

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
            i, n = req.batch_index, req.num_nodes
            result = verify(req, drafts[cu[i] - n : cu[i]], rows[i], i, sampling_metadata, self.options)
            emitted = result.tokens[0]  # accepted tokens, bonus, -1 padding
            req.accepted = result.accepted_nodes[0, : int(result.num_accepted[0])].tolist()
            tokens[i].fill_(-1)
            tokens[i, : emitted.shape[0]] = emitted.to(tokens.dtype)
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
    from vllm.platforms import current_platform

    if step.slot_mapping is None:
        return
    device = step.slot_mapping.device  # CUDA on GPU: the accepted indices must join it there
    pairs = [
        compaction_pairs(step.slot_mapping[req.start + 1 : req.start + req.num_rows][None],
                         torch.tensor([req.accepted], dtype=torch.long, device=device))
        for req in step.requests if req.accepted
    ]
    if not pairs:
        return
    src, dst = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    if src.numel() == 0:
        return
    if current_platform.is_cpu():
        compact_kv_cpu(step, src, dst)
    else:
        compact_kv_triton(step, src, dst)


def distinct_caches(step: TreeStep) -> Iterator[tuple[Any, Any, torch.Tensor]]:
    """(layer, impl, kv_cache) per distinct cache: layers sharing one cache move it once."""
    seen: set[int] = set()
    for layer, impl, kv_cache in step.layers.values():
        if kv_cache.data_ptr() not in seen:
            seen.add(kv_cache.data_ptr())
            yield layer, impl, kv_cache


def compact_kv_cpu(step: TreeStep, src: torch.Tensor, dst: torch.Tensor) -> None:
    """CPU backend: read through the probed layout, write with vLLM's own cache op."""
    from vllm import _custom_ops as ops

    for layer, impl, kv_cache in distinct_caches(step):
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


def compact_kv_triton(step: TreeStep, src: torch.Tensor, dst: torch.Tensor) -> None:
    """Triton backend: each distinct [num_blocks, H_kv, block_size, 2*D] cache once."""
    from .triton_tree_attention import compact_kv_paged

    for _layer, _impl, kv_cache in distinct_caches(step):
        compact_kv_paged(kv_cache, src, dst, kv_cache.shape[2])
