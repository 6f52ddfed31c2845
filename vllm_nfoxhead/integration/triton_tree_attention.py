"""Tree attention for vLLM's Triton backend (GPU), on top of its own kernel.

Same design as the CPU path (cpu_tree_attention.py): vLLM's kernel runs as
usual and computes tree rows as if the nodes were a causal chain; afterwards
the rows of every tree request are recomputed here. The recomputation is ONE
more call of vLLM's own `unified_attention` per distinct tree mask, over just
the tree requests, with the tree as `qq_bias` (an additive [Q, Q] bias on the
query-vs-query part of the scores: 0 = visible, -inf = hidden). Prefix keys
(before the root) get no bias, and causal masking still applies, which is
harmless: a node's ancestors always precede it in buffer order.

KV cache layout (vLLM 0.32 `TritonAttentionImpl.forward`): `kv_cache` is the
logical [num_blocks, num_kv_heads, block_size, 2 * head_size] tensor (its
physical strides may be NHD or HND); the backend views it as
`kv_cache.transpose(1, 2).split(head_size, -1)`, i.e. key and value caches of
[num_blocks, block_size, num_kv_heads, head_size]. Slot s lives in block
s // block_size at offset s % block_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep, refuse_unsupported

# Rows of zeros appended below the tree bias. The kernel computes the bias row
# pointer of every row of a query block (BLOCK_Q rows, at most 32 in vLLM
# 0.32) before masking rows past the sequence's query length, so without
# padding the last block would read past the [n+1, n+1] tensor.
_BIAS_PAD_ROWS = 32


def tree_bias(mask: torch.Tensor) -> torch.Tensor:
    """[n+1, n+1] bool (True = row may attend column) -> float32 contiguous additive bias.

    0.0 where attention is allowed, -inf where it is not; same device as `mask`.
    """
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"tree mask must be square [n+1, n+1], got {tuple(mask.shape)}")
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(~mask.bool(), float("-inf")).contiguous()


def kernel_bias(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The bias as the kernel reads it: [n+1 + pad, n+1] float32 on `device`, pad rows 0.

    `unified_attention` only takes the pointer and stride(0) (= n+1, which is
    also how many keys it biases), so the extra rows are never part of a result.
    """
    bias = tree_bias(mask.cpu())  # [n+1, n+1]
    pad = torch.zeros(_BIAS_PAD_ROWS, bias.shape[1], dtype=torch.float32)
    return torch.cat([bias, pad]).to(device)


def check_supported(impl: Any, attn_metadata: Any, output_scale: torch.Tensor | None = None) -> None:
    """Refuse features whose masking the tree recomputation would not reproduce."""
    from vllm.v1.kv_cache_interface import is_quantized_kv_cache  # 0.32 and 0.33 (torch_utils: 0.32 only)

    kv_dtype = str(getattr(impl, "kv_cache_dtype", "auto"))
    refuse_unsupported((
        ("sliding window", getattr(impl, "sliding_window", None) not in (None, -1, (-1, -1))),
        ("restricted sliding window (R-SWA)", getattr(attn_metadata, "rswa_window", None) is not None),
        ("ALiBi", getattr(impl, "alibi_slopes", None) is not None),
        ("logit soft-capping", bool(getattr(impl, "logits_soft_cap", None))),
        ("attention sinks", getattr(impl, "sinks", None) is not None),
        (f"quantized KV cache ({kv_dtype})", is_quantized_kv_cache(kv_dtype)),
        ("fused output quantization", output_scale is not None),
    ), "on the Triton attention backend")


def is_decoder_self_attention(impl: Any) -> bool:
    """Only decoder self-attention sees the tree; encoder and cross-attention are left alone."""
    return getattr(impl, "attn_type", "decoder") == "decoder"  # AttentionType is a str enum


