"""One step of tree verification inside vLLM's model runner (worker process).

The runner builds a `TreeStep` after `_prepare_inputs` for the requests whose
drafts branch (chains need nothing: vLLM verifies them as usual). The same
object is then read by the attention override (tree mask), the sampler (tree
walk) and the KV compaction, and cleared when the step's drafts are proposed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from vllm_nfoxhead.core.tree import Tree, TreeBuffers


@dataclass
class TreeRequest:
    """A request whose query rows this step are [root, node 0, ..., node n-1]."""

    batch_index: int
    start: int  # first query row of the request (the root: its last sampled token)
    ctx: int  # tokens already in the KV cache; the root's position
    num_nodes: int  # n drafted nodes scheduled (a parent-first prefix of the tree)
    buffers: TreeBuffers  # of the whole tree; rows beyond n are absent this step
    accepted: list[int] = field(default_factory=list)  # node indices kept, set by the sampler
    tree: Tree | None = None  # the drafted tree (buffers on other devices come from it)
    _additive: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_rows(self) -> int:
        """Query rows of the request this step: the root and its n nodes."""
        return self.num_nodes + 1

    def buffers_on(self, device: torch.device) -> TreeBuffers:
        """The tree's buffers on `device` (cached per tree and device)."""
        if self.buffers.depth.device == torch.device(device):
            return self.buffers
        if self.tree is None:
            raise ValueError(f"tree buffers are on {self.buffers.depth.device}, needed on {device}, "
                             "and the request carries no tree to rebuild them from")
        return self.tree.buffers(device)

    @property
    def mask(self) -> torch.Tensor:
        """[n+1, n+1] bool: a row sees the root, its ancestors and itself."""
        return self.buffers.attn_mask[: self.num_rows, : self.num_rows]

    def additive_mask(self, group: int, device: torch.device) -> torch.Tensor:
        """[group*(n+1), ctx+n+1] float32: 0 where a row sees a position (the whole
        prefix, then `mask`), -inf elsewhere; rows repeat per query head of a KV
        head. Built once per step and shared by all layers."""
        if self._additive is None or self._additive.shape[0] != group * self.num_rows:
            sees = torch.cat([torch.ones(self.num_rows, self.ctx, dtype=torch.bool), self.mask.cpu()], dim=1)
            additive = torch.zeros(sees.shape).masked_fill(~sees, float("-inf"))
            self._additive = additive.repeat(group, 1).to(device)
        return self._additive


@dataclass
class TreeStep:
    """The tree requests of one step, and what the attention override records for the KV compaction."""

    requests: list[TreeRequest]
    slot_mapping: torch.Tensor | None = None  # [num_tokens] saved by the attention override
    layers: dict[int, tuple[Any, Any, torch.Tensor]] = field(default_factory=dict)  # id -> (layer, impl, kv_cache)


_current: TreeStep | None = None


def current_step() -> TreeStep | None:
    """The step being verified (None outside a tree step)."""
    return _current


def set_current_step(step: TreeStep | None) -> None:
    """Publish this step's tree requests (None: clear them once the step's drafts are proposed)."""
    global _current
    _current = step


def is_chain(parents: list[int]) -> bool:
    """Whether nodes with these parent indices (-1 = root) form one chain."""
    return all(p == j - 1 for j, p in enumerate(parents))


def refuse_unsupported(features: Iterable[tuple[str, bool]], where: str) -> None:
    """Raise if any (feature, present) is present: a tree attention path (`where`: "on CPU", ...)
    that cannot reproduce that feature's masking would silently verify against wrong rows."""
    unsupported = [name for name, present in features if present]
    if unsupported:
        raise RuntimeError(
            f"NFoxHead: tree verification does not support {', '.join(unsupported)} {where}. "
            "Fix: drop 'tree' to use chain drafting."
        )


def build_step(runner: Any, scheduler_output: Any, tree_of: dict[str, Tree]) -> TreeStep:
    """Find this step's tree requests and rewrite their RoPE positions to ctx + depth.

    Slots were already assigned from consecutive positions, so every node keeps
    a distinct KV slot; only the rotary position changes.
    """
    requests = []
    batch = runner.input_batch
    spec = scheduler_output.scheduled_spec_decode_tokens
    starts = runner.query_start_loc.np
    for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
        drafts, tree = spec.get(req_id), tree_of.get(req_id)
        if not drafts or tree is None:
            continue
        n = len(drafts)  # the scheduler may cut the tail: a parent-first prefix is still a tree
        buffers = tree.buffers("cpu")
        if is_chain(buffers.parent[:n].tolist()):
            continue
        start = int(starts[i])
        if int(starts[i + 1]) - start != n + 1:
            continue  # not a plain verification step for this request
        ctx = int(batch.num_computed_tokens_cpu[i])
        rows = torch.arange(start, start + n + 1, device=runner.positions.device)  # [n+1] int64
        depth = buffers.position_offsets[: n + 1].to(runner.positions.device)  # [n+1] int64: 0, node depths
        runner.positions[rows] = ctx + depth
        requests.append(TreeRequest(i, start, ctx, n, buffers, tree=tree))
    return TreeStep(requests)
