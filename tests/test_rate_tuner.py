"""RateTuner: the load policy's run-time correction from measured step times and
acceptance, driven by a synthetic machine (fixed step times, random acceptance)."""

from __future__ import annotations

import random

import pytest

from vllm_nfoxhead.core.load_policy import DraftShape
from vllm_nfoxhead.core.rate_tuner import HEADS, LOOKUP, TREE, RateTuner

NONE = DraftShape("none", 0, 1.0)
C1, C2, C3 = DraftShape("chain", 1, 1.6), DraftShape("chain", 2, 1.96), DraftShape("chain", 3, 2.176)
T6 = DraftShape("tree", 6, 2.5)
SHAPES = [NONE, C1, C2, C3, T6]
# Step seconds where verifying drafts costs more than they carry (a busy batch): no drafts win.
SLOW = {NONE: 1.0, C1: 1.6, C2: 2.2, C3: 2.8, T6: 6.0}


def accepted(rng: random.Random, drafted: int, cond: list[float]) -> int:
    """Kept drafts when position j is accepted with probability cond[j] given j-1 was."""
    a = 0
    while a < drafted and rng.random() < cond[a]:
        a += 1
    return a


def drive(tuner, batch, seconds, cond, steps, rng, tree_tokens=2.0):
    """Run `steps` steps; returns the shapes chosen. seconds: shape -> step time."""
    chosen = []
    for _ in range(steps):
        shape = tuner.choose(batch)
        chosen.append(shape)
        for _ in range(batch):
            if shape.kind == "chain":
                tuner.record_request(shape, HEADS, shape.nodes, accepted(rng, shape.nodes, cond))
            elif shape.kind == "tree":
                tuner.record_request(shape, TREE, shape.nodes, int(tree_tokens - 1 + rng.random()))
        tuner.record_time(batch, shape, seconds[shape])
    return chosen


def test_counterfactual_tokens_of_shorter_chains_are_exact():
    tuner = RateTuner(SHAPES, prior=lambda b: C3)
    for a in (0, 1, 3, 2, 3, 0):
        tuner.record_request(C3, HEADS, 3, a)
    # chain(k) would have kept min(a, k) of the same drafts, plus the bonus token.
    assert tuner.tokens(C1) == pytest.approx(1 + sum(min(a, 1) for a in (0, 1, 3, 2, 3, 0)) / 6, rel=0.01)
    assert tuner.tokens(C2) == pytest.approx(1 + sum(min(a, 2) for a in (0, 1, 3, 2, 3, 0)) / 6, rel=0.01)
    assert tuner.tokens(C3) == pytest.approx(1 + 9 / 6, rel=0.01)
    assert tuner.tokens(NONE) == 1.0


def test_prior_fills_in_beyond_what_was_drafted():
    tuner = RateTuner(SHAPES, prior=lambda b: C1)
    tuner.record_request(C1, HEADS, 1, 1)  # the one drafted token was kept
    # Prior: P(pos 0) = 0.6, P(pos 0..1) = 0.36, P(pos 0..2) = 0.216 -> conditional 0.6 each.
    assert tuner.tokens(C2) == pytest.approx(1 + 1 + 0.6)
    assert tuner.tokens(C3) == pytest.approx(1 + 1 + 0.6 + 0.36)


def test_an_undrafted_tree_scales_its_prior_like_the_chain():
    tuner = RateTuner(SHAPES, prior=lambda b: C3)
    assert tuner.tokens(T6) == T6.expected_tokens
    for _ in range(10):
        tuner.record_request(C3, HEADS, 3, 0)
        tuner.record_request(C3, HEADS, 3, 1)  # measured chain(3): 1.5 tokens against 2.176
    assert tuner.tokens(T6) == pytest.approx(1 + 1.5 * 0.5 / 1.176, rel=0.01)
    tuner.record_request(T6, TREE, 6, 3)
    assert tuner.tokens(T6) == 4.0


def test_lookup_requests_mix_in_by_their_share():
    tuner = RateTuner(SHAPES, prior=lambda b: C3, lookup_cap=lambda s: 8 if s in (C3, T6) else s.nodes)
    tuner.record_request(C3, HEADS, 3, 0)
    tuner.record_request(C3, LOOKUP, 8, 6)
    # half the requests found a match; a 6-token accept counts min(6, cap) for each shape
    assert tuner.tokens(C3) == pytest.approx(0.5 * 7 + 0.5 * 1, rel=0.01)  # (decayed means)
    assert tuner.tokens(C1) == pytest.approx(0.5 * 2 + 0.5 * 1, rel=0.01)


