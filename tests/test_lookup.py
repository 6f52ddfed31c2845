"""Prompt lookup drafts (lookup.py), hand-checked on small token lists."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_nfoxhead.core.lookup import lookup_draft, lookup_run


def draft(tokens, k, lo=2, hi=4):
    return lookup_draft(np.array(tokens), k, lo, hi).tolist()


def test_copies_what_followed_the_suffix():
    #          0  1  2  3  4  5  6  7  8
    assert draft([5, 6, 7, 8, 9, 1, 2, 6, 7], 3) == [8, 9, 1]


def test_prefers_the_longest_ngram_then_the_latest_occurrence():
    # "6 7" occurs at 1 (then 8) and at 5 (then 3); "5 6 7" only at 0 (then 8).
    assert draft([5, 6, 7, 8, 0, 6, 7, 3, 5, 6, 7], 2) == [8, 0]
    # Without the 3-gram the latest 2-gram match wins.
    assert draft([4, 6, 7, 8, 0, 6, 7, 3, 5, 6, 7], 2) == [3, 5]


def test_continuation_overlapping_the_suffix_repeats_the_loop():
    # "1 2 1 2": the match at 0 continues with 1 2 (the suffix itself), then goes on
    # copying its own output, as a loop of period 2 would.
    assert draft([1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]
    assert draft([9, 7, 7, 7, 7], 4) == [7, 7, 7, 7]  # a run: period 1
    assert draft([1, 2, 3, 1, 2], 8) == [3, 1, 2, 3, 1, 2, 3, 1]


def test_no_match_and_min_ngram():
    assert draft([1, 2, 3, 4, 5], 4) == []
    assert draft([1, 2, 3, 9, 3], 4) == []  # only a 1-gram matches
    assert draft([1, 2, 3, 9, 3], 4, lo=1) == [9, 3, 9, 3]
    assert draft([7], 4) == []


def test_cut_at_max_tokens():
    assert draft([1, 2, 3, 4, 5, 6, 1, 2], 3) == [3, 4, 5]
    assert draft([1, 2, 3, 4, 5, 6, 1, 2], 0) == []


def test_bad_ngram_bounds():
    with pytest.raises(ValueError):
        draft([1, 2, 3], 2, lo=3, hi=2)


def test_lookup_run_counts_accepted_copied_tokens():
    #        0  1  2  3  4  5  6  7  8
    seq = np.array([5, 6, 7, 8, 9, 5, 6, 7, 3])
    # at t=5 the sampled token is 6 (tokens[:7] ends "5 6"): draft 7 8 9; truth 7 3 -> 1 accepted
    assert lookup_run(seq, 5, 3) == 1
    # at t=4 (tokens[:6] ends "9 5"): no earlier "9 5" and "5" alone is below min n-gram -> no draft
    assert lookup_run(seq, 4, 3) == -1
    # a draft longer than what is left counts only the tokens that exist
    assert lookup_run(np.array([1, 2, 1, 2, 1]), 2, 8) == 1
