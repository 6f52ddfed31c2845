"""Reading keys and values back out of vLLM's CPU paged KV cache.

The CPU backend stores K/V in an ISA-specific order inside each
[block, kv_head] region (e.g. keys transposed for the "vec" kernel), written
by the compiled op `cpu_attn_reshape_and_cache` and not documented. Instead of
hard-coding it, `probe_layout` writes position/dimension codes through the real
op once and records where each element lands, giving gather indices that turn
the cache back into [tokens, kv_heads, head_size]. If the op's layout is not a
per-region permutation, the probe says so and tree verification is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class KVLayout:
    """Gather indices into one flattened [block_size * head_size] region."""

    block_size: int
    head_size: int
    key_index: torch.Tensor  # [block_size, head_size] int64
    value_index: torch.Tensor  # [block_size, head_size] int64
    # (position stride, dimension stride) when the layout is a plain strided one
    # (the "vec" kernels: keys transposed, values as they are); None: gather.
    key_strides: tuple[int, int] | None = field(init=False)
    value_strides: tuple[int, int] | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_strides", affine_strides(self.key_index))
        object.__setattr__(self, "value_strides", affine_strides(self.value_index))

    def block_tokens(self, half: torch.Tensor, which: str) -> torch.Tensor:
        """half [nb, H_kv, block_size, D] as stored (any strides) -> the same tokens in
        (position, dimension) order; a view for strided layouts (keys of the "vec"
        kernels are stored transposed), a gather otherwise."""
        index, strides = ((self.key_index, self.key_strides) if which == "key"
                          else (self.value_index, self.value_strides))
        nb, heads = half.shape[:2]
        if strides is not None:
            return half.as_strided((nb, heads, self.block_size, self.head_size),
                                   (half.stride(0), half.stride(1), *strides))
        flat = half.reshape(nb, heads, -1)[:, :, index.reshape(-1)]  # element (p, d) at p * D + d
        return flat.view(nb, heads, self.block_size, self.head_size)

    def read_head_major(self, kv_cache: torch.Tensor, blocks: torch.Tensor,
                        length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions 0..length-1 of one request, laid out for attention matmuls.

        kv_cache [num_blocks, H_kv, block_size, 2*D] as vLLM allocates it (each
        region holds its block's keys, then its values),
        blocks: the request's block table row. Returns keys transposed
        [H_kv, D, length] and values [H_kv, length, D]. One `index_select` of whole
        regions, then one copy per half whose inner runs are a block long: about
        3x faster than gathering each half and permuting it token-major.
        """
        bs = self.block_size
        nb = -(-length // bs)
        heads, dim = kv_cache.shape[1], self.head_size
        key_half, value_half = split_cache(kv_cache.index_select(0, blocks[:nb].long()))
        keys = self.block_tokens(key_half, "key")  # [nb, H_kv, bs, D]
        values = self.block_tokens(value_half, "value")
        keys_t = keys.permute(1, 3, 0, 2).reshape(heads, dim, nb * bs)[:, :, :length]
        values = values.permute(1, 0, 2, 3).reshape(heads, nb * bs, dim)[:, :length]
        return keys_t, values

    def read(self, cache_half: torch.Tensor, slots: torch.Tensor, which: str) -> torch.Tensor:
        """cache_half [num_blocks, H_kv, block_size, D] (key or value view) -> [len(slots), H_kv, D].

        `torch.take` on the logical [num_blocks, H_kv, block_size * D] order reads
        only the S * H_kv * D elements asked for, not their whole blocks.
        """
        index = self.key_index if which == "key" else self.value_index
        blocks = torch.div(slots, self.block_size, rounding_mode="floor")
        offsets = slots % self.block_size
        heads = cache_half.shape[1]
        region = (blocks * heads).view(-1, 1, 1) + torch.arange(heads, device=slots.device).view(1, -1, 1)
        flat = region * index.numel() + index[offsets].unsqueeze(1)  # [S, H_kv, D] logical indices
        return torch.take(cache_half, flat)


def split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[num_blocks, H_kv, block_size, 2*D] -> key and value views [num_blocks, H_kv, block_size, D]."""
    num_blocks, num_kv_heads, block_size, _ = kv_cache.shape
    key_cache, value_cache = kv_cache.view(num_blocks, num_kv_heads, block_size * 2, -1).chunk(2, dim=2)
    return key_cache, value_cache


def affine_strides(index: torch.Tensor) -> tuple[int, int] | None:
    """(position stride, dimension stride) if element (p, d) lies at p*sp + d*sd; else None."""
    if index.shape[0] < 2 or index.shape[1] < 2 or int(index[0, 0]) != 0:
        return None
    sp, sd = int(index[1, 0]), int(index[0, 1])
    p = torch.arange(index.shape[0]).view(-1, 1)
    d = torch.arange(index.shape[1]).view(1, -1)
    return (sp, sd) if torch.equal(index, p * sp + d * sd) else None


def probe_layout(block_size: int, head_size: int, dtype: torch.dtype, isa: str) -> KVLayout | None:
    """Discover the layout by writing codes with the real op; None if it is not a permutation."""
    from vllm import _custom_ops as ops

    num_heads = 2
    cache = torch.zeros(1, num_heads, 2 * block_size, head_size, dtype=dtype)
    key_cache, value_cache = cache.chunk(2, dim=2)
    slots = torch.arange(block_size)
    shape = (block_size, num_heads, head_size)
    pos = torch.arange(block_size).view(-1, 1, 1).expand(shape)
    dim = torch.arange(head_size).view(1, 1, -1).expand(shape)
    head = torch.arange(num_heads).view(1, -1, 1).expand(shape)
    codes = {}
    for name, code in (("pos", pos), ("dim", dim), ("head", head)):
        # Small integers are exact in bf16/fp16 up to 256; shift by 1 so 0 means "untouched".
        if int(code.max()) + 1 > 256:
            return None
        cache.zero_()
        val = (code + 1).to(dtype)
        ops.cpu_attn_reshape_and_cache(val, val, key_cache, value_cache, slots, isa)
        codes[name] = (key_cache.float().clone(), value_cache.float().clone())
    indices = []
    for half in (0, 1):
        pos_c, dim_c, head_c = (codes[n][half][0] - 1 for n in ("pos", "dim", "head"))
        # Regions are per head: every element of head h's region must carry head code h.
        expected_head = torch.arange(num_heads).view(-1, 1, 1).float()
        if not torch.equal(head_c, expected_head.expand_as(head_c)):
            return None
        flat_pos, flat_dim = pos_c[0].reshape(-1), dim_c[0].reshape(-1)  # head 0's region
        key = flat_pos.long() * head_size + flat_dim.long()
        if flat_pos.min() < 0 or sorted(key.tolist()) != list(range(block_size * head_size)):
            return None
        index = torch.empty(block_size * head_size, dtype=torch.long)
        index[key] = torch.arange(block_size * head_size)
        indices.append(index.view(block_size, head_size))
    return KVLayout(block_size, head_size, indices[0], indices[1])