def test_high_load_switches_speculation_off():
    # The model's prior says chain(1) at 16 requests; on this machine a step with
    # 32 tokens costs 1.5 plain steps, more than the ~1.35 tokens per request it yields.
    rng = random.Random(0)
    said = []
    tuner = RateTuner(SHAPES, prior=lambda b: C1, on_switch=lambda old, new, msg: said.append(msg))
    seconds = {NONE: 1.0, C1: 1.5, C2: 1.9, C3: 2.3, T6: 4.0}
    chosen = drive(tuner, 16, seconds, [0.35, 0.3, 0.3], 400, rng)
    assert chosen[0] == C1
    assert chosen[-100:].count(NONE) >= 97  # a 3-step probe of chain(1) every 300 steps at most
    assert said and "none measured" in said[0] and "for chain(1): switching" in said[0]


def test_high_load_switches_speculation_off_with_lookup_among_the_shapes():
    # The plugin's default (prompt lookup on) puts the 'lookup' shape between none and
    # chain(1). It is probed on its own, not as a rung of the ladder: chain(1)'s neighbour
    # below is still none. Measured on the 2-core CPU at 16 requests (docs/benchmarks.md):
    # chain(1) 0.92x and the tuner 0.92-0.93x of plain, a static choice of none 1.02x.
    rng = random.Random(6)
    lookup = DraftShape("lookup", 0, 1.0)
    shapes = [NONE, lookup, C1, C2, C3, T6]
    tuner = RateTuner(shapes, prior=lambda b: C1, lookup_cap=lambda s: 8 if s.kind != "chain" else s.nodes)
    seconds = {NONE: 1.0, lookup: 1.35, C1: 1.6, C2: 2.0, C3: 2.4, T6: 4.0}  # chain(1): 1.57 measured
    chosen = []
    for _ in range(400):
        shape = tuner.choose(16)
        chosen.append(shape)
        for _ in range(16 if shape.kind != "none" else 0):
            if rng.random() < 0.1:  # a tenth of the requests find a lookup match
                tuner.record_request(shape, LOOKUP, 8, 2)
            elif shape.kind == "lookup":
                tuner.record_miss()
            elif shape.kind == "chain":
                tuner.record_request(shape, HEADS, shape.nodes, accepted(rng, shape.nodes, [0.45, 0.1, 0.05]))
        tuner.record_time(16, shape, seconds[shape])
    assert NONE in chosen[:20]  # probed early as chain(1)'s neighbour
    assert chosen[-100:].count(NONE) >= 94


def test_batch_one_climbs_to_the_longest_worthwhile_shape_and_stays():
    rng = random.Random(1)
    tuner = RateTuner(SHAPES, prior=lambda b: C1)
    seconds = {NONE: 1.0, C1: 1.05, C2: 1.1, C3: 1.15, T6: 2.0}
    chosen = drive(tuner, 1, seconds, [0.5, 0.45, 0.4], 3000, rng)
    assert chosen[-300:].count(C3) >= 294
    switches = sum(a != b for a, b in zip(chosen[500:], chosen[501:]))
    assert switches <= 2 * 3000 // 300 * 2  # only the periodic probes, no flip-flopping


def test_batch_sizes_keep_their_own_step_times():
    rng = random.Random(2)
    tuner = RateTuner(SHAPES, prior=lambda b: C2)
    drive(tuner, 1, {NONE: 1.0, C1: 1.05, C2: 1.1, C3: 1.15, T6: 3.0}, [0.5, 0.45, 0.4], 300, rng)
    drive(tuner, 16, SLOW, [0.5, 0.45, 0.4], 300, rng)
    assert tuner.choose(1) == C3
    assert tuner.choose(16) == NONE


