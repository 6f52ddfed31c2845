"""One step of tree verification inside vLLM's model runner (worker process).

The runner builds a `TreeStep` after `_prepare_inputs` for the requests whose
drafts branch (chains need nothing: vLLM verifies them as usual). The same
object is then read by the attention override (tree mask), the sampler (tree
walk) and the KV compaction, and cleared when the step's drafts are proposed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TreeRequest:
    """A request whose query rows this step are [root, node 0, ..., node n-1]."""

    batch_index: int
    start: int  # first query row of the request (the root: its last sampled token)
    ctx: int  # tokens already in the KV cache; the root's position
    parents: list[int]  # parent node of each node, -1 for the root
    mask: torch.Tensor  # [n+1, n+1] bool: row sees column (root, ancestors, itself)
    depth: torch.Tensor  # [n+1] int64: 0 for the root
    accepted: list[int] = field(default_factory=list)  # node indices kept, set by the sampler

    @property
    def num_rows(self) -> int:
        return len(self.parents) + 1


@dataclass
class TreeStep:
    requests: list[TreeRequest]
    slot_mapping: torch.Tensor | None = None  # [num_tokens] saved by the attention override
    layers: dict[int, tuple[Any, Any, torch.Tensor]] = field(default_factory=dict)  # id -> (layer, impl, kv_cache)


_current: TreeStep | None = None


def current_step() -> TreeStep | None:
    return _current


def set_current_step(step: TreeStep | None) -> None:
    global _current
    _current = step


def tree_rows(parents: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents (node order, parents first) -> mask [n+1, n+1] bool and depth [n+1] int64."""
    n = len(parents)
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    depth = torch.zeros(n + 1, dtype=torch.long)
    mask[0, 0] = True
    for j, p in enumerate(parents):
        row = j + 1
        mask[row] = mask[p + 1]
        mask[row, row] = True
        depth[row] = depth[p + 1] + 1
    return mask, depth


def is_chain(parents: list[int]) -> bool:
    return all(p == j - 1 for j, p in enumerate(parents))


def build_step(runner: Any, scheduler_output: Any, parents_of: dict[str, list[int]]) -> TreeStep:
    """Find this step's tree requests and rewrite their RoPE positions to ctx + depth.

    Slots were already assigned from consecutive positions, so every node keeps
    a distinct KV slot; only the rotary position changes.
    """
    requests = []
    batch = runner.input_batch
    spec = scheduler_output.scheduled_spec_decode_tokens
    starts = runner.query_start_loc.np
    for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
        drafts = spec.get(req_id)
        parents = parents_of.get(req_id)
        if not drafts or parents is None:
            continue
        parents = parents[: len(drafts)]  # the scheduler may cut the tail: still a tree
        if is_chain(parents):
            continue
        start = int(starts[i])
        if int(starts[i + 1]) - start != len(parents) + 1:
            continue  # not a plain verification step for this request
        ctx = int(batch.num_computed_tokens_cpu[i])
        mask, depth = tree_rows(parents)
        rows = torch.arange(start, start + len(parents) + 1, device=runner.positions.device)
        runner.positions[rows] = ctx + depth.to(runner.positions.device)
        requests.append(TreeRequest(i, start, ctx, parents, mask, depth))
    return TreeStep(requests)
