"""Runtime correction of the load policy from measured throughput.

The load policy's model (per-rank accuracies from training, a verify-cost table)
misjudges real serving: acceptance on live prompts is lower than on a held-out
split, and per-request costs of speculation (drafting, the rejection sampler,
bookkeeping) are not in the cost table. On the project's CPU the model planned
chain(1) at 16 requests, which measured 7% slower than plain decoding.

`RateTuner` keeps, per batch size, the model's choice as a starting point and
measures what it actually delivers: tokens per second of wall time between
steps. It then probes the neighbouring shapes in the order
none < chain(1) < ... < chain(K) < tree, and moves to whichever measured best:
a hill climb on measured rates. Probes are short (a few steps) and repeated
after `reprobe_every` steps so that a drift in acceptance is noticed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .load_policy import DraftShape

logger = logging.getLogger("vllm_nfoxhead")


def shape_name(shape: DraftShape) -> str:
    return "none" if shape.kind == "none" else f"{shape.kind}({shape.nodes})"


@dataclass
class _Window:
    """The last samples of one shape at one batch size: (tokens, seconds)."""

    size: int
    samples: deque[tuple[int, float]] = field(default_factory=deque)

    def add(self, tokens: int, seconds: float) -> None:
        self.samples.append((tokens, seconds))
        while len(self.samples) > self.size:
            self.samples.popleft()

    def rate(self) -> float:
        seconds = sum(s for _, s in self.samples)
        return sum(t for t, _ in self.samples) / seconds if seconds > 0 else 0.0


@dataclass
class _BatchState:
    current: int  # index into the tuner's shapes
    windows: dict[int, _Window] = field(default_factory=dict)
    steps: int = 0  # steps recorded at this batch size since the last re-probe


class RateTuner:
    """Picks a draft shape per batch size from measured tokens per second."""

    def __init__(self, shapes: Sequence[DraftShape], prior: Callable[[int], DraftShape],
                 min_samples: int = 6, window: int = 24, margin: float = 0.03,
                 reprobe_every: int = 400) -> None:
        if not shapes:
            raise ValueError("RateTuner needs at least one shape")
        self.shapes = list(shapes)  # ordered from least to most drafting
        self.prior = prior
        self.min_samples = min_samples
        self.window = window
        self.margin = margin  # a neighbour must beat the current shape by this fraction
        self.reprobe_every = reprobe_every
        self._state: dict[int, _BatchState] = {}

    def _get(self, batch: int) -> _BatchState:
        if batch not in self._state:
            start = self.prior(batch)
            self._state[batch] = _BatchState(self.shapes.index(start) if start in self.shapes else 0)
        return self._state[batch]

    def _window(self, st: _BatchState, index: int) -> _Window:
        return st.windows.setdefault(index, _Window(self.window))

    def _measured(self, st: _BatchState, index: int) -> bool:
        return len(self._window(st, index).samples) >= self.min_samples

    def choose(self, batch: int) -> DraftShape:
        """The shape to draft for a step of `batch` decoding requests."""
        st = self._get(batch)
        if not self._measured(st, st.current):
            return self.shapes[st.current]
        neighbours = [i for i in (st.current - 1, st.current + 1) if 0 <= i < len(self.shapes)]
        for i in neighbours:
            if not self._measured(st, i):
                return self.shapes[i]  # probe
        best = max(neighbours, key=lambda i: self._window(st, i).rate(), default=st.current)
        new, old = self._window(st, best).rate(), self._window(st, st.current).rate()
        if new > old * (1 + self.margin):
            logger.info("NFoxHead load policy: at batch %d, %s measured %.1f tok/s against %.1f for %s; "
                        "switching", batch, shape_name(self.shapes[best]), new, old,
                        shape_name(self.shapes[st.current]))
            st.current = best
        return self.shapes[st.current]

    def record(self, batch: int, shape: DraftShape, tokens: int, seconds: float) -> None:
        """One step of `batch` requests drafted with `shape` produced `tokens` in `seconds`."""
        if shape not in self.shapes or seconds <= 0:
            return
        st = self._get(batch)
        self._window(st, self.shapes.index(shape)).add(tokens, seconds)
        st.steps += 1
        if st.steps >= self.reprobe_every:  # forget the neighbours so they are measured again
            st.steps = 0
            st.windows = {st.current: self._window(st, st.current)}

    def describe(self) -> str:
        """The measured state, e.g. 'batch 1: chain(4) 51.2 tok/s; batch 16: none 260.1 tok/s'."""
        parts = []
        for batch in sorted(self._state):
            st = self._state[batch]
            name = shape_name(self.shapes[st.current])
            parts.append(f"batch {batch}: {name} {self._window(st, st.current).rate():.1f} tok/s")
        return "; ".join(parts)
