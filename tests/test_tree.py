"""Tree parsing, validation, buffers and TreeDrafter (pure torch, CPU, fast)."""

from __future__ import annotations

import json

import pytest
import torch

from vllm_nfoxhead.core.drafting import ChainDrafter, Drafter
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.tree import MAX_TREE_NODES, Tree, TreeDrafter, parse_tree
from vllm_nfoxhead.core.tree_presets import PRESETS

# Given out of order on purpose: buffers sort by (depth, lexicographic).
SMALL = [[0, 0, 0], [1], [0], [0, 1], [1, 0], [0, 0]]
# Sorted nodes: 0:[0] 1:[1] 2:[0,0] 3:[0,1] 4:[1,0] 5:[0,0,0]


def test_small_tree_buffers_hand_checked():
    tree = parse_tree(SMALL)
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    assert (tree.num_nodes, tree.max_depth, tree.width, tree.num_leaves) == (6, 3, 2, 3)
    b = tree.buffers()
    assert b.depth.tolist() == [1, 1, 2, 2, 2, 3]
    assert b.parent.tolist() == [-1, -1, 0, 0, 1, 2]
    assert b.rank.tolist() == [0, 1, 0, 1, 0, 0]
    assert b.position_offsets.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert b.attn_mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],   # root
        [1, 1, 0, 0, 0, 0, 0],   # [0]
        [1, 0, 1, 0, 0, 0, 0],   # [1]
        [1, 1, 0, 1, 0, 0, 0],   # [0,0]
        [1, 1, 0, 0, 1, 0, 0],   # [0,1]
        [1, 0, 1, 0, 0, 1, 0],   # [1,0]
        [1, 1, 0, 1, 0, 0, 1],   # [0,0,0]
    ]
    assert b.topk_index.tolist() == [0, 1, 2, 3, 2, 4]  # (depth-1)*width + rank
    assert b.retrieve_paths.tolist() == [[0, 3, -1], [1, 4, -1], [0, 2, 5]]
    assert b.node_paths.tolist() == [[0, -1, -1], [1, -1, -1], [0, 2, -1], [0, 3, -1],
                                     [1, 4, -1], [0, 2, 5]]
    assert b.children.tolist() == [[0, 1], [2, 3], [4, -1], [5, -1], [-1, -1], [-1, -1],
                                   [-1, -1]]
    assert torch.equal(b.ancestors, b.attn_mask[1:, 1:])
    for t in (b.depth, b.parent, b.position_offsets, b.topk_index, b.retrieve_paths):
        assert t.dtype == torch.long


def test_mc_sim_7b_63_matches_reference_table():
    tree = parse_tree("mc_sim_7b_63", num_heads=4)
    b = tree.buffers()
    assert (tree.num_nodes, tree.max_depth, tree.num_leaves) == (63, 4, 42)
    assert tree.nodes_per_depth() == [10, 28, 23, 2]
    assert b.attn_mask.shape == (64, 64) and b.retrieve_paths.shape == (42, 4)
    assert b.position_offsets[1:].tolist() == [len(p) for p in tree.paths]
    _check_consistent(tree)


# name: (nodes, depth, leaves, nodes per depth or None) from the reference table (section 3).
TABLE = {
    "mc_sim_7b_63": (63, 4, 42, [10, 28, 23, 2]),
    "vicuna_7b_stage2": (63, 4, 42, [10, 23, 23, 7]),
    "vicuna_7b_stage1": (63, 4, 44, None),
    "vicuna_13b_stage2": (63, 4, 42, None),
    "vicuna_13b_stage1": (63, 4, 44, None),
    "vicuna_33b_stage2": (63, 4, 43, None),
    "vicuna_33b_stage1": (63, 3, 46, None),
    "zephyr_stage2": (63, 4, 44, [10, 27, 23, 3]),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_valid_and_consistent(name):
    tree = parse_tree(name)
    if name in TABLE:
        nodes, depth, leaves, per_depth = TABLE[name]
        assert (tree.num_nodes, tree.max_depth, tree.num_leaves) == (nodes, depth, leaves)
        if per_depth:
            assert tree.nodes_per_depth() == per_depth
    _check_consistent(tree)


def _check_consistent(tree: Tree) -> None:
    """Every buffer agrees with a direct reading of the paths."""
    b = tree.buffers()
    index = {p: i for i, p in enumerate(tree.paths)}
    for i, p in enumerate(tree.paths):
        anc = {index[p[:j]] for j in range(1, len(p) + 1)}
        row = b.attn_mask[i + 1]
        assert row[0] and {j - 1 for j in range(1, tree.num_nodes + 1) if row[j]} == anc
        assert b.parent[i] == (index[p[:-1]] if len(p) > 1 else -1)
        assert b.children[b.parent[i] + 1, p[-1]] == i
    leaves = [i for i, p in enumerate(tree.paths) if not any(q[:-1] == p for q in tree.paths)]
    for row, leaf in zip(b.retrieve_paths.tolist(), leaves):
        real = [j for j in row if j >= 0]
        assert real == b.node_paths[leaf][: len(real)].tolist() and real[-1] == leaf
        assert [tree.paths[j] for j in real] == [tree.paths[leaf][:d] for d in range(1, len(real) + 1)]


def test_parse_spellings_agree():
    listed = parse_tree([[0], [0, 0], [1]])
    assert parse_tree("[[0],[0,0],[1]]") == listed
    assert parse_tree(" [[1], [0], [0, 0]] ") == listed
    assert parse_tree(((0,), (1,), (0, 0))) == listed
    assert parse_tree(listed) == listed
    assert parse_tree("chain_4").to_list() == [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]]
    assert json.loads(json.dumps(listed.to_list())) == [[0], [1], [0, 0]]


