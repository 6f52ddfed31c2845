"""KV compaction: accepted tree nodes move to the slots of consecutive sequence indices."""

from __future__ import annotations

import torch

from vllm_nfoxhead.core.kv_compaction import compact_kv, compaction_pairs, copy_slots
from vllm_nfoxhead.core.tree import parse_tree

# Nodes: 0:[0] 1:[1] 2:[0,0] 3:[1,0] 4:[1,1] 5:[1,0,0]
TREE = [[0], [1], [0, 0], [1, 0], [1, 1], [1, 0, 0]]


def _cache(num_slots: int = 32, heads: int = 2, dim: int = 3) -> torch.Tensor:
    """[num_slots, heads, dim] whose entries encode their slot: cache[s] == s everywhere."""
    return torch.arange(num_slots, dtype=torch.float32)[:, None, None].expand(-1, heads, dim).clone()


def _reference(cache, node_slots, accepted):
    """Slow reference: per request, read every source first, then write destinations."""
    out = cache.clone()
    for slots, acc in zip(node_slots.tolist(), accepted.tolist()):
        chain = [n for n in acc if n >= 0]
        values = [cache[slots[n]].clone() for n in chain]
        for k, v in enumerate(values):
            out[slots[k]] = v
    return out


def test_pairs_definition():
    node_slots = torch.tensor([[10, 11, 12, 13, 14, 15],
                               [20, 21, 22, 23, 24, 25]])
    accepted = torch.tensor([[1, 3, 5],       # [1] -> [1,0] -> [1,0,0]
                             [0, 2, -1]])     # [0] -> [0,0]: node 0 is already in place
    src, dst = compaction_pairs(node_slots, accepted)
    assert src.tolist() == [11, 13, 15, 22] and dst.tolist() == [10, 11, 12, 21]
    chain = torch.tensor([[30, 31, 32, 33]])     # chain_4: accepted nodes are always in place
    assert compaction_pairs(chain, torch.tensor([[0, 1, 2, -1]]))[0].numel() == 0


def test_overlapping_source_and_destination():
    # Slot 11 is read (source of depth 1) and written (destination of depth 2) in one step.
    cache = _cache()
    node_slots = torch.tensor([[10, 11, 12, 13, 14, 15]])
    accepted = torch.tensor([[1, 3, 5]])
    compact_kv([cache], node_slots, accepted)
    assert cache[10, 0, 0] == 11 and cache[11, 0, 0] == 13 and cache[12, 0, 0] == 15
    untouched = [s for s in range(32) if s not in (10, 11, 12)]
    assert torch.equal(cache[untouched], _cache()[untouched])


def test_batch_matches_reference_across_blocks_and_layers():
    # Request 0's nodes straddle two blocks (block_size 4: slots 6,7 | 12,13,14,15).
    node_slots = torch.tensor([[6, 7, 12, 13, 14, 15],
                               [0, 1, 2, 3, 4, 5],
                               [24, 25, 26, 27, 28, 29]])
    accepted = torch.tensor([[1, 4, -1], [-1, -1, -1], [1, 3, 5]])
    layers = [_cache() * (layer + 1) for layer in range(3)]
    expected = [_reference(c, node_slots, accepted) for c in layers]
    compact_kv(layers, node_slots, accepted)
    for got, want in zip(layers, expected):
        assert torch.equal(got, want)


def test_combined_kv_tensor_with_slot_dim_and_views():
    # vLLM-like [2, num_blocks, block_size, heads, dim] viewed as [2, num_slots, heads, dim].
    kv = torch.randn(2, 8, 4, 2, 3)
    flat = kv.view(2, 32, 2, 3)
    before = flat.clone()
    node_slots = torch.tensor([[16, 17, 18, 19, 20, 21]])
    accepted = torch.tensor([[0, 3, 5]])
    compact_kv([flat], node_slots, accepted, slot_dim=1)
    assert torch.equal(kv.view(2, 32, 2, 3)[:, 16], before[:, 16])     # in place, not moved
    assert torch.equal(kv.view(2, 32, 2, 3)[:, 17], before[:, 19])
    assert torch.equal(kv.view(2, 32, 2, 3)[:, 18], before[:, 21])


def test_with_acceptance_output_and_tree_layout():
    # End-to-end shape contract: node_slots [B, N] in buffer order, accepted [B, D].
    tree = parse_tree(TREE)
    n, d = tree.num_nodes, tree.max_depth
    node_slots = torch.arange(2 * n).view(2, n) + 1       # slot 0 = the roots' neighbour
    accepted = torch.tensor([[1, 4, -1], [1, 3, 5]])
    assert accepted.shape == (2, d)
    cache = _cache()
    expected = _reference(cache, node_slots, accepted)
    compact_kv([cache], node_slots, accepted)
    assert torch.equal(cache, expected)


def test_nothing_to_copy_is_a_no_op():
    cache = _cache()
    copy_slots([cache], torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    assert torch.equal(cache, _cache())
