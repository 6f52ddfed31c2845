"""Tree attention for vLLM's CPU backend, on top of its own kernel.

The CPU kernel (`cpu_attention_with_kv_cache`) takes no mask, so it computes
tree rows as if the nodes were a causal chain. After it runs, the rows of each
tree request are recomputed here with SDPA: every node attends to the whole
prefix (read back from the paged cache) and to the root, its ancestors and
itself. Other rows are the kernel's own results, untouched.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from vllm_nfoxhead.integration.cpu_kv_layout import KVLayout, probe_layout
from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep, refuse_unsupported


@functools.lru_cache(maxsize=16)
def layout_for(block_size: int, head_size: int, dtype: torch.dtype, isa: str) -> KVLayout:
    """The probed layout of CPU caches of this kind (probed once per kind), or a RuntimeError."""
    layout = probe_layout(block_size, head_size, dtype, isa)
    if layout is None:
        raise RuntimeError(
            f"NFoxHead: cannot read vLLM's CPU KV cache layout (isa={isa}, dtype={dtype}); "
            "tree verification is unavailable here. Fix: drop 'tree' to use chain drafting."
        )
    return layout


def cache_layout(kv_cache: torch.Tensor, isa: str) -> KVLayout:
    """The layout of one [num_blocks, H_kv, block_size, 2*D] CPU cache written for `isa`."""
    _num_blocks, _num_kv_heads, block_size, two_d = kv_cache.shape
    return layout_for(block_size, two_d // 2, kv_cache.dtype, isa)


def check_supported(impl: Any) -> None:
    """Refuse features whose masking the tree recomputation would not reproduce."""
    refuse_unsupported((
        ("sliding window", getattr(impl, "sliding_window", -1) not in (None, -1, (-1, -1))),
        ("ALiBi", getattr(impl, "alibi_slopes", None) is not None),
        ("logit soft-capping", bool(getattr(impl, "logits_soft_cap", None))),
        ("attention sinks", getattr(impl, "sinks", None) is not None),
        ("quantized KV cache", getattr(impl, "kv_cache_dtype", "auto") != "auto"),
    ), "on CPU")


def tree_rows_attention(impl: Any, layout: KVLayout, req: TreeRequest, query: torch.Tensor,
                        kv_cache: torch.Tensor, block_row: torch.Tensor) -> torch.Tensor:
    """Attention output of one tree request's rows: [n+1, H_q * D].

    vLLM writes this step's keys and values into the paged cache before attention
    runs (`do_kv_cache_update`), so the prefix and the tree nodes are read back
    together, at positions 0..ctx+n. The product is spelled out in float32 with
    the query heads of each KV head stacked (GQA), which on CPU is about twice as
    fast as SDPA with a mask for these few rows.
    """
    q = query[req.start: req.start + req.num_rows]  # [R, H_q, D], R = n+1
    k_t, v = layout.read_head_major(kv_cache, block_row, req.ctx + req.num_rows)  # [H_kv, D, T], [H_kv, T, D]
    rows, heads_q, dim = q.shape
    heads_kv = k_t.shape[0]
    group = heads_q // heads_kv
    qg = q.view(rows, heads_kv, group, dim).permute(1, 2, 0, 3).reshape(heads_kv, group * rows, dim)
    scores = torch.baddbmm(req.additive_mask(group, q.device), qg.float(), k_t.float(),
                           alpha=impl.scale)  # [H_kv, g*R, T]
    out = torch.bmm(scores.softmax(-1), v.float())  # [H_kv, g*R, D]
    return out.view(heads_kv, group, rows, dim).permute(2, 0, 1, 3).reshape(rows, heads_q * dim)


def fix_tree_rows(impl: Any, layer: Any, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: Any,
                  output: torch.Tensor, step: TreeStep) -> None:
    """Overwrite the kernel's output for every tree request of this step (in place)."""
    check_supported(impl)
    layout = cache_layout(kv_cache, layer.isa)
    step.slot_mapping = attn_metadata.slot_mapping
    step.layers[id(layer)] = (layer, impl, kv_cache)
    flat_out = output.view(output.shape[0], -1)  # [T, H_q * D]
    for req in step.requests:
        block_row = attn_metadata.block_table[req.batch_index]  # [max_blocks] int32
        result = tree_rows_attention(impl, layout, req, query, kv_cache, block_row)
        flat_out[req.start : req.start + req.num_rows] = result.to(output.dtype)