@pytest.mark.parametrize("spec, kwargs, words", [
    ("no_such_tree", {}, "unknown tree preset"),
    ("[[0], [0, 0]", {}, "does not parse"),
    ([], {}, "non-empty list"),
    (5, {}, "non-empty list"),
    ([[0], []], {}, "not a non-empty list"),
    ([[0], 3], {}, "not a non-empty list"),
    ([[0], [0.5]], {}, "non-integer"),
    ([[0], [True]], {}, "non-integer"),
    ([[0], [-1]], {}, "negative"),
    ([[0], [1], [0]], {}, "appears twice"),
    ([[0], [1, 0, 0]], {}, "lacks its prefix [1, 0]"),
    ([[0], [0, 0], [0, 0, 0]], {"num_heads": 2}, "depth 3 exceeds the 2 heads"),
    ([[r] for r in range(5)], {"max_nodes": 4}, "more than the limit 4"),
    ([[0], [10]], {}, "rank 10"),
    ([[0], [3]], {"topk": 3}, "only top-3"),
])
def test_validation_errors(spec, kwargs, words):
    with pytest.raises(NFoxHeadError) as err:
        parse_tree(spec, **kwargs)
    message = str(err.value)
    assert words in message and "Fix:" in message and "\n" not in message


def test_default_size_limit_is_vllm_max_spec_len():
    wide = [[a] for a in range(10)] + [[a, b] for a in range(10) for b in range(10)]
    deep = [[0] * d for d in range(3, 22)]          # 110 + 19 = 129 nodes
    assert MAX_TREE_NODES == 128
    assert parse_tree(wide + deep[:-1]).num_nodes == 128
    with pytest.raises(NFoxHeadError, match="more than the limit 128"):
        parse_tree(wide + deep)


def test_buffers_cached_per_device():
    tree = parse_tree("mc_sim_16")
    assert tree.buffers() is tree.buffers("cpu")
    assert parse_tree("mc_sim_16").buffers() is tree.buffers()


def test_tree_drafter_selects_rank_of_head_at_depth():
    tree = parse_tree(SMALL)
    drafter: Drafter = TreeDrafter(tree)   # satisfies the protocol of drafting.py
    assert drafter.num_heads_used == 3
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 50)          # K=5 heads (more than used), B=4, V=50
    drafts = drafter.draft(logits)
    assert drafts.shape == (4, 6) and drafts.dtype == torch.long
    order = logits.argsort(dim=-1, descending=True)   # [K, B, V]
    for i, path in enumerate(tree.paths):
        assert torch.equal(drafts[:, i], order[len(path) - 1, :, path[-1]])


def test_tree_drafter_chain_equals_argmax():
    logits = torch.randn(4, 3, 20)
    drafts = TreeDrafter(parse_tree("chain_4")).draft(logits)
    assert torch.equal(drafts, logits.argmax(-1).T)


def test_mc_sim_drafter_and_half_precision():
    tree = parse_tree("mc_sim_7b_63")
    logits = torch.randn(5, 2, 1000).to(torch.bfloat16)
    drafts = TreeDrafter(tree).draft(logits)
    top = logits.float().topk(10, dim=-1).indices
    expected = torch.stack([top[len(p) - 1, :, p[-1]] for p in tree.paths], dim=1)
    assert torch.equal(drafts, expected)


def _context_step(vocab: int = 50):
    """A HeadStep whose rank-r token is (sum of context + request row + r) mod vocab."""
    def step(k, rows, context):
        base = (context.sum(1) + rows) % vocab
        logits = torch.zeros(len(rows), vocab)
        for r in range(3):
            logits[torch.arange(len(rows)), (base + r) % vocab] = 10.0 - r
        return logits
    return step


def test_conditioned_tree_drafter_hand_checked():
    """Each node's token comes from head d run on *its parent's* path."""
    drafts = TreeDrafter(parse_tree(SMALL)).draft_conditioned(_context_step(), torch.tensor([1, 7]))
    # Request 0, sampled token 1. [0]: 1+0=1, [1]: 2; [0,0],[0,1] from context (1,1): 2, 3;
    # [1,0] from (1,2): 3; [0,0,0] from (1,1,2): 4. Request 1 adds row 1 to each sum.
    assert drafts.tolist() == [[1, 2, 2, 3, 3, 4], [8, 9, 16, 17, 17, 32]]


def test_conditioned_drafters_equal_medusa_when_heads_ignore_context():
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 40)
    step = lambda k, rows, context: logits[k][rows]  # noqa: E731
    first = torch.tensor([5, 6, 7])
    for spec in ("mc_sim_7b_63", SMALL):
        drafter = TreeDrafter(parse_tree(spec))
        assert torch.equal(drafter.draft_conditioned(step, first), drafter.draft(logits))
    chain = ChainDrafter(4)
    assert torch.equal(chain.draft_conditioned(step, first), chain.draft(logits))
    assert chain.draft_conditioned(_context_step(), first, num_tokens=2).tolist() == [[5, 10], [7, 14], [9, 18]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_buffers_and_drafter_on_cuda():
    tree = parse_tree("mc_sim_7b_63")
    b = tree.buffers("cuda")
    assert b.attn_mask.is_cuda and b.topk_index.is_cuda
    drafts = TreeDrafter(tree).draft(torch.randn(4, 2, 100, device="cuda"))
    assert drafts.is_cuda and drafts.shape == (2, 63)
