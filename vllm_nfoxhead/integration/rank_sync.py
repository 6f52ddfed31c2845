"""Keeping the drafter identical on every tensor-parallel rank, through vLLM's TP group.

vLLM runs the custom_class drafter on every TP rank of the last pipeline stage:
drafting calls collectives (embedding all-reduce, logits all-gather) and only
the output rank's drafts reach the scheduler, while every rank verifies them.
Hidden states, weights and token ids are the same on every rank, so drafts are
too, as long as every per-step decision is. The one input that is not shared is
the load tuner's clock (each rank times its own steps), so the step's plan
(draft shape, tree or chain, chain length) is made on TP rank 0 and broadcast.

`check_same` is the guard: every `rank_check_interval` steps the ranks compare a
digest of what they drafted and of the tree layout, and a mismatch stops the
engine with one clear error instead of a hang or silent divergence.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

# Test-only: "RANK:KIND:FACTOR[,...]" multiplies the load tuner's measured times of
# steps that drafted KIND (none, chain, tree, lookup) on that TP rank, to show that
# skewed clocks cannot split the ranks' decisions.
TIMER_SKEW_ENV = "NFOXHEAD_TEST_TIMER_SKEW"


class RankSync:
    """The TP group of this worker (world size 1 when vLLM runs without TP)."""

    def __init__(self) -> None:
        self.group: Any = None
        self.rank, self.world_size = 0, 1
        from vllm.distributed import parallel_state

        if parallel_state.model_parallel_is_initialized():
            self.group = parallel_state.get_tp_group()
            self.rank, self.world_size = self.group.rank_in_group, self.group.world_size
        self.steps = 0

    def share(self, value: Any) -> Any:
        """TP rank 0's `value` on every rank (every rank must call this at the same step)."""
        return value if self.world_size == 1 else self.group.broadcast_object(value, src=0)

    def skew(self, seconds: float, kind: str) -> float:
        """The test hook of TIMER_SKEW_ENV applied to a step of `kind` that took `seconds`."""
        spec = os.environ.get(TIMER_SKEW_ENV)
        if not spec:
            return seconds
        for entry in spec.split(","):
            rank, skewed, factor = entry.split(":")
            if int(rank) == self.rank and skewed == kind:
                seconds *= float(factor)
        return seconds

    def check_same(self, interval: int, drafts: list[list[int]], trees: dict[str, Any]) -> None:
        """Every `interval` calls (0 = never), raise if another TP rank drafted differently."""
        self.steps += 1
        if self.world_size == 1 or interval <= 0 or self.steps % interval:
            return
        import torch.distributed as dist

        mine = draft_digest(drafts, trees)
        digests: list[Any] = [None] * self.world_size
        dist.all_gather_object(digests, mine, group=self.group.cpu_group)
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"NFoxHead: tensor-parallel ranks drafted different tokens or trees at step {self.steps} "
                f"(digests by rank: {', '.join(d[:12] for d in digests)}); their collectives would hang or "
                "their outputs diverge. Report this with your config; to run meanwhile, set "
                "'load_policy': 'static' or drop 'tree'.")


def draft_digest(drafts: list[list[int]], trees: dict[str, Any]) -> str:
    """A short digest of a step's drafts and the tree each request drafted."""
    h = hashlib.sha1()
    h.update(repr(drafts).encode())
    h.update(repr(sorted((req, tree.paths) for req, tree in trees.items())).encode())
    return h.hexdigest()
