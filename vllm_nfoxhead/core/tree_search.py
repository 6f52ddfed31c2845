"""Build the tree that maximises expected accepted length from per-head top-k accuracies.

acc[k][r] = probability that head k's rank-r token is the correct next-but-k
token (per rank, not cumulative; see from_cumulative). Treating heads as
independent, a node with path [r0, .., rd] is accepted with probability
prod_j acc[j][rj], and the expected number of accepted nodes per step is the
sum of that over the nodes (same-depth nodes are mutually exclusive events).
A child is never worth more than its parent, so adding the most valuable
frontier node, N times (best-first, Medusa's gen_results.py), yields the best
N-node tree, and the insertion order gives the best tree of every size at once.

The command line around it is vllm_nfoxhead.tools.tree_builder.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.tree import DEFAULT_TOPK, MAX_TREE_NODES, Path, Tree, parse_tree

Accuracies = Sequence[Sequence[float]]


@dataclass(frozen=True)
class BuiltTree:
    """A tree and its expected accepted nodes per step (tokens per step = 1 + that)."""

    tree: Tree
    expected_accept: float


@dataclass(frozen=True)
class SizeChoice:
    """The size that maximises expected tokens per unit time under a cost table."""

    built: BuiltTree
    cost: float               # interpolated cost(N), relative to one plain decoding step
    tokens_per_time: float    # (1 + expected_accept) / cost


def from_cumulative(topk_acc: Accuracies) -> list[list[float]]:
    """Cumulative top-i accuracies (as training logs report) -> per-rank accuracies."""
    return [[row[0]] + [max(0.0, row[i] - row[i - 1]) for i in range(1, len(row))]
            for row in topk_acc]


def grow(acc: Accuracies, max_nodes: int, max_depth: int | None = None,
         topk: int = DEFAULT_TOPK) -> list[tuple[Path, float]]:
    """Best-first insertion order: up to max_nodes (path, acceptance probability) pairs.

    Depth <= min(max_depth, number of heads); children per node <= min(topk, ranks given).
    Ties go to the shallower, then lexicographically smaller path (deterministic).
    """
    acc = _checked(acc)
    depth_limit = len(acc) if max_depth is None else min(max_depth, len(acc))
    frontier: list[tuple[float, int, Path]] = []

    def push_children(path: Path, value: float) -> None:
        d = len(path)
        if d < depth_limit:
            for r, a in enumerate(acc[d][:topk]):
                heapq.heappush(frontier, (-value * a, d + 1, path + (r,)))

    push_children((), 1.0)
    order: list[tuple[Path, float]] = []
    while frontier and len(order) < max_nodes:
        neg_value, _, path = heapq.heappop(frontier)
        order.append((path, -neg_value))
        push_children(path, -neg_value)
    return order


def build_tree(acc: Accuracies, num_nodes: int, max_depth: int | None = None,
               topk: int = DEFAULT_TOPK) -> BuiltTree:
    """The num_nodes-node tree with the largest expected accepted length."""
    if not 1 <= num_nodes <= MAX_TREE_NODES:
        raise NFoxHeadError(f"tree size {num_nodes} is out of range",
                            f"ask for 1..{MAX_TREE_NODES} nodes")
    order = grow(acc, num_nodes, max_depth, topk)
    if len(order) < num_nodes:
        raise NFoxHeadError(f"only {len(order)} nodes fit the heads' depth and ranks",
                            f"ask for at most {len(order)} nodes or give more heads/ranks")
    return _built(order)


def expected_accept(paths: Sequence[Sequence[int]], acc: Accuracies) -> float:
    """Expected accepted nodes per step of any tree (paths) under accuracies acc."""
    acc = _checked(acc)
    total = 0.0
    for path in paths:
        value = 1.0
        for depth, rank in enumerate(path):
            value *= acc[depth][rank] if depth < len(acc) and rank < len(acc[depth]) else 0.0
        total += value
    return total


def interpolate_cost(cost_per_tokens: Mapping[int, float], n: int) -> float:
    """cost(n), linear between the measured sizes; n must lie within them."""
    points = sorted(cost_per_tokens.items())
    if not points[0][0] <= n <= points[-1][0]:
        raise ValueError(f"n={n} outside the measured sizes {points[0][0]}..{points[-1][0]}")
    for (n0, c0), (n1, c1) in zip(points, points[1:]):
        if n0 <= n <= n1:
            return c0 + (c1 - c0) * (n - n0) / (n1 - n0)
    return points[0][1]  # a single measured point


def choose_size(acc: Accuracies, cost_per_tokens: Mapping[int, float],
                max_depth: int | None = None, topk: int = DEFAULT_TOPK,
                max_nodes: int = MAX_TREE_NODES) -> SizeChoice:
    """The N maximising (1 + expected_accept(N)) / cost(N) over the measured range of N.

    cost_per_tokens maps N (draft nodes; N+1 tokens verified) to the measured time
    of that verification relative to one plain step; N between measured sizes is
    interpolated linearly, N outside them is not considered. Ties: smaller N.
    """
    costs = checked_costs(cost_per_tokens)
    lo, hi = max(1, min(costs)), min(max(costs), max_nodes)
    order = grow(acc, hi, max_depth, topk)
    best: SizeChoice | None = None
    expected = 0.0
    for n, (_, value) in enumerate(order, start=1):
        expected += value
        if n < lo:
            continue
        cost = interpolate_cost(costs, n)
        rate = (1.0 + expected) / cost
        if best is None or rate > best.tokens_per_time + 1e-12:
            best = SizeChoice(_built(order[:n]), cost, rate)
    if best is None:
        raise NFoxHeadError(f"no tree of {lo}..{hi} nodes fits the heads",
                            "measure costs at sizes the heads can fill")
    return best


def _built(order: list[tuple[Path, float]]) -> BuiltTree:
    tree = parse_tree([list(p) for p, _ in order], topk=1 + max(max(p) for p, _ in order))
    return BuiltTree(tree, sum(v for _, v in order))


def _checked(acc: Accuracies) -> list[list[float]]:
    fix = "give one list per head of per-rank probabilities in [0, 1] summing to <= 1"
    if not isinstance(acc, Sequence) or len(acc) == 0:
        raise NFoxHeadError("accuracies must be a non-empty list (one list per head)", fix)
    rows = []
    for k, row in enumerate(acc):
        if not isinstance(row, Sequence) or len(row) == 0:
            raise NFoxHeadError(f"accuracies of head {k} are not a non-empty list", fix)
        if not all(isinstance(a, (int, float)) and 0.0 <= a <= 1.0 for a in row):
            raise NFoxHeadError(f"accuracies of head {k} hold a value outside [0, 1]", fix)
        if sum(row) > 1.0 + 1e-6:
            raise NFoxHeadError(f"accuracies of head {k} sum to {sum(row):.3f} > 1 "
                                "(cumulative top-k values?)",
                                "pass per-rank values, or --cumulative for top-k accuracies")
        rows.append([float(a) for a in row])
    return rows


def checked_costs(cost_per_tokens: Mapping) -> dict[int, float]:
    """{N drafts: cost relative to one plain step}, validated (a verify_cost table)."""
    fix = 'give a JSON object {"N": cost, ...} with integer N >= 0 and cost > 0'
    if not isinstance(cost_per_tokens, Mapping) or len(cost_per_tokens) == 0:
        raise NFoxHeadError("cost table is empty or not a mapping", fix)
    try:
        costs = {int(n): float(c) for n, c in cost_per_tokens.items()}
    except (TypeError, ValueError):
        raise NFoxHeadError("cost table holds a non-numeric size or cost", fix) from None
    if any(n < 0 or c <= 0 for n, c in costs.items()):
        raise NFoxHeadError("cost table holds a negative size or a non-positive cost", fix)
    return costs