def test_a_larger_batch_starts_from_a_smaller_ones_measured_choice():
    # Measured at batch 8: speculation does not pay. Batch 12, never seen, would start
    # at the prior's chain(2); it starts with no drafts instead and keeps that if it holds.
    rng = random.Random(4)
    tuner = RateTuner(SHAPES, prior=lambda b: C2)
    drive(tuner, 8, SLOW, [0.3, 0.3, 0.3], 60, rng)
    assert tuner.choose(8) == NONE
    assert tuner.choose(12) == NONE
    assert tuner.choose(4) == C2  # a smaller batch is not bounded by a larger one's choice
    chosen = drive(tuner, 12, SLOW, [0.3, 0.3, 0.3], 60, rng)
    assert chosen.count(C2) == 0 and chosen[-50:].count(NONE) >= 47


def test_lookup_alone_wins_where_heads_do_not_pay():
    # A float32 CPU on one thread: 2 tokens cost 1.6 plain steps, so heads adding
    # about half a token lose, while the 30% of requests with a lookup match keep 3.
    rng = random.Random(5)
    lookup = DraftShape("lookup", 0, 1.0)
    shapes = [NONE, lookup, C1, C2, C3, T6]
    tuner = RateTuner(shapes, prior=lambda b: C3, lookup_cap=lambda s: 8 if s.kind != "chain" else s.nodes)
    seconds = {NONE: 1.0, lookup: 1.2, C1: 1.6, C2: 1.65, C3: 1.7, T6: 2.6}
    chosen = []
    for _ in range(400):
        shape = tuner.choose(1)
        chosen.append(shape)
        if shape.kind != "none":
            if rng.random() < 0.3:
                tuner.record_request(shape, LOOKUP, 8, 3)
            elif shape.kind == "lookup":
                tuner.record_miss()
            elif shape.kind == "chain":
                tuner.record_request(shape, HEADS, shape.nodes, accepted(rng, shape.nodes, [0.45, 0.35, 0.3]))
            else:
                tuner.record_request(shape, TREE, shape.nodes, accepted(rng, 3, [0.6, 0.4, 0.3]))
        tuner.record_time(1, shape, seconds[shape])
    assert tuner.tokens(lookup) == pytest.approx(0.3 * 4 + 0.7, abs=0.2)
    assert chosen[-100:].count(lookup) >= 90


def test_follows_a_slower_machine_after_reprobing():
    rng = random.Random(3)
    tuner = RateTuner(SHAPES, prior=lambda b: C3, reprobe_every=50)
    drive(tuner, 4, {NONE: 1.0, C1: 1.05, C2: 1.1, C3: 1.15, T6: 3.0}, [0.5, 0.45, 0.4], 200, rng)
    assert tuner.choose(4) == C3
    # Verification got expensive (another job shares the CPU): drafting stops paying.
    chosen = drive(tuner, 4, {NONE: 1.0, C1: 1.8, C2: 2.6, C3: 3.4, T6: 6.0}, [0.5, 0.45, 0.4], 600, rng)
    assert chosen[-50:].count(NONE) >= 44


def test_ignores_unknown_shapes_and_empty_steps():
    tuner = RateTuner(SHAPES, prior=lambda b: C1, min_samples=2)
    tuner.record_time(1, DraftShape("chain", 9, 3.0), 1.0)
    tuner.record_time(1, C1, 0.0)
    tuner.record_request(C1, HEADS, 0, 0)
    assert tuner.seconds(1, C1) is None
    assert tuner.choose(1) == C1  # nothing measured yet: still the prior


def test_needs_shapes():
    with pytest.raises(ValueError):
        RateTuner([], prior=lambda b: NONE)


def test_a_nearby_batch_size_starts_from_the_measured_choice_of_its_neighbour():
    # A load hovering at 16 requests meets 15 and 14 as requests finish. Measured at 16:
    # no drafts. Batch 14 starts there too instead of at the prior's chain(2) (and so
    # never pays for chain(2)); batch 4, far from any measured size, keeps the prior.
    rng = random.Random(7)
    tuner = RateTuner(SHAPES, prior=lambda b: C2)
    drive(tuner, 16, SLOW, [0.3, 0.3, 0.3], 60, rng)
    assert tuner.choose(16) == NONE
    assert tuner.choose(4) == C2
    chosen = drive(tuner, 14, SLOW, [0.3, 0.3, 0.3], 60, rng)
    assert chosen[0] == NONE and C2 not in chosen and chosen[-50:].count(NONE) >= 47
