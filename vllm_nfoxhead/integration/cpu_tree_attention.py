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

from .cpu_kv_layout import KVLayout, probe_layout
from .tree_step import TreeRequest, TreeStep


@functools.lru_cache(maxsize=16)
def layout_for(block_size: int, head_size: int, dtype: torch.dtype, isa: str) -> KVLayout:
    layout = probe_layout(block_size, head_size, dtype, isa)
    if layout is None:
        raise RuntimeError(
            f"NFoxHead: cannot read vLLM's CPU KV cache layout (isa={isa}, dtype={dtype}); "
            "tree verification is unavailable here. Fix: drop 'tree' to use chain drafting."
        )
    return layout


def split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[num_blocks, H_kv, block_size, 2*D] -> key and value views [num_blocks, H_kv, block_size, D]."""
    num_blocks, num_kv_heads, block_size, _ = kv_cache.shape
    key_cache, value_cache = kv_cache.view(num_blocks, num_kv_heads, block_size * 2, -1).chunk(2, dim=2)
    return key_cache, value_cache


def check_supported(impl: Any) -> None:
    unsupported = [
        name for name, bad in (
            ("sliding window", getattr(impl, "sliding_window", -1) not in (None, -1, (-1, -1))),
            ("ALiBi", getattr(impl, "alibi_slopes", None) is not None),
            ("logit soft-capping", bool(getattr(impl, "logits_soft_cap", None))),
            ("attention sinks", getattr(impl, "sinks", None) is not None),
            ("quantized KV cache", getattr(impl, "kv_cache_dtype", "auto") != "auto"),
        ) if bad
    ]
    if unsupported:
        raise RuntimeError(
            f"NFoxHead: tree verification does not support {', '.join(unsupported)} on CPU. "
            "Fix: drop 'tree' to use chain drafting."
        )


def prefix_kv(layout: KVLayout, kv_cache: torch.Tensor, block_row: torch.Tensor,
              ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of positions 0..ctx-1 of one request: each [ctx, H_kv, D]."""
    key_cache, value_cache = split_cache(kv_cache)
    num_blocks = -(-ctx // layout.block_size)
    blocks = block_row[:num_blocks].long()
    keys = layout.read_blocks(key_cache, blocks, "key")[:ctx]
    values = layout.read_blocks(value_cache, blocks, "value")[:ctx]
    return keys, values


def tree_rows_attention(impl: Any, layout: KVLayout, req: TreeRequest, query: torch.Tensor,
                        key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                        block_row: torch.Tensor) -> torch.Tensor:
    """Attention output of one tree request's rows: [n+1, H_q * D]."""
    rows = slice(req.start, req.start + req.num_rows)
    q = query[rows]  # [n+1, H_q, D], the model's dtype (SDPA accumulates in float32)
    k_pre, v_pre = prefix_kv(layout, kv_cache, block_row, req.ctx)
    k = torch.cat([k_pre.to(q.dtype), key[rows]])  # [ctx+n+1, H_kv, D]
    v = torch.cat([v_pre.to(q.dtype), value[rows]])
    mask = torch.cat([torch.ones(req.num_rows, req.ctx, dtype=torch.bool), req.mask], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
        attn_mask=mask.to(q.device), scale=impl.scale, enable_gqa=q.shape[1] != k.shape[1],
    )  # [H_q, n+1, D]
    return out.transpose(0, 1).reshape(req.num_rows, -1)


def fix_tree_rows(impl: Any, layer: Any, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, kv_cache: torch.Tensor, attn_metadata: Any,
                  output: torch.Tensor, step: TreeStep) -> None:
    """Overwrite the kernel's output for every tree request of this step (in place)."""
    check_supported(impl)
    num_blocks, num_kv_heads, block_size, two_d = kv_cache.shape
    layout = layout_for(block_size, two_d // 2, kv_cache.dtype, layer.isa)
    step.slot_mapping = attn_metadata.slot_mapping
    step.layers[id(layer)] = (layer, impl, kv_cache)
    flat_out = output.view(output.shape[0], -1)
    for req in step.requests:
        block_row = attn_metadata.block_table[req.batch_index]
        result = tree_rows_attention(impl, layout, req, query, key, value, kv_cache, block_row)
        flat_out[req.start : req.start + req.num_rows] = result.to(output.dtype)
