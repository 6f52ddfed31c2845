"""How much to draft per step, given how many requests share it.

Verifying drafts is nearly free while the forward pass is memory-bound (one
request on a GPU) and costly once it is compute-bound (many requests, or a
small CPU). Each step the proposer asks `LoadPolicy.choose(batch)` for a draft
shape: the whole tree, a chain of k tokens, or nothing, whichever yields the
most tokens per unit of time:

    rate(shape) = batch * expected_tokens(shape) / cost(batch * (nodes(shape) + 1))

plus, for a tree, `tree_overhead` plain steps per request: what tree verification
costs beyond scoring its tokens (the mask fix-up of attention, per-level drafting,
KV compaction), which a plain `verify_cost` table does not see.

expected_tokens comes from the heads' measured per-rank accuracies (tokens per
step, bonus token included); cost(T) is the time to score T tokens relative to
one plain single-request step (a `verify_cost` table, linearly interpolated and
extrapolated past its last point). At high load the answer shrinks to a short
chain and then to no drafts at all: speculation then costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.tree_search import Accuracies, checked_costs, expected_accept

# Measured on 2026-11-29 with `python -m vllm_nfoxhead.tools.verify_cost --sizes 1 2 4 8 12 16 24 32
# 64 128 --repeats 21` for SmolLM2-135M (bf16) on a 2-core x86 CPU with AVX512-BF16 (N drafts ->
# cost of scoring N+1 tokens); used on CPUs with native bf16 when no cost table is given.
# Measure yours: it is hardware-bound.
CPU_DEFAULT_COST: dict[int, float] = {1: 1.04, 2: 1.10, 4: 1.15, 8: 1.24, 12: 1.30, 16: 1.44,
                                      24: 1.61, 32: 1.99, 64: 3.05, 128: 4.96}
# Measured on 2026-11-29 with `python -m vllm_nfoxhead.tools.bench --num-prompts 10 --concurrency 1`:
# an 11-node tree step of the shipped heads took 2.4 plain steps where the table above
# predicts 1.28 for its 12 tokens (the chain's step matched the table: 1.15). On CPU the
# tree's mask fix-up recomputes attention over the whole prefix per layer and request.
CPU_TREE_OVERHEAD = 1.1
# The same two measurements on 2026-12-02 on a 2-core AMD EPYC with AVX2 only, where vLLM
# serves in float32 (dtype_choice.py) on one torch thread: `verify_cost ... --repeats 41`,
# and a 10-prompt bench with the policy off (the 11-node tree with lookup: 2.30 plain steps
# against the table's 1.91). Scoring 2 tokens already costs 1.65 plain steps here, so heads
# that add about half a token per step do not pay, and the tuner's 'lookup' shape matters.
CPU_FP32_COST: dict[int, float] = {1: 1.65, 2: 1.99, 4: 1.66, 8: 1.88, 12: 1.92, 16: 2.06,
                                   24: 2.26, 32: 2.57, 64: 3.60, 128: 5.81}
CPU_FP32_TREE_OVERHEAD = 0.4


def cpu_defaults(bf16_native: bool) -> tuple[dict[int, float], float]:
    """(cost table, tree overhead) measured on the project's CPU of this kind."""
    return (CPU_DEFAULT_COST, CPU_TREE_OVERHEAD) if bf16_native else (CPU_FP32_COST, CPU_FP32_TREE_OVERHEAD)


@dataclass(frozen=True)
class DraftShape:
    """What to draft this step: 'tree', 'chain' (`nodes` tokens), 'lookup' (prompt-lookup
    continuations only, no heads: requests without a match draft nothing) or 'none'."""

    kind: str
    nodes: int
    expected_tokens: float  # per request and step, bonus token included

    @property
    def name(self) -> str:
        """As logged: 'none', 'lookup', 'chain(2)', 'tree(11)'."""
        return self.kind if self.kind in ("none", "lookup") else f"{self.kind}({self.nodes})"


LOOKUP_ONLY = DraftShape("lookup", 0, 1.0)


class LoadPolicy:
    """Picks the draft shape with the best tokens-per-time for a batch size."""

    def __init__(self, rank_accuracy: Accuracies, cost_per_drafts: Mapping[int, float],
                 num_chain: int, tree_paths: Sequence[Sequence[int]] | None = None,
                 tree_overhead: float = 0.0, lookup: bool = False) -> None:
        self.tree_overhead = tree_overhead  # plain steps per tree request and step
        self.shapes = [DraftShape("none", 0, 1.0)]
        if lookup:  # its yield is prompt-dependent: only measured (rate_tuner), never the model's pick
            self.shapes.append(LOOKUP_ONLY)
        for k in range(1, num_chain + 1):
            self.shapes.append(DraftShape("chain", k, 1.0 + expected_accept([[0] * d for d in range(1, k + 1)],
                                                                             rank_accuracy)))
        if tree_paths:
            self.shapes.append(DraftShape("tree", len(tree_paths), 1.0 + expected_accept(tree_paths, rank_accuracy)))
        # cost of scoring T tokens = table entry for N = T - 1 drafts; 1 token = 1 plain step
        costs = {n + 1: c for n, c in checked_costs(cost_per_drafts).items() if n >= 1}
        if not costs:
            raise NFoxHeadError("the cost table has no entry for N >= 1 drafts",
                                "write one with `python -m vllm_nfoxhead.tools.verify_cost --model BASE --out cost.json`")
        self._points = [(1, 1.0)] + sorted(costs.items())
        self._memo: dict[int, DraftShape] = {}

    def cost(self, tokens: int) -> float:
        """Time to score `tokens` tokens in one step, relative to one plain step."""
        pts = self._points
        for (t0, c0), (t1, c1) in zip(pts, pts[1:]):
            if tokens <= t1:
                return c0 + (c1 - c0) * (tokens - t0) / (t1 - t0)
        (t0, c0), (t1, c1) = pts[-2], pts[-1]  # beyond the table: extend the last slope
        return c1 + (c1 - c0) * (tokens - t1) / (t1 - t0)

    def rate(self, shape: DraftShape, batch: int) -> float:
        """Modelled tokens per plain-step time of `shape` at `batch` requests."""
        extra = self.tree_overhead * batch if shape.kind == "tree" else 0.0
        return batch * shape.expected_tokens / (self.cost(batch * (shape.nodes + 1)) + extra)

    def choose(self, batch: int) -> DraftShape:
        """The best shape for `batch` decoding requests (ties go to the smaller shape)."""
        if batch not in self._memo:
            best = self.shapes[0]
            for shape in self.shapes[1:]:
                if shape.kind == "lookup":
                    continue
                if self.rate(shape, batch) > self.rate(best, batch) * 1.0001:
                    best = shape
            self._memo[batch] = best
        return self._memo[batch]

    def describe(self, max_batch: int = 64) -> str:
        """The plan as batch ranges, e.g. 'tree(16) at 1-2, chain(2) at 3-9, none from 10'."""
        spans: list[tuple[DraftShape, int, int]] = []
        for b in range(1, max_batch + 1):
            shape = self.choose(b)
            if spans and spans[-1][0] == shape:
                spans[-1] = (shape, spans[-1][1], b)
            else:
                spans.append((shape, b, b))
        parts = []
        for shape, lo, hi in spans:
            parts.append(f"{shape.name} from {lo}" if hi == max_batch else
                         f"{shape.name} at {lo}" + (f"-{hi}" if hi > lo else ""))
        return ", ".join(parts) + " concurrent requests"
