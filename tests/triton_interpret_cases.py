"""Tree attention on vLLM's Triton backend, checked on CPU under Triton's interpreter.

No GPU is needed: TRITON_INTERPRET=1 runs vLLM's real Triton attention
kernel (`unified_attention`, also through `TritonAttentionImpl.forward`) with
numpy on CPU tensors. vLLM's CPU build replaces `triton` with a placeholder in
`vllm.triton_utils` (its CPU backend has no Triton driver), so the kernel
modules are re-imported against the real `triton` first (see `triton_ops`),
and one helper is re-jitted where the interpreter's meaning of `and` differs
from compiled Triton's (see vllm_nfoxhead/tools/triton_interpret.py).

Shapes stay tiny (head size 32, block size 16): the interpreter is slow.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton or vLLM's Triton ops are imported

import importlib
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from vllm_nfoxhead.integration.triton_tree_attention import (
    compact_kv_paged,
    fix_tree_rows_triton,
    tree_bias,
)
from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep
from vllm_nfoxhead.core.kv_compaction import compaction_pairs
from vllm_nfoxhead.core.tree import TreeBuffers, parse_tree
from vllm_nfoxhead.tools.triton_interpret import interpretable

H_Q, H_KV, D, BLOCK = 4, 2, 32, 16  # GQA: 2 query heads per KV head
SCALE = D ** -0.5

# vLLM modules holding @triton.jit kernels this test runs, in import order.
_KERNEL_MODULES = (
    "vllm.v1.attention.ops.triton_attention_helpers",
    "vllm.v1.attention.ops.triton_unified_attention",
    "vllm.v1.attention.ops.triton_reshape_and_cache_flash",
    "vllm.v1.attention.ops.triton_prefill_attention",
    "vllm.v1.attention.backends.triton_attn",
)


def _load_interpreted() -> dict[str, ModuleType]:
    """Import (or re-import) vLLM's Triton kernel modules against the real, interpreted triton."""
    import triton
    import triton.language as tl
    import vllm.triton_utils as triton_utils

    triton_utils.triton, triton_utils.tl = triton, tl  # the CPU build put placeholders here
    modules = {}
    for name in _KERNEL_MODULES:
        module = sys.modules.get(name)
        modules[name] = importlib.reload(module) if module is not None else importlib.import_module(name)
    helpers = modules["vllm.v1.attention.ops.triton_attention_helpers"]
    load_bias = interpretable(helpers.load_qq_bias_tile)
    for name in ("vllm.v1.attention.ops.triton_attention_helpers",
                 "vllm.v1.attention.ops.triton_unified_attention"):
        modules[name].load_qq_bias_tile = load_bias  # the kernel looks the name up at run time
    return modules


@pytest.fixture(scope="module")
def triton_ops() -> SimpleNamespace:
    """vLLM's Triton attention pieces, runnable here; skips with the reason if they are not."""
    try:
        from triton.runtime.interpreter import InterpretedFunction

        modules = _load_interpreted()
        unified = modules["vllm.v1.attention.ops.triton_unified_attention"]
        if not isinstance(unified.kernel_unified_attention, InterpretedFunction):
            raise RuntimeError("kernel_unified_attention is not an interpreted Triton function")
    except Exception as exc:  # pragma: no cover - depends on the installed triton/vLLM
        pytest.skip(f"vLLM's Triton kernels cannot run under TRITON_INTERPRET here: {exc!r}")
    backend = modules["vllm.v1.attention.backends.triton_attn"]
    return SimpleNamespace(unified_attention=unified.unified_attention,
                           Impl=backend.TritonAttentionImpl, Metadata=backend.TritonAttentionMetadata)


# ---------------------------------------------------------------- helpers


def paged_cache(num_blocks: int) -> torch.Tensor:
    """The backend's logical [num_blocks, H_kv, BLOCK, 2D] view of an NHD-physical buffer, NaN-filled.

    NaN marks never-written slots: a kernel reading one would poison its row.
    """
    physical = torch.full((num_blocks, BLOCK, H_KV, 2 * D), float("nan"))
    return physical.transpose(1, 2)


