"""Tree verification in vLLM's sampling step, and the KV compaction after it.

`TreeRejectionSampler` replaces the runner's `rejection_sampler`. It first runs
vLLM's own sampler for the whole batch (chains, logprobs, penalties stay
exactly vLLM's), then re-decides the rows of requests whose drafts branch with
the core rules (tree_verify.py): the target's argmax (greedy) or exact tree
sampling from its temperature/top-k/top-p distribution (lossless at any
temperature). With the opt-in `acceptance: "typical"`, sampled tree requests use
Medusa's typical acceptance instead: faster, NOT lossless.

Everything runs on the logits' device, batched over the step's tree requests:
only the emitted token ids (written into vLLM's output in place) and the
accepted node indices (for the KV compaction and the next draft) reach the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from vllm_nfoxhead.core.acceptance import Acceptance, accept_greedy_ids
from vllm_nfoxhead.core.kv_compaction import compaction_pairs
from vllm_nfoxhead.core.tree import TreeBuffers
from vllm_nfoxhead.core.tree_verify import GREEDY_EPS, TopKTopP, top_k_top_p, verify_trees
from vllm_nfoxhead.integration.cpu_kv_layout import split_cache
from vllm_nfoxhead.integration.cpu_tree_attention import cache_layout
from vllm_nfoxhead.integration.options import NFoxHeadOptions
from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep, current_step


@dataclass
class TreeBatch:
    """Tree requests of one step that share a tree and are all greedy or all sampled,
    gathered before vLLM's sampler runs (it edits logits in place).

    B requests, N nodes, V vocabulary, all tensors on the logits' device.
    """

    requests: list[TreeRequest]
    buffers: TreeBuffers         # of the shared tree, on the device
    batch_index: torch.Tensor    # [B] int64: the requests' rows in the sampler's output
    draft_tokens: torch.Tensor   # [B, N] int64, -1 = node not scheduled this step
    greedy: bool
    target: torch.Tensor         # greedy: argmax ids [B, N+1] int64; sampled: logits [B, N+1, V] float32


def group_requests(requests: list[TreeRequest], greedy: list[bool]) -> list[list[TreeRequest]]:
    """Requests drafting the same tree (same buffers) with the same greedy flag, first-seen order."""
    groups: dict[tuple[int, bool], list[TreeRequest]] = {}
    for req in requests:
        groups.setdefault((id(req.buffers), greedy[req.batch_index]), []).append(req)
    return list(groups.values())


def greedy_flags(sampling_metadata: Any, batch_size: int) -> list[bool]:
    """Per request of the step whether it decodes greedily (one small host read)."""
    temperature = sampling_metadata.temperature
    if sampling_metadata.all_greedy or temperature is None:
        return [True] * batch_size
    return (temperature[:batch_size] < GREEDY_EPS).tolist()


def gather_batches(step: TreeStep, metadata: Any, logits: torch.Tensor,
                   sampling_metadata: Any) -> list[TreeBatch]:
    """The step's tree requests as TreeBatches. Greedy rows keep only their argmax,
    taken over the whole step's logits in one pass; sampled rows are copied."""
    greedy = greedy_flags(sampling_metadata, len(metadata.num_draft_tokens))
    argmax = logits.argmax(dim=-1) if any(greedy[r.batch_index] for r in step.requests) else None
    return [gather_batch(reqs, metadata, logits if not greedy[reqs[0].batch_index] else None, argmax)
            for reqs in group_requests(step.requests, greedy)]


