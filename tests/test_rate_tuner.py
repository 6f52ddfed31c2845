"""RateTuner: the hill climb on measured throughput that corrects the load policy."""

from __future__ import annotations

import pytest

from vllm_nfoxhead.load_policy import DraftShape
from vllm_nfoxhead.rate_tuner import RateTuner

SHAPES = [DraftShape("none", 0, 1.0), DraftShape("chain", 1, 1.4), DraftShape("chain", 2, 1.6),
          DraftShape("tree", 6, 1.9)]


def run(tuner: RateTuner, batch: int, rate_of: dict[int, float], steps: int) -> list[int]:
    """Drive the tuner with a synthetic machine: shape i yields rate_of[i] tokens/s."""
    chosen = []
    for _ in range(steps):
        shape = tuner.choose(batch)
        i = SHAPES.index(shape)
        chosen.append(i)
        tuner.record(batch, shape, tokens=batch * 10, seconds=batch * 10 / rate_of[i])
    return chosen


def test_starts_from_the_prior_and_climbs_to_the_measured_best():
    tuner = RateTuner(SHAPES, prior=lambda b: SHAPES[1], min_samples=3)
    # The model believed chain(1); on this machine no drafts at all is fastest.
    chosen = run(tuner, 16, {0: 100.0, 1: 93.0, 2: 80.0, 3: 50.0}, 60)
    assert chosen[0] == 1
    assert chosen[-20:] == [0] * 20
    assert "batch 16: none 100.0 tok/s" in tuner.describe()


def test_climbs_upward_over_several_shapes():
    tuner = RateTuner(SHAPES, prior=lambda b: SHAPES[0], min_samples=3)
    chosen = run(tuner, 1, {0: 30.0, 1: 36.0, 2: 40.0, 3: 45.0}, 80)
    assert chosen[-20:] == [3] * 20


def test_keeps_the_current_shape_within_the_margin():
    tuner = RateTuner(SHAPES, prior=lambda b: SHAPES[2], min_samples=3, margin=0.05)
    chosen = run(tuner, 4, {0: 30.0, 1: 40.0, 2: 40.0, 3: 41.0}, 40)
    assert chosen[-10:] == [2] * 10


def test_batch_sizes_are_tuned_separately():
    tuner = RateTuner(SHAPES, prior=lambda b: SHAPES[1], min_samples=3)
    run(tuner, 1, {0: 30.0, 1: 40.0, 2: 45.0, 3: 35.0}, 60)
    run(tuner, 16, {0: 100.0, 1: 90.0, 2: 80.0, 3: 50.0}, 60)
    assert tuner.choose(1) == SHAPES[2]
    assert tuner.choose(16) == SHAPES[0]


def test_reprobes_and_follows_a_drift():
    tuner = RateTuner(SHAPES, prior=lambda b: SHAPES[2], min_samples=3, window=6, reprobe_every=30)
    run(tuner, 1, {0: 30.0, 1: 35.0, 2: 45.0, 3: 40.0}, 40)
    assert tuner.choose(1) == SHAPES[2]
    # Acceptance drops (e.g. a new kind of prompt): shorter drafts now win.
    chosen = run(tuner, 1, {0: 30.0, 1: 38.0, 2: 33.0, 3: 25.0}, 120)
    # Every 30 steps both neighbours are probed again for 3 steps each.
    assert chosen[-30:].count(1) >= 30 - 2 * 3
    assert "batch 1: chain(1)" in tuner.describe()


def test_ignores_unknown_shapes_and_empty_steps():
    tuner = RateTuner(SHAPES, prior=lambda b: SHAPES[1], min_samples=2)
    tuner.record(1, DraftShape("chain", 9, 3.0), tokens=5, seconds=1.0)
    tuner.record(1, SHAPES[1], tokens=5, seconds=0.0)
    assert tuner.choose(1) == SHAPES[1]  # nothing measured yet: still the prior


def test_needs_shapes():
    with pytest.raises(ValueError):
        RateTuner([], prior=lambda b: SHAPES[0])