def paged_kv(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[num_blocks, H_kv, block_size, 2*D] -> key, value views [num_blocks, block_size, H_kv, D]."""
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


@dataclass
class TreeGroup:
    """Kernel inputs for the tree requests of one step that share a mask (G requests, R rows)."""

    rows: torch.Tensor  # [R] int64: query rows in the step's batch, request after request
    cu_seqlens_q: torch.Tensor  # [G+1] int32: 0, n+1, 2(n+1), ...
    seqused_k: torch.Tensor  # [G] int32: ctx + n + 1 (prefix, root and nodes)
    block_table: torch.Tensor  # [G, max_blocks] int32: the requests' rows of the batch block table
    max_seqlen_q: int
    max_seqlen_k: int
    bias: torch.Tensor  # [n+1 + pad, n+1] float32, see kernel_bias


def group_by_mask(requests: list[TreeRequest]) -> list[list[TreeRequest]]:
    """Requests with equal masks (same n and same ancestor pattern), first-seen order."""
    groups: dict[tuple[int, bytes], list[TreeRequest]] = {}
    for req in requests:
        key = (req.num_rows, req.mask.cpu().numpy().tobytes())
        groups.setdefault(key, []).append(req)
    return list(groups.values())


def build_group(reqs: list[TreeRequest], block_table: torch.Tensor) -> TreeGroup:
    """Kernel inputs for one mask group, built on the CPU and copied to the block table's device."""
    device = block_table.device
    rows_per_req = reqs[0].num_rows
    rows = torch.cat([torch.arange(r.start, r.start + rows_per_req) for r in reqs])
    cu = torch.arange(len(reqs) + 1, dtype=torch.int32) * rows_per_req
    seq_lens = [r.ctx + rows_per_req for r in reqs]
    batch_index = torch.tensor([r.batch_index for r in reqs], dtype=torch.long, device=device)
    return TreeGroup(
        rows=rows.to(device),
        cu_seqlens_q=cu.to(device),
        seqused_k=torch.tensor(seq_lens, dtype=torch.int32).to(device),
        block_table=block_table.index_select(0, batch_index),
        max_seqlen_q=rows_per_req,
        max_seqlen_k=max(seq_lens),
        bias=kernel_bias(reqs[0].mask, device),
    )


# The groups are the same for every layer of a step (per attention metadata):
# built at the first layer, reused by the others.
_cached: tuple[TreeStep, Any, list[TreeGroup]] | None = None


def step_groups(step: TreeStep, attn_metadata: Any) -> list[TreeGroup]:
    """This step's mask groups for `attn_metadata`, built once per (step, metadata)."""
    global _cached
    if _cached is not None and _cached[0] is step and _cached[1] is attn_metadata:
        return _cached[2]
    groups = [build_group(reqs, attn_metadata.block_table) for reqs in group_by_mask(step.requests)]
    _cached = (step, attn_metadata, groups)
    return groups


def group_attention(impl: Any, layer: Any, group: TreeGroup, query: torch.Tensor,
                    key_cache: torch.Tensor, value_cache: torch.Tensor,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """Tree attention of one group's rows with vLLM's kernel: [R, H_q, D] in `out_dtype`.

    The nodes' K/V were written to the paged cache before the backend's
    forward ran, so keys 0..ctx+n of each request are all read from the cache.
    """
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention

    q = query.index_select(0, group.rows)  # [R, H_q, D], contiguous
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    descale_shape = (group.seqused_k.shape[0], key_cache.shape[2])  # [G, H_kv], as the backend does
    unified_attention(
        q=q, k=key_cache, v=value_cache, out=out,
        cu_seqlens_q=group.cu_seqlens_q, max_seqlen_q=group.max_seqlen_q,
        seqused_k=group.seqused_k, max_seqlen_k=group.max_seqlen_k,
        softmax_scale=impl.scale, causal=True, window_size=(-1, -1),
        block_table=group.block_table, softcap=0,
        q_descale=None,
        k_descale=layer._k_scale.expand(descale_shape),
        v_descale=layer._v_scale.expand(descale_shape),
        qq_bias=group.bias,
        use_td=bool(getattr(impl, "use_td", False)),
    )  # no 3D-softmax buffers: the 2D kernel, as for any batch with max_seqlen_q > 1
    return out


def fix_tree_rows_triton(impl: Any, layer: Any, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: Any,
                         output: torch.Tensor, step: TreeStep,
                         output_scale: torch.Tensor | None = None) -> None:
    """Overwrite the kernel's output for every tree request of this step (in place).

    query  [T, H_q, D]   the layer's queries (key/value are unused: already in the cache)
    output [T, H_q, D]   TritonAttentionImpl.forward's result; only tree rows change
    Also records what the KV compaction after sampling needs (slot mapping, caches).
    """
    if not is_decoder_self_attention(impl):
        return
    check_supported(impl, attn_metadata, output_scale)
    step.slot_mapping = attn_metadata.slot_mapping
    if getattr(impl, "kv_sharing_target_layer_name", None) is None:
        # A layer sharing another layer's cache must not compact it a second time.
        step.layers[id(layer)] = (layer, impl, kv_cache)
    key_cache, value_cache = paged_kv(kv_cache, impl.head_size)
    flat_out = output.view(output.shape[0], -1)  # [T, H_q * D]
    for group in step_groups(step, attn_metadata):
        result = group_attention(impl, layer, group, query, key_cache, value_cache, output.dtype)
        flat_out[group.rows] = result.view(result.shape[0], -1)


def compact_kv_paged(kv_cache: torch.Tensor, src_slots: torch.Tensor, dst_slots: torch.Tensor,
                     block_size: int) -> None:
    """In place: the K/V entry of slot dst[i] becomes that of slot src[i], for all heads.

    kv_cache  [num_blocks, H_kv, block_size, 2*D]  the Triton backend's logical
              layout (any strides; K and V move together, as do any inline scales)
    src_slots, dst_slots  [M] int  slot = block * block_size + offset; dsts distinct
    Every source is read (copied out) before any write, so a slot may be both a
    source and a destination. Plain torch indexing: works on any device.
    """
    if kv_cache.dim() != 4 or kv_cache.shape[2] != block_size:
        raise ValueError(f"expected a [num_blocks, H_kv, {block_size}, 2*D] KV cache, "
                         f"got {tuple(kv_cache.shape)}")
    if src_slots.numel() == 0:
        return
    src = src_slots.to(kv_cache.device, torch.long)
    dst = dst_slots.to(kv_cache.device, torch.long)
    moved = kv_cache[src // block_size, :, src % block_size]  # [M, H_kv, 2*D], a copy
    kv_cache[dst // block_size, :, dst % block_size] = moved
