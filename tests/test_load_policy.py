"""The load policy (core, no vLLM): draft shapes shrink as the batch makes verification costly."""

from __future__ import annotations

import pytest

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.load_policy import CPU_DEFAULT_COST, LoadPolicy

ACC = [[0.7, 0.1], [0.5, 0.1], [0.4, 0.1], [0.3, 0.1]]
TREE = [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]


def test_expected_tokens_of_chains_and_tree():
    policy = LoadPolicy(ACC, CPU_DEFAULT_COST, 4, TREE)
    by_name = {(s.kind, s.nodes): s.expected_tokens for s in policy.shapes}
    assert by_name[("none", 0)] == 1.0
    assert by_name[("chain", 1)] == pytest.approx(1.7)
    assert by_name[("chain", 2)] == pytest.approx(1.7 + 0.35)
    # tree: [0] .7, [1] .1, [0,0] .35, [0,1] .07, [1,0] .05, [0,0,0] .14, [0,0,0,0] .042
    assert by_name[("tree", 7)] == pytest.approx(1 + 0.7 + 0.1 + 0.35 + 0.07 + 0.05 + 0.14 + 0.042)


def test_cost_interpolates_and_extends_last_slope():
    policy = LoadPolicy(ACC, {1: 1.2, 3: 2.0}, 4)
    assert policy.cost(1) == 1.0          # one token: one plain step, by definition
    assert policy.cost(2) == pytest.approx(1.2)
    assert policy.cost(3) == pytest.approx(1.6)
    assert policy.cost(4) == pytest.approx(2.0)
    assert policy.cost(6) == pytest.approx(2.8)


def test_free_verification_keeps_the_tree_at_any_batch():
    flat = {1: 1.0, 64: 1.0}  # a GPU far from compute-bound
    policy = LoadPolicy(ACC, flat, 4, TREE)
    assert all(policy.choose(b).kind == "tree" for b in (1, 4, 16, 64))


def test_costly_verification_shrinks_then_stops_drafting():
    policy = LoadPolicy(ACC, CPU_DEFAULT_COST, 4, TREE)
    shapes = [policy.choose(b) for b in range(1, 129)]
    nodes = [s.nodes for s in shapes]
    assert shapes[0].kind == "tree"
    assert nodes == sorted(nodes, reverse=True)   # never grows with the batch
    assert shapes[-1].kind == "none"
    # each choice really is the best rate among the candidates
    for b in (1, 3, 16, 100):
        best = max(policy.rate(s, b) for s in policy.shapes)
        assert policy.rate(policy.choose(b), b) == pytest.approx(best, rel=1e-3)


def test_describe_names_the_ranges():
    text = LoadPolicy(ACC, {1: 1.5, 4: 3.0}, 4).describe(8)
    assert text.startswith("chain(1) at 1") and "none from" in text


@pytest.mark.parametrize("table", [{}, {"0": 1.0}, {"x": 1}, {"2": -1.0}])
def test_bad_cost_tables_are_refused(table):
    with pytest.raises(NFoxHeadError, match="cost table"):
        LoadPolicy(ACC, table, 4)


def test_tree_overhead_moves_batch_one_to_the_chain():
    """Tree verification's own cost (CPU mask fix-up) is charged per tree request."""
    free = LoadPolicy(ACC, CPU_DEFAULT_COST, 4, TREE)
    assert free.choose(1).kind == "tree"
    costly = LoadPolicy(ACC, CPU_DEFAULT_COST, 4, TREE, tree_overhead=1.1)
    assert costly.choose(1).kind == "chain"
    tree = next(s for s in costly.shapes if s.kind == "tree")
    assert costly.rate(tree, 2) == pytest.approx(2 * tree.expected_tokens / (costly.cost(16) + 2.2))


def test_lookup_only_is_offered_but_never_the_models_pick():
    """Its yield depends on the prompts, so only the run-time tuner measures and picks it."""
    policy = LoadPolicy(ACC, {1: 5.0, 64: 50.0}, 4, TREE, lookup=True)  # a step of 2 tokens: 5 plain ones
    assert [s.kind for s in policy.shapes][:2] == ["none", "lookup"]
    assert policy.choose(1).kind == "none"
    assert all(policy.choose(b).kind != "lookup" for b in range(1, 65))
    assert "lookup" not in policy.describe(64)