def gather_batch(reqs: list[TreeRequest], metadata: Any, logits: torch.Tensor | None,
                 argmax: torch.Tensor | None) -> TreeBatch:
    """Index the requests' rows and drafts on the device (index lists built on the host).

    The step's logits [num_draft_tokens + batch, V] hold per request its drafted
    rows then its bonus row (vLLM's layout); metadata.num_draft_tokens is the
    host-side count. Rows of nodes beyond a request's n repeat its last row and
    are never read. Pass `logits` for sampled requests, else the step's `argmax`.
    """
    source = logits if logits is not None else argmax  # [rows, V] or [rows]
    device = source.device
    counts = list(metadata.num_draft_tokens)
    row_start = [0]
    for c in counts:
        row_start.append(row_start[-1] + c + 1)
    total = reqs[0].buffers.num_nodes
    rows, drafts, valid = [], [], []
    for req in reqs:
        i, n = req.batch_index, req.num_nodes
        first = row_start[i + 1] - 1 - n  # the request's root row (its first verification row)
        rows += [first + min(j, n) for j in range(total + 1)]
        drafts += [row_start[i] - i + min(j, n - 1) for j in range(total)]  # drafts before i: row_start[i] - i
        valid += [j < n for j in range(total)]
    shape = (len(reqs), total)
    draft_ids = metadata.draft_token_ids.index_select(0, _ids(drafts, device)).long().view(shape)
    mask = torch.tensor(valid, dtype=torch.bool, device=device).view(shape)
    target = source.index_select(0, _ids(rows, device))
    return TreeBatch(
        requests=reqs,
        buffers=reqs[0].buffers_on(device),
        batch_index=_ids([r.batch_index for r in reqs], device),
        draft_tokens=draft_ids.masked_fill(~mask, -1),
        greedy=logits is None,
        target=target.view(len(reqs), total + 1) if logits is None else
        target.float().view(len(reqs), total + 1, -1),
    )


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def verify_batch(batch: TreeBatch, sampling_metadata: Any, options: NFoxHeadOptions,
                 mask: TopKTopP = top_k_top_p) -> Acceptance:
    """Run the acceptance rule on a gathered batch with its requests' sampling settings."""
    if batch.greedy:
        return accept_greedy_ids(batch.buffers, batch.draft_tokens, batch.target)
    index = batch.batch_index
    top_k, top_p = sampling_metadata.top_k, sampling_metadata.top_p
    return verify_trees(
        batch.buffers, batch.draft_tokens, batch.target, sampling_metadata.temperature.index_select(0, index),
        top_k=None if top_k is None else top_k.index_select(0, index),
        top_p=None if top_p is None else top_p.index_select(0, index),
        generators=[sampling_metadata.generators.get(r.batch_index) for r in batch.requests],
        mode=options.acceptance, posterior_threshold=options.posterior_threshold,
        posterior_alpha=options.posterior_alpha, mask=mask)


def vllm_top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    """vLLM's own top-k/top-p op (its CUDA kernel on GPUs), so tree targets equal its sampler's."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    return apply_top_k_top_p(logits, k, p)


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
        batches = gather_batches(step, metadata, logits, sampling_metadata)
        out = self.inner(metadata, draft_probs, logits, sampling_metadata)
        tokens = out.sampled_token_ids  # [B, max_spec + 1], -1 = rejected
        for batch in batches:
            result = verify_batch(batch, sampling_metadata, self.options, vllm_top_k_top_p)
            write_tokens(tokens, batch.batch_index, result.tokens)
            paths = torch.cat([result.num_accepted[:, None], result.accepted_nodes], dim=1).tolist()
            for req, (num, *path) in zip(batch.requests, paths):
                req.accepted = path[:num]
        compact_kv(step)
        return out


def write_tokens(tokens: torch.Tensor, batch_index: torch.Tensor, emitted: torch.Tensor) -> None:
    """In place on the device: rows `batch_index` [B] of tokens [R, W] become emitted [B, D+1]
    (accepted tokens, bonus, -1 padding), -1 beyond. Columns past W are -1 by construction."""
    width = min(emitted.shape[1], tokens.shape[1])
    rows = torch.full((batch_index.shape[0], tokens.shape[1]), -1, dtype=tokens.dtype, device=tokens.device)
    rows[:, :width] = emitted[:, :width].to(tokens.dtype)
    tokens.index_copy_(0, batch_index.to(tokens.device), rows)


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
    src, dst = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])  # [M] int64 slots each
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
        key_cache, value_cache = split_cache(kv_cache)  # [num_blocks, H_kv, block_size, D] each
        layout = cache_layout(kv_cache, layer.isa)
        keys = layout.read(key_cache, src, "key")  # [M, H_kv, D]
        values = layout.read(value_cache, src, "value")
        ops.cpu_attn_reshape_and_cache(
            keys, values, key_cache, value_cache, dst, layer.isa,
            k_scale=layer._k_scale_float, v_scale=layer._v_scale_float,
            kv_cache_dtype=impl.kv_cache_dtype,
        )


def compact_kv_triton(step: TreeStep, src: torch.Tensor, dst: torch.Tensor) -> None:
    """Triton backend: each distinct [num_blocks, H_kv, block_size, 2*D] cache once."""
    from vllm_nfoxhead.integration.triton_tree_attention import compact_kv_paged

    for _layer, _impl, kv_cache in distinct_caches(step):
        compact_kv_paged(kv_cache, src, dst, kv_cache.shape[2])
