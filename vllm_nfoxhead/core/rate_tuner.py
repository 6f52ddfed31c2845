"""Runtime correction of the load policy from measured acceptance and step times.

The load policy's model (per-rank accuracies from training, a verify-cost table)
misjudges real serving: acceptance on live prompts is lower than on a held-out
split, and per-request costs of speculation (drafting, the rejection sampler,
bookkeeping) are not in the cost table. On the project's CPU the model planned
chain(1) at 16 requests, which measured 7% slower than plain decoding.

`RateTuner` chooses, per batch size, the shape with the most tokens per second

    rate(shape, batch) = batch * tokens(shape) / seconds(shape, batch)

from two measurements kept apart because they behave differently:
- seconds per step, per shape and batch size: steady for a given shape, so a
  few steps measure it. Shapes next to the best one (in the order none <
  chain(1) < ... < chain(K) < tree) are probed for `min_samples` steps, again
  after `reprobe_every` steps.
- tokens per request and step, per shape: noisy and content-dependent, so it is
  pooled over all batch sizes and taken counterfactually. A request that drafted
  m tokens and had a accepted tells what every shorter chain would have yielded
  (min(a, k) + 1), so one chain measures all of them without probing. Beyond
  what was drafted the heads' prior (held-out) acceptance fills in. A tree is
  measured when drafted, otherwise it is its prior scaled like the chain's.
  Prompt-lookup drafts are kept apart (their own counterfactual per shape) and
  mixed in by the measured share of requests that found a lookup match.
- 'lookup' (copied continuations only, no heads) is probed wherever it has no
  fresh step times: where verifying a few extra tokens costs much more than
  one (a CPU computing in float32 on one thread: 2 tokens cost 1.65 plain
  steps), heads that add half a token per step lose, while a lookup match
  that adds two or three still wins.
Comparing stale windows of raw tokens/s instead made a first version flip
between chain lengths on every prompt change.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vllm_nfoxhead.core.load_policy import DraftShape

HEADS, LOOKUP, TREE = "heads", "lookup", "tree"  # what drafted a request's tokens


@dataclass
class _Mean:
    """An exponentially decayed mean (effective window about 1 / (1 - decay) values)."""

    decay: float
    total: float = 0.0
    weight: float = 0.0

    def add(self, value: float) -> None:
        self.total = self.total * self.decay + value
        self.weight = self.weight * self.decay + 1.0

    def value(self) -> float | None:
        return self.total / self.weight if self.weight > 0 else None


class RateTuner:
    """Picks a draft shape per batch size from measured step times and acceptance."""

    def __init__(self, shapes: Sequence[DraftShape], prior: Callable[[int], DraftShape],
                 lookup_cap: Callable[[DraftShape], int] | None = None, min_samples: int = 3,
                 window: int = 16, reprobe_every: int = 300, decay: float = 0.998, margin: float = 0.05,
                 on_switch: Callable[[DraftShape, DraftShape, str], None] | None = None) -> None:
        if not shapes:
            raise ValueError("RateTuner needs at least one shape")
        self.shapes = list(shapes)  # ordered from least to most drafting
        self.prior = prior  # the cost model's choice per batch size: where each batch size starts
        self.lookup_cap = lookup_cap or (lambda shape: 0)  # lookup tokens a shape allows
        self.min_samples, self.window, self.reprobe_every = min_samples, window, reprobe_every
        self.margin = margin  # another shape must beat the current one by this fraction
        self.on_switch = on_switch  # told (old, new, in words) whenever a batch size changes shape
        self.chains = [s for s in self.shapes if s.kind == "chain"]
        self.lookup_only = next((s for s in self.shapes if s.kind == "lookup"), None)
        drafting = [s for s in self.shapes if s.kind != "none"]
        self._heads = {s: _Mean(decay) for s in drafting}  # tokens of heads-drafted requests
        self._lookup = {s: _Mean(decay) for s in drafting}  # tokens of lookup-drafted requests
        self._lookup_share = _Mean(decay)  # share of drafting requests that found a lookup match
        self._times: dict[tuple[int, DraftShape], deque[tuple[int, float]]] = {}
        self._steps: dict[int, int] = {}  # steps recorded per batch size
        self._chosen: dict[int, DraftShape] = {}
        self._confirmed: dict[int, DraftShape] = {}  # choices made from measured rates
        # Prior conditional acceptance of chain position j given j-1 accepted, from the model.
        extra = [0.0] + [s.expected_tokens - 1.0 for s in self.chains]
        reach = [extra[j + 1] - extra[j] for j in range(len(self.chains))]  # P(positions 0..j kept)
        self._prior_cond = [reach[j] / reach[j - 1] if j and reach[j - 1] > 0 else (reach[0] if not j else 0.0)
                            for j in range(len(self.chains))]

    # ------------------------------------------------------------------ measuring
    def record_time(self, batch: int, shape: DraftShape, seconds: float) -> None:
        """One step of `batch` requests that verified `shape` drafts took `seconds`."""
        if shape not in self.shapes or seconds <= 0:
            return
        step = self._steps[batch] = self._steps.get(batch, 0) + 1
        samples = self._times.setdefault((batch, shape), deque(maxlen=self.window))
        samples.append((step, seconds))

    def record_request(self, shape: DraftShape, source: str, drafted: int, accepted: int) -> None:
        """A request drafted `drafted` tokens under `shape` (from `source`) and kept `accepted`."""
        if drafted <= 0 or shape not in self.shapes:
            return
        self._lookup_share.add(float(source == LOOKUP))  # under 'lookup', misses come by record_miss
        if source == TREE:
            self._heads[shape].add(1.0 + accepted)
        elif source == HEADS:
            for chain in self.chains:
                self._heads[chain].add(self._counterfactual(source, drafted, accepted, chain.nodes))
        else:
            for other, mean in self._lookup.items():
                mean.add(self._counterfactual(source, drafted, accepted, self.lookup_cap(other)))

    def record_miss(self) -> None:
        """Under 'lookup', a request found no match and drafted nothing."""
        self._lookup_share.add(0.0)

    def _counterfactual(self, source: str, drafted: int, accepted: int, cap: int) -> float:
        """Tokens the request would have yielded with `cap` drafts of the same source."""
        if cap <= drafted or accepted < drafted:
            return 1.0 + min(accepted, cap)
        tail, run = 0.0, 1.0  # all drafted tokens kept: the prior says how the rest would go
        if source == HEADS:
            for j in range(drafted, min(cap, len(self._prior_cond))):
                run *= self._prior_cond[j]
                tail += run
        return 1.0 + accepted + tail

    # ------------------------------------------------------------------ estimates
    def tokens(self, shape: DraftShape) -> float:
        """Expected tokens per request and step under `shape` (bonus token included)."""
        if shape.kind == "none":
            return 1.0
        heads = 1.0 if shape.kind == "lookup" else self._heads_tokens(shape)
        lookup, share = self._lookup[shape].value(), self._lookup_share.value() or 0.0
        return heads if lookup is None else share * lookup + (1.0 - share) * heads

    def _heads_tokens(self, shape: DraftShape) -> float:
        measured = self._heads[shape].value()
        if measured is not None:
            return measured
        if shape.kind == "tree" and self.chains:  # scale the prior like the longest chain's
            longest = self.chains[-1]
            seen = self._heads[longest].value()
            if seen is not None and longest.expected_tokens > 1:
                scale = (seen - 1.0) / (longest.expected_tokens - 1.0)
                return 1.0 + (shape.expected_tokens - 1.0) * scale
        return shape.expected_tokens

    def seconds(self, batch: int, shape: DraftShape) -> float | None:
        """Mean step time of `shape` at `batch` over fresh samples; None if too few."""
        now = self._steps.get(batch, 0)
        fresh = [s for step, s in self._times.get((batch, shape), ()) if now - step < self.reprobe_every]
        return sum(fresh) / len(fresh) if len(fresh) >= self.min_samples else None

    def rate(self, batch: int, shape: DraftShape) -> float | None:
        """Measured tokens per second of `shape` at `batch`; None until it has fresh step times."""
        seconds = self.seconds(batch, shape)
        return None if seconds is None else batch * self.tokens(shape) / seconds

    # ------------------------------------------------------------------ choosing
    def choose(self, batch: int) -> DraftShape:
        """The shape to draft for a step of `batch` decoding requests."""
        rates = {s: r for s in self.shapes if (r := self.rate(batch, s)) is not None}
        start = self._chosen.get(batch) or self._start(batch)
        if start not in rates:
            return self._pick(batch, start if start in self.shapes else self.shapes[0])
        best = max(rates, key=rates.__getitem__)
        if start in rates and rates[best] < rates[start] * (1 + self.margin):
            best = start
        for near in self._neighbours(best):  # probe the neighbours of the best shape
            if near not in rates:
                return near
        if self.lookup_only is not None and self.lookup_only not in rates:
            return self.lookup_only  # lookup alone is no step from the rest: always probe it
        return self._pick(batch, best, rates)

    def _neighbours(self, shape: DraftShape) -> list[DraftShape]:
        """The shapes one rung below and above `shape` on the ladder none < chain(1) < ... <
        tree. 'lookup' is no rung (it is probed on its own): were it one, it would sit between
        none and chain(1), and a batch settled on chain(1) would never try none. From
        'lookup' itself the neighbours are none and the shortest chain."""
        ladder = [s for s in self.shapes if s is not self.lookup_only]
        if shape is self.lookup_only:
            return ladder[:2]
        i = ladder.index(shape)
        return [ladder[j] for j in (i - 1, i + 1) if 0 <= j < len(ladder)]

    def _start(self, batch: int) -> DraftShape:
        """Where a batch size not seen before starts.

        - A batch size near one already measured (within a quarter, at least 1)
          starts from that one's measured choice: neighbouring batch sizes cost
          alike, and a load that hovers around 16 requests meets 13, 14 and 15
          too, each of which otherwise probed its way from the prior on its own.
        - Else the prior (the cost model's choice).
        - Either way no more drafting than measurements chose at the nearest
          smaller batch size: verifying drafts only grows costlier relative to
          their gain as the batch grows, so a smaller batch's measured choice
          bounds a larger one's.
        """
        start = self.prior(batch)
        if not self._confirmed or start not in self.shapes:
            return start
        near = min(self._confirmed, key=lambda b: (abs(b - batch), b))
        if abs(near - batch) <= max(1, batch // 4):
            start = self._confirmed[near]
        smaller = [b for b in self._confirmed if b < batch]
        if smaller:
            bound = self._confirmed[max(smaller)]
            if self.shapes.index(bound) < self.shapes.index(start):
                return bound
        return start

    def _pick(self, batch: int, shape: DraftShape, rates: dict[DraftShape, float] | None = None) -> DraftShape:
        old = self._chosen.get(batch)
        self._chosen[batch] = shape
        if rates:
            self._confirmed[batch] = shape
        if old is not None and old != shape and rates and self.on_switch:
            self.on_switch(old, shape, f"at batch {batch}, {shape.name} measured {rates[shape]:.1f} tok/s "
                                       f"against {rates.get(old, 0.0):.1f} for {old.name}: switching")
        return shape

    def describe(self) -> str:
        """The measured state, e.g. 'batch 1: chain(4) 51.2 tok/s; batch 16: none 260.1 tok/s'."""
        parts = []
        for batch, shape in sorted(self._chosen.items()):
            rate = self.rate(batch, shape)
            parts.append(f"batch {batch}: {shape.name}" + (f" {rate:.1f} tok/s" if rate else ""))
        return "; ".join(parts)
