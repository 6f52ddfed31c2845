"""Tree attention with vLLM's Triton kernel (qq_bias), and KV compaction, on the check's device.

Layouts are vLLM's Triton backend's: the KV cache is the logical
[num_blocks, H_kv, block_size, 2*D] tensor (here a view of an NHD-physical
buffer, as vLLM allocates it), split by the plugin's `paged_kv` into key and
value caches [num_blocks, block_size, H_kv, D]. Never-written slots hold NaN,
so a kernel reading outside its sequence poisons its row.
"""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace

import torch
import torch.nn.functional as F
from check_common import TOLERANCE, Check, Sizes, compare, dtype_of, require
from check_kernels import load_unified_attention, plugin_vllm_imports

from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep
from vllm_nfoxhead.integration.triton_tree_attention import (
    compact_kv_paged,
    fix_tree_rows_triton,
    kernel_bias,
    paged_kv,
)
from vllm_nfoxhead.core.kv_compaction import compaction_pairs
from vllm_nfoxhead.core.tree import Tree, parse_tree
from vllm_nfoxhead.core.tree_search import build_tree

# Per-rank accuracies of the shipped SmolLM2 heads' first four heads (heads/smollm2-nfoxhead),
# rounded: shape realistic trees of any size with tree_builder.
ACCURACIES = [[0.59, 0.11, 0.05, 0.03, 0.022, 0.015, 0.012, 0.01, 0.009, 0.008],
              [0.49, 0.11, 0.054, 0.034, 0.026, 0.02, 0.016, 0.011, 0.011, 0.01],
              [0.47, 0.11, 0.053, 0.036, 0.024, 0.02, 0.016, 0.012, 0.011, 0.01],
              [0.45, 0.10, 0.057, 0.037, 0.026, 0.018, 0.017, 0.013, 0.012, 0.01]]


def tree_named(name: str) -> Tree:
    """A preset, or "built_N": the best N-node tree for ACCURACIES (tree_builder)."""
    if name.startswith("built_"):
        return build_tree(ACCURACIES, int(name.split("_")[1])).tree
    return parse_tree(name)


