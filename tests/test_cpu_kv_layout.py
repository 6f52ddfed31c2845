"""Reading K/V back out of vLLM's CPU paged cache (cpu_kv_layout.py), through the real
`cpu_attn_reshape_and_cache` op, for every kernel layout this CPU can run."""

from __future__ import annotations

import pytest
import torch

from vllm_nfoxhead.integration.cpu_kv_layout import affine_strides, probe_layout, split_cache

ISAS = ("vec", "vec16", "amx")


def write_tokens(isa: str, dtype: torch.dtype, block_size: int, head_size: int, slots: torch.Tensor):
    from vllm import _custom_ops as ops

    heads, num_blocks = 2, 6
    cache = torch.zeros(num_blocks, heads, block_size, 2 * head_size, dtype=dtype)  # vLLM's CPU shape
    key_cache, value_cache = split_cache(cache)
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(len(slots), heads, head_size, generator=gen).to(dtype)
    values = torch.randn(len(slots), heads, head_size, generator=gen).to(dtype)
    ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa)
    return cache, keys, values


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reads_return_what_the_kernel_wrote(isa, dtype):
    block_size, head_size = 32, 64
    try:
        layout = probe_layout(block_size, head_size, dtype, isa)
    except Exception as exc:  # this CPU or dtype has no such kernel
        pytest.skip(f"{isa}/{dtype}: {exc}")
    if layout is None:
        pytest.skip(f"{isa}/{dtype}: not a per-region permutation")
    blocks = torch.tensor([4, 1, 3])  # a request's block table, out of order
    length = 2 * block_size + 5
    slots = torch.cat([b * block_size + torch.arange(block_size) for b in blocks.tolist()])[:length]
    cache, keys, values = write_tokens(isa, dtype, block_size, head_size, slots)
    key_cache = split_cache(cache)[0]
    keys_t, values_hm = layout.read_head_major(cache, blocks, length)
    assert torch.equal(keys_t, keys.permute(1, 2, 0))  # [H_kv, D, T]
    assert torch.equal(values_hm, values.transpose(0, 1))  # [H_kv, T, D]
    assert torch.equal(layout.read(key_cache, slots, "key"), keys)


def test_affine_strides():
    p, d = torch.arange(4).view(-1, 1), torch.arange(3).view(1, -1)
    assert affine_strides(p * 3 + d) == (3, 1)
    assert affine_strides(d * 4 + p) == (1, 4)
    shuffled = (p * 3 + d).flatten()[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])].view(4, 3)
    assert affine_strides(shuffled) is None
