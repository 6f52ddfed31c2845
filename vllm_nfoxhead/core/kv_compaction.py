"""Moving the accepted tree nodes' KV entries onto consecutive positions.

Layout assumed (the vLLM integration must write the tree this way): for a
request with context length ctx (the root, i.e. the previous bonus token, sits
at sequence index ctx), the verification writes

    root   at the slot of sequence index ctx          (never moved)
    node i at the slot of sequence index ctx + 1 + i   -> node_slots[b, i]

i.e. nodes in buffer (depth, lexicographic) order, one slot each, while their
RoPE positions are ctx + depth (tree.position_offsets): slot order and position
differ inside a tree. After acceptance of nodes n_1..n_a (depth 1..a), the
sequence continues with n_k at sequence index ctx + k, so:

    destination of the k-th accepted node (k = 1..a) = node_slots[b, k-1]
    source                                            = node_slots[b, n_k]

Since n_k has depth k, n_k >= k-1: a source never precedes its destination in
buffer order, yet a source slot may be another pair's destination, so all
sources are read before any write. Entries already in place (n_k == k-1) are
not copied. Slots past ctx + a hold rejected nodes and are simply overwritten
by the next step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def compaction_pairs(node_slots: torch.Tensor,
                     accepted_nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (source, destination) slot pairs for a batch; compute once per step, reuse per layer.

    node_slots     [B, N] int   slot each node was written to (root column excluded).
    accepted_nodes [B, D] int   Acceptance.accepted_nodes (node indices, -1 padded).
    Returns (src [M], dst [M]) int64, pairs with src != dst only.
    """
    accepted = accepted_nodes.long()
    valid = accepted >= 0                                           # [B, D]
    slots = node_slots.long()
    src = slots.gather(1, accepted.clamp(min=0))                    # [B, D]
    dst = slots[:, : accepted.shape[1]]                             # [B, D]: nodes 0..D-1
    move = valid & (src != dst)
    return src[move], dst[move]


def copy_slots(caches: Sequence[torch.Tensor], src: torch.Tensor, dst: torch.Tensor,
               slot_dim: int = 0) -> None:
    """In place, for each cache tensor: cache[dst] = cache[src] along `slot_dim`, reading all first.

    caches: tensors whose `slot_dim` indexes flattened slots (num_blocks * block_size),
    e.g. per layer K and V viewed as [num_slots, heads, head_dim], or a combined
    [2, num_slots, heads, head_dim] with slot_dim=1. Views are fine: writes land
    in the underlying storage. Destinations must be distinct (they are, per
    compaction_pairs, since requests own disjoint slots).
    """
    if src.numel() == 0:
        return
    for cache in caches:
        s, d = src.to(cache.device), dst.to(cache.device)
        moved = cache.index_select(slot_dim, s)     # a copy: every source read before writing
        cache.index_copy_(slot_dim, d, moved)


def compact_kv(caches: Sequence[torch.Tensor], node_slots: torch.Tensor,
               accepted_nodes: torch.Tensor, slot_dim: int = 0) -> None:
    """compaction_pairs + copy_slots: make the accepted path contiguous in every cache."""
    src, dst = compaction_pairs(node_slots, accepted_nodes)
    copy_slots(caches, src, dst, slot_dim)