class Paged:
    """Requests' K/V in a paged cache with shuffled blocks; the reference keeps them contiguous."""

    def __init__(self, lengths: list[int], h_kv: int, d: int, block: int, dtype: torch.dtype,
                 device: str, seed: int, hnd: bool = False) -> None:
        gen = torch.Generator().manual_seed(seed)
        need = [-(-n // block) for n in lengths]
        self.num_blocks = sum(need) + 3
        self.block, self.d = block, d
        perm = torch.randperm(self.num_blocks, generator=gen)
        self.table = torch.zeros(len(lengths), max(need), dtype=torch.int32)
        used = 0
        for i, k in enumerate(need):
            self.table[i, :k] = perm[used : used + k].to(torch.int32)
            used += k
        if hnd:  # contiguous logical layout (HND physical)
            self.kv_cache = torch.full((self.num_blocks, h_kv, block, 2 * d), float("nan"), dtype=dtype,
                                       device=device)
        else:  # NHD physical, the logical view vLLM's Triton backend hands to attention
            self.kv_cache = torch.full((self.num_blocks, block, h_kv, 2 * d), float("nan"), dtype=dtype,
                                       device=device).transpose(1, 2)
        self.keys = [torch.randn(n, h_kv, d, generator=gen).to(dtype) for n in lengths]
        self.values = [torch.randn(n, h_kv, d, generator=gen).to(dtype) for n in lengths]
        self.table = self.table.to(device)

    def slots(self, i: int, positions: range) -> torch.Tensor:
        """[len] int64 slots (on the cache's device) of request i's sequence positions."""
        pos = torch.tensor(list(positions), dtype=torch.long, device=self.table.device)
        return self.table[i].long()[pos // self.block] * self.block + pos % self.block

    def write(self, i: int, positions: range) -> None:
        """Put request i's K/V of `positions` into the cache (plain indexing, independent of vLLM)."""
        s = self.slots(i, positions)
        kv = torch.cat([self.keys[i][positions.start : positions.stop],
                        self.values[i][positions.start : positions.stop]], dim=-1)
        self.kv_cache[s // self.block, :, s % self.block] = kv.to(self.kv_cache.device)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: int, mask: torch.Tensor,
              scale: float) -> torch.Tensor:
    """float32 SDPA of one tree request: q [R, H_q, D], k/v [ctx+R, H_kv, D] -> [R, H_q, D]."""
    group = q.shape[1] // k.shape[1]
    device = q.device
    k = k.to(device).float().repeat_interleave(group, dim=1)
    v = v.to(device).float().repeat_interleave(group, dim=1)
    full = torch.cat([torch.ones(mask.shape[0], ctx, dtype=torch.bool), mask.cpu()], dim=1).to(device)
    out = F.scaled_dot_product_attention(q.float().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=full, scale=scale)
    return out.transpose(0, 1)


def kernel_call(unified: ModuleType, q: torch.Tensor, paged: Paged, rows: int, lengths: list[int], scale: float,
                bias: torch.Tensor | None) -> torch.Tensor:
    """unified_attention over len(lengths) requests of `rows` query rows each, as the plugin calls it."""
    device = q.device
    out = torch.full_like(q, float("nan"))
    key_cache, value_cache = paged_kv(paged.kv_cache, paged.d)
    ones = torch.ones(1, device=device)
    descale = (len(lengths), key_cache.shape[2])
    unified.unified_attention(
        q=q, k=key_cache, v=value_cache, out=out,
        cu_seqlens_q=(torch.arange(len(lengths) + 1, dtype=torch.int32) * rows).to(device),
        max_seqlen_q=rows, seqused_k=torch.tensor(lengths, dtype=torch.int32).to(device),
        max_seqlen_k=max(lengths), softmax_scale=scale, causal=True, window_size=(-1, -1),
        block_table=paged.table, softcap=0, q_descale=None,
        k_descale=ones.expand(descale), v_descale=ones.expand(descale), qq_bias=bias, use_td=False,
    )
    return out


def check_attention_case(check: Check, sizes: Sizes, dtype_name: str, block: int, h_q: int, h_kv: int,
                         seed: int) -> None:
    """Every tree of sizes.attn_trees through one kernel call per tree (3 requests), against SDPA."""
    unified = load_unified_attention()
    dtype, device, d = dtype_of(dtype_name), sizes.device, sizes.attn_head_size
    scale = d ** -0.5
    atol = TOLERANCE[dtype_name]
    errors = {}
    for t, name in enumerate(sizes.attn_trees):
        tree = tree_named(name)
        mask = tree.buffers("cpu").attn_mask
        rows = mask.shape[0]
        ctxs = list(sizes.attn_contexts)
        lengths = [c + rows for c in ctxs]
        paged = Paged(lengths, h_kv, d, block, dtype, device, seed=seed * 100 + t)
        for i, n in enumerate(lengths):
            paged.write(i, range(n))
        gen = torch.Generator().manual_seed(seed * 100 + t + 50)
        q = torch.randn(rows * len(ctxs), h_q, d, generator=gen).to(dtype).to(device)
        out = kernel_call(unified, q, paged, rows, lengths, scale, kernel_bias(mask, device))
        worst = 0.0
        for i, ctx in enumerate(ctxs):
            part = slice(i * rows, (i + 1) * rows)
            want = reference(q[part], paged.keys[i], paged.values[i], ctx, mask, scale)
            worst = max(worst, compare(out[part], want, atol, f"tree {name}, request ctx={ctx}"))
        # A branching tree must differ from causal attention over the same rows (the bias was applied);
        # a chain must equal it.
        causal = torch.tril(torch.ones(rows, rows, dtype=torch.bool))
        chain = reference(q[:rows], paged.keys[0], paged.values[0], ctxs[0], causal, scale)
        differs = bool((out[:rows].float() - chain).abs().max() > 10 * atol)
        is_chain = bool(torch.equal(mask, causal))
        require(differs != is_chain, f"tree {name}: result {'equals' if is_chain else 'differs from'} "
                                     "causal attention, expected the opposite")
        errors[name] = round(worst, 6)
    check.detail.update(max_abs_error=errors, rows={n: tree_named(n).num_nodes + 1 for n in sizes.attn_trees})
    check.detail["summary"] = f"{len(errors)} trees, worst {max(errors.values()):.2g} (atol {atol:g})"


def mixed_batch(full: bool) -> list[tuple[str, int, int, str | None]]:
    """(kind, ctx, query rows, tree) per request of one step: trees (one of them only partly
    scheduled, two sharing a mask), a prefill chunk and a chain verification."""
    batch = [("tree", 17, 7, "wide_6"), ("prefill", 5, 20, None), ("tree", 40, 11, "mc_sim_16"),
             ("chain", 25, 4, None), ("tree", 33, 7, "wide_6"), ("tree", 1000 if full else 50, 64, "mc_sim_7b_63")]
    if full:
        batch.append(("tree", 130, 129, "built_128"))
    return batch


def check_mixed_batch(check: Check, sizes: Sizes, dtype_name: str) -> None:
    """The plugin's fix_tree_rows_triton after a causal pass over a mixed batch (the backend's own
    forward): tree rows become tree attention, every other row stays bit-identical."""
    try:
        importlib.import_module("numpy")  # group_by_mask hashes masks with .numpy()
    except ImportError:
        from check_common import Skip

        raise Skip("numpy is not installed here (the plugin's group_by_mask uses Tensor.numpy(); "
                   "vLLM always brings numpy)") from None
    unified = load_unified_attention()
    full = sizes.device == "cuda"
    h_q, h_kv = sizes.attn_gqa[0]
    d, block, dtype, device = sizes.attn_head_size, sizes.attn_block_sizes[0], dtype_of(dtype_name), sizes.device
    scale = d ** -0.5
    batch = mixed_batch(full)
    lengths = [ctx + q for _, ctx, q, _ in batch]
    paged = Paged(lengths, h_kv, d, block, dtype, device, seed=7)
    starts = [0]
    for _, _, q_len, _ in batch:
        starts.append(starts[-1] + q_len)
    num_tokens = starts[-1]
    for i, (_, ctx, q_len, _) in enumerate(batch):  # earlier steps' KV, then this step's
        paged.write(i, range(ctx))
    slot_mapping = torch.cat([paged.slots(i, range(ctx, ctx + q)) for i, (_, ctx, q, _) in enumerate(batch)])
    for i, (_, ctx, q_len, _) in enumerate(batch):
        paged.write(i, range(ctx, ctx + q_len))
    gen = torch.Generator().manual_seed(11)
    query = torch.randn(num_tokens, h_q, d, generator=gen).to(dtype).to(device)
    key = torch.cat([paged.keys[i][ctx:] for i, (_, ctx, _, _) in enumerate(batch)]).to(device)
    value = torch.cat([paged.values[i][ctx:] for i, (_, ctx, _, _) in enumerate(batch)]).to(device)

    # The backend's own pass: every row causal (vLLM's TritonAttentionImpl.forward calls the same kernel).
    key_cache, value_cache = paged_kv(paged.kv_cache, d)
    output = torch.full((num_tokens, h_q, d), float("nan"), dtype=dtype, device=device)
    ones = torch.ones(1, device=device)
    unified.unified_attention(
        q=query, k=key_cache, v=value_cache, out=output,
        cu_seqlens_q=torch.tensor(starts, dtype=torch.int32).to(device), max_seqlen_q=max(q for _, _, q, _ in batch),
        seqused_k=torch.tensor(lengths, dtype=torch.int32).to(device), max_seqlen_k=max(lengths),
        softmax_scale=scale, causal=True, window_size=(-1, -1), block_table=paged.table, softcap=0,
        q_descale=None, k_descale=ones.expand(len(batch), h_kv), v_descale=ones.expand(len(batch), h_kv))
    before = output.clone()

    requests = []
    for i, (kind, ctx, q_len, name) in enumerate(batch):
        if kind == "tree":
            tree = tree_named(name)
            requests.append(TreeRequest(i, starts[i], ctx, q_len - 1, tree.buffers("cpu"), tree=tree))
    step = TreeStep(requests)
    impl = SimpleNamespace(attn_type="decoder", head_size=d, scale=scale, num_kv_heads=h_kv,
                           sliding_window=None, alibi_slopes=None, logits_soft_cap=None, sinks=None,
                           kv_cache_dtype="auto", kv_sharing_target_layer_name=None, use_td=False)
    layer = SimpleNamespace(_k_scale=torch.ones(1, device=device), _v_scale=torch.ones(1, device=device))
    metadata = SimpleNamespace(block_table=paged.table, slot_mapping=slot_mapping, rswa_window=None)
    with plugin_vllm_imports():
        fix_tree_rows_triton(impl, layer, query, key, value, paged.kv_cache, metadata, output, step)

    atol = TOLERANCE[dtype_name]
    tree_rows = torch.zeros(num_tokens, dtype=torch.bool)
    worst = 0.0
    for req in requests:
        rows = slice(req.start, req.start + req.num_rows)
        tree_rows[rows] = True
        want = reference(query[rows], paged.keys[req.batch_index], paged.values[req.batch_index], req.ctx,
                         req.mask, scale)
        worst = max(worst, compare(output[rows], want, atol, f"tree request {req.batch_index}"))
    tree_rows = tree_rows.to(device)
    require(bool(torch.equal(output[~tree_rows], before[~tree_rows])), "non-tree rows changed")
    require(not bool(torch.isnan(output).any()), "NaN in the output")
    require(step.slot_mapping is slot_mapping and list(step.layers) == [id(layer)],
            "the step did not record the layer's cache for compaction")
    check.detail.update(requests=[f"{k} ctx={c} rows={q}{' ' + n if n else ''}" for k, c, q, n in batch],
                        max_abs_error=round(worst, 6))
    check.detail["summary"] = f"{len(requests)} tree requests of {len(batch)}, worst {worst:.2g}"


def check_compaction(check: Check, sizes: Sizes) -> None:
    """compact_kv_paged on the device equals a CPU reference, bit for bit, for both physical layouts."""
    device = sizes.device
    h_kv, d, block = sizes.attn_gqa[0][1], sizes.attn_head_size, sizes.attn_block_sizes[0]
    tree = tree_named("mc_sim_7b_63" if device == "cuda" else "mc_sim_16")
    buffers = tree.buffers("cpu")
    ctxs = [12, 45, 3, 200]  # roots at these positions; nodes cross block edges
    lengths = [c + 1 + buffers.num_nodes for c in ctxs]
    gen = torch.Generator().manual_seed(5)
    leaves = buffers.retrieve_paths[:, -1]
    moved_total = 0
    for hnd in (False, True):
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        paged = Paged(lengths, h_kv, d, block, dtype, device, seed=3 + hnd, hnd=hnd)
        paged.kv_cache.copy_(torch.randn(paged.kv_cache.shape, generator=gen).to(dtype))
        node_slots = torch.stack([paged.slots(i, range(c + 1, c + 1 + buffers.num_nodes))
                                  for i, c in enumerate(ctxs)])  # [B, N] on the device
        # accepted: a deep path, nothing, the first node only, another path
        picks = [int(leaves[-1]), -1, 0, int(leaves[len(leaves) // 2])]
        accepted = torch.stack([buffers.node_paths[p] if p >= 0 else torch.full((buffers.max_depth,), -1)
                                for p in picks]).to(device)
        src, dst = compaction_pairs(node_slots, accepted)
        require(src.device.type == torch.device(device).type, f"compaction pairs on {src.device}")
        flat_before = paged.kv_cache.transpose(1, 2).reshape(-1, h_kv, 2 * d).cpu().clone()
        want = flat_before.clone()
        want[dst.cpu()] = flat_before[src.cpu()]
        compact_kv_paged(paged.kv_cache, src, dst, block)
        got = paged.kv_cache.transpose(1, 2).reshape(-1, h_kv, 2 * d).cpu()
        require(bool(torch.equal(got, want)), f"compacted cache differs from the reference ({'HND' if hnd else 'NHD'})")
        moved_total += int(src.numel())
    check.detail["summary"] = f"{moved_total} slots moved, NHD and HND caches exact"
