"""The CPU tree fix-up's attention (cpu_tree_attention.tree_rows_attention) against
SDPA with the tree mask, on K/V written through vLLM's real cache op."""

from __future__ import annotations

import types

import pytest
import torch

from vllm_nfoxhead.integration.cpu_kv_layout import split_cache
from vllm_nfoxhead.integration.cpu_tree_attention import layout_for, tree_rows_attention
from vllm_nfoxhead.integration.tree_step import TreeRequest
from vllm_nfoxhead.core.tree import parse_tree


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tree_rows_match_masked_sdpa(dtype):
    from vllm import _custom_ops as ops

    block_size, dim, heads_kv, heads_q, ctx = 32, 64, 3, 9, 70
    tree = parse_tree([[0], [1], [0, 0], [0, 1], [0, 0, 0]])
    n = 5
    req = TreeRequest(batch_index=0, start=2, ctx=ctx, num_nodes=n, buffers=tree.buffers(torch.device("cpu")))
    layout = layout_for(block_size, dim, dtype, "vec")
    kv_cache = torch.zeros(10, heads_kv, block_size, 2 * dim, dtype=dtype)  # vLLM's CPU shape
    key_cache, value_cache = split_cache(kv_cache)
    total = ctx + n + 1
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(total, heads_kv, dim, generator=gen).to(dtype)
    values = torch.randn(total, heads_kv, dim, generator=gen).to(dtype)
    blocks = torch.tensor([7, 2, 5], dtype=torch.int32)
    slots = torch.cat([b * block_size + torch.arange(block_size) for b in blocks.tolist()])[:total]
    ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, "vec")
    query = torch.randn(2 + n + 1 + 3, heads_q, dim, generator=gen).to(dtype)  # other requests' rows around it

    got = tree_rows_attention(types.SimpleNamespace(scale=0.125), layout, req, query, kv_cache, blocks)

    q = query[2: 3 + n].float().transpose(0, 1)
    sees = torch.cat([torch.ones(n + 1, ctx, dtype=torch.bool), req.mask], dim=1)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, keys.float().repeat_interleave(3, 1).transpose(0, 1), values.float().repeat_interleave(3, 1).transpose(0, 1),
        attn_mask=sees, scale=0.125).transpose(0, 1).reshape(n + 1, -1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The mask really matters: node 1 ([1]) must not see node 0 ([0]).
    assert not sees[2, ctx + 1]