def block_tables(lengths: list[int], num_blocks: int, seed: int) -> torch.Tensor:
    """[B, max_blocks] int32 rows of distinct, shuffled physical blocks (0-padded, like vLLM)."""
    need = [-(-n // BLOCK) for n in lengths]
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
    assert sum(need) <= num_blocks
    table = torch.zeros(len(lengths), max(need), dtype=torch.int32)
    used = 0
    for i, k in enumerate(need):
        table[i, :k] = perm[used : used + k].to(torch.int32)
        used += k
    return table


def slots_of(table_row: torch.Tensor, positions: range) -> torch.Tensor:
    """[len] int64 slots of sequence positions under one block-table row."""
    pos = torch.tensor(list(positions), dtype=torch.long)
    return table_row.long()[pos // BLOCK] * BLOCK + pos % BLOCK


def write_kv(kv_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Independent of vLLM: put k, v [M, H_kv, D] at `slots` of the logical cache."""
    kv_cache[slots // BLOCK, :, slots % BLOCK] = torch.cat([k, v], dim=-1)


def reference_tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             ctx: int, mask: torch.Tensor) -> torch.Tensor:
    """float32 SDPA of one tree request: q [n+1, H_q, D], k/v [ctx+n+1, H_kv, D] -> [n+1, H_q, D].

    Every row sees the whole prefix (ctx keys) and, among the tree keys, what `mask` allows.
    """
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    full = torch.cat([torch.ones(mask.shape[0], ctx, dtype=torch.bool), mask], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=full, scale=SCALE)
    return out.transpose(0, 1)


# ---------------------------------------------------------------- tests


def test_tree_bias_values() -> None:
    mask = parse_tree("wide_6").buffers("cpu").attn_mask
    bias = tree_bias(mask)
    assert bias.dtype == torch.float32 and bias.is_contiguous() and bias.shape == mask.shape
    assert torch.all(bias[mask] == 0) and torch.all(torch.isneginf(bias[~mask]))


def test_unified_attention_qq_bias_is_tree_attention(triton_ops) -> None:
    """vLLM's kernel with qq_bias = tree bias == tree attention, over shuffled paged blocks."""
    torch.manual_seed(0)
    mask = parse_tree("mc_sim_16").buffers("cpu").attn_mask  # [17, 17], branching, depth 3
    rows = mask.shape[0]
    ctxs = [3, 21, 50]  # the tree starts in block 0, 1 and 3; sequences span 2 to 5 blocks
    lengths = [c + rows for c in ctxs]
    num_blocks = 16
    table = block_tables(lengths, num_blocks, seed=1)
    kv_cache = paged_cache(num_blocks)
    ks = [torch.randn(n, H_KV, D) for n in lengths]
    vs = [torch.randn(n, H_KV, D) for n in lengths]
    for i, n in enumerate(lengths):
        write_kv(kv_cache, slots_of(table[i], range(n)), ks[i], vs[i])
    q = torch.randn(rows * len(ctxs), H_Q, D)
    out = torch.full_like(q, float("nan"))
    key_cache, value_cache = kv_cache.transpose(1, 2).split(D, dim=-1)  # as TritonAttentionImpl
    bias = torch.cat([tree_bias(mask), torch.zeros(32, rows)])  # padded rows: see kernel_bias

    triton_ops.unified_attention(
        q=q, k=key_cache, v=value_cache, out=out,
        cu_seqlens_q=torch.arange(len(ctxs) + 1, dtype=torch.int32) * rows, max_seqlen_q=rows,
        seqused_k=torch.tensor(lengths, dtype=torch.int32), max_seqlen_k=max(lengths),
        softmax_scale=SCALE, causal=True, window_size=(-1, -1), block_table=table, softcap=0,
        q_descale=None, k_descale=None, v_descale=None, qq_bias=bias,
    )

    for i, ctx in enumerate(ctxs):
        got = out[i * rows : (i + 1) * rows]
        want = reference_tree_attention(q[i * rows : (i + 1) * rows], ks[i], vs[i], ctx, mask)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    causal = torch.tril(torch.ones(rows, rows, dtype=torch.bool))
    chain = reference_tree_attention(q[:rows], ks[0], vs[0], ctxs[0], causal)
    assert not torch.allclose(out[:rows], chain, atol=1e-3)  # the bias did change the result


def _mixed_batch() -> tuple[list[tuple[str, int, int]], dict[int, TreeBuffers]]:
    """(kind, ctx, query rows) per request, and the tree of each tree request by batch index.

    A tree request (wide_6), a prefill chunk, a partial tree (the first 10
    nodes of mc_sim_16 scheduled), a chain verification (4 rows) and a second
    wide_6 tree: two tree requests share a mask, so one kernel call covers both.
    """
    wide = parse_tree("wide_6").buffers("cpu")  # 6 nodes: 7 rows
    sim = parse_tree("mc_sim_16").buffers("cpu")  # 16 nodes, 10 scheduled: 11 rows
    batch = [("tree", 17, 7), ("prefill", 5, 20), ("tree", 40, 11), ("chain", 25, 4), ("tree", 33, 7)]
    return batch, {0: wide, 2: sim, 4: wide}


def test_fix_tree_rows_triton_on_mixed_batch(triton_ops) -> None:
    """After the backend's own forward, tree rows become tree attention; other rows are untouched."""
    torch.manual_seed(0)
    batch, trees = _mixed_batch()
    lengths = [ctx + q for _, ctx, q in batch]
    num_blocks = 24
    table = block_tables(lengths, num_blocks, seed=2)
    kv_cache = paged_cache(num_blocks)
    ks = [torch.randn(n, H_KV, D) for n in lengths]
    vs = [torch.randn(n, H_KV, D) for n in lengths]
    starts = [0]
    for _, _, q_len in batch:
        starts.append(starts[-1] + q_len)
    num_tokens = starts[-1]
    for i, (_, ctx, _) in enumerate(batch):  # earlier steps' KV
        write_kv(kv_cache, slots_of(table[i], range(ctx)), ks[i][:ctx], vs[i][:ctx])
    slot_mapping = torch.cat([slots_of(table[i], range(ctx, ctx + q)) for i, (_, ctx, q) in enumerate(batch)])
    key = torch.cat([ks[i][ctx:] for i, (_, ctx, _) in enumerate(batch)])  # [T, H_kv, D]
    value = torch.cat([vs[i][ctx:] for i, (_, ctx, _) in enumerate(batch)])
    query = torch.randn(num_tokens, H_Q, D)

    impl = triton_ops.Impl(num_heads=H_Q, head_size=D, scale=SCALE, num_kv_heads=H_KV,
                           alibi_slopes=None, sliding_window=None, kv_cache_dtype="auto")
    layer = SimpleNamespace(_k_scale=torch.ones(1), _v_scale=torch.ones(1), _q_scale=torch.ones(1))
    metadata = triton_ops.Metadata(
        num_actual_tokens=num_tokens, max_query_len=max(q for *_, q in batch),
        query_start_loc=torch.tensor(starts, dtype=torch.int32), max_seq_len=max(lengths),
        seq_lens=torch.tensor(lengths, dtype=torch.int32), block_table=table,
        slot_mapping=slot_mapping, seq_threshold_3D=0, num_par_softmax_segments=16,
        softmax_segm_output=torch.empty(0), softmax_segm_max=torch.empty(0),
        softmax_segm_expsum=torch.empty(0), causal=True,
    )
    # vLLM's own step: this step's K/V go to their slots (what do_kv_cache_update does;
    # its Triton kernel asks torch.cuda for the device capability, so it cannot run here),
    # then the backend's real forward computes every row causally.
    write_kv(kv_cache, slot_mapping, key, value)
    output = torch.full((num_tokens, H_Q, D), float("nan"))
    impl.forward(layer, query, key, value, kv_cache, metadata, output)
    before = output.clone()
    requests = [TreeRequest(i, starts[i], batch[i][1], batch[i][2] - 1, trees[i]) for i in trees]
    step = TreeStep(requests)

    fix_tree_rows_triton(impl, layer, query, key, value, kv_cache, metadata, output, step)

    tree_rows = torch.zeros(num_tokens, dtype=torch.bool)
    for req in requests:
        rows = slice(req.start, req.start + req.num_rows)
        tree_rows[rows] = True
        want = reference_tree_attention(query[rows], ks[req.batch_index], vs[req.batch_index],
                                        req.ctx, req.mask)
        torch.testing.assert_close(output[rows], want, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(output[rows], before[rows], atol=1e-3)  # was causal before
    assert torch.equal(output[~tree_rows], before[~tree_rows])  # bit-identical, no NaN
    assert not torch.isnan(output).any()
    assert step.slot_mapping is metadata.slot_mapping
    assert list(step.layers) == [id(layer)]
    assert all(a is b for a, b in zip(step.layers[id(layer)], (layer, impl, kv_cache)))


@pytest.mark.parametrize("feature, attrs", [
    ("sliding window", {"sliding_window": (127, 0)}),
    ("ALiBi", {"alibi_slopes": torch.ones(H_Q)}),
    ("soft-capping", {"logits_soft_cap": 30.0}),
    ("sinks", {"sinks": torch.zeros(H_Q)}),
    ("quantized KV cache", {"kv_cache_dtype": "fp8"}),
])
def test_unsupported_features_are_refused(feature: str, attrs: dict) -> None:
    impl = SimpleNamespace(sliding_window=(-1, -1), alibi_slopes=None, logits_soft_cap=0,
                           sinks=None, kv_cache_dtype="auto", attn_type="decoder", head_size=D)
    for name, value in attrs.items():
        setattr(impl, name, value)
    step = TreeStep([])
    with pytest.raises(RuntimeError, match=r"^NFoxHead:.*drop 'tree' to use chain drafting") as err:
        fix_tree_rows_triton(impl, None, None, None, None, None, SimpleNamespace(), None, step)
    assert feature in str(err.value)


def test_cross_attention_is_left_alone() -> None:
    """Encoder-decoder cross-attention neither sees the tree nor registers its cache for compaction."""
    impl = SimpleNamespace(attn_type="encoder_decoder")
    step = TreeStep([])
    fix_tree_rows_triton(impl, None, None, None, None, None, SimpleNamespace(), None, step)
    assert step.slot_mapping is None and not step.layers


def _expected_after_moves(kv_cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Reference: per slot, the entry [H_kv, 2D] after dst[i] <- src[i] with all reads first."""
    flat = kv_cache.transpose(1, 2).reshape(-1, H_KV, 2 * D).clone()  # [slots, H_kv, 2D]
    flat[dst] = flat[src].clone()
    return flat


def _slots(kv_cache: torch.Tensor) -> torch.Tensor:
    return kv_cache.transpose(1, 2).reshape(-1, H_KV, 2 * D)


def test_compact_kv_paged_moves_accepted_path() -> None:
    """Pairs from compaction_pairs for a real tree, nodes spread over shuffled blocks."""
    torch.manual_seed(0)
    kv_cache = paged_cache(8)
    kv_cache.copy_(torch.randn(kv_cache.shape))
    table = block_tables([48], 8, seed=3)[0]
    buffers = parse_tree("mc_sim_16").buffers("cpu")
    ctx = 12  # root at position 12; nodes 0..15 at positions 13..28, crossing a block edge
    node_slots = slots_of(table, range(ctx + 1, ctx + 1 + buffers.num_nodes))[None]  # [1, 16]
    leaf = 15  # path node 0 -> node 6 -> node 15 (depths 1, 2, 3)
    accepted = buffers.node_paths[leaf][None]  # [1, D] node indices
    src, dst = compaction_pairs(node_slots, accepted)
    assert src.numel() == 2  # node 0 is already in place
    want = _expected_after_moves(kv_cache, src, dst)

    compact_kv_paged(kv_cache, src, dst, BLOCK)

    torch.testing.assert_close(_slots(kv_cache), want, rtol=0, atol=0)


def test_compact_kv_paged_reads_all_before_writing() -> None:
    """Overlapping pairs: a chain shift, a swap and a cycle give the 'read first' answer."""
    torch.manual_seed(0)
    kv_cache = paged_cache(4)
    kv_cache.copy_(torch.randn(kv_cache.shape))
    original = _slots(kv_cache).clone()
    src = torch.tensor([14, 15, 16, 40, 41, 60, 61, 62])  # 15 -> 16 crosses a block edge
    dst = torch.tensor([15, 16, 17, 41, 40, 61, 62, 60])  # shift right, swap, 3-cycle
    want = _expected_after_moves(kv_cache, src, dst)

    compact_kv_paged(kv_cache, src, dst, BLOCK)

    got = _slots(kv_cache)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(got[17], original[16]) and torch.equal(got[16], original[15])
    assert torch.equal(got[40], original[41]) and torch.equal(got[41], original[40])
    assert torch.equal(got[60], original[62])
    untouched = torch.ones(got.shape[0], dtype=torch.bool)
    untouched[dst] = False
    assert torch.equal(got[untouched], original[untouched])


def test_compact_kv_paged_checks_layout() -> None:
    with pytest.raises(ValueError, match="KV cache"):
        compact_kv_paged(paged_cache(2), torch.tensor([1]), torch.tensor([0]), block_size=32)
    kv_cache = paged_cache(2)
    compact_kv_paged(kv_cache, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), BLOCK)
