"""Prompt lookup: drafts copied from earlier in the request's own text.

Small chat models repeat themselves (phrases of the prompt, lists, their own
sentences). When the last few tokens occurred before, the tokens that followed
them then are a cheap, often long, draft. NFoxHead uses it next to the heads:
a request whose suffix matches drafts the lookup continuation, any other
request drafts the heads' chain or tree. On SmolLM2 this lifts the simulated
tokens per step of the shipped heads from 1.61 to 1.96 (see README, Benchmark).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DEFAULT_LOOKUP = 8  # most tokens a lookup draft holds (the plugin's "lookup" option)
DEFAULT_MIN_NGRAM = 2
DEFAULT_MAX_NGRAM = 4


def lookup_draft(tokens: np.ndarray, max_tokens: int, min_ngram: int = DEFAULT_MIN_NGRAM,
                 max_ngram: int = DEFAULT_MAX_NGRAM) -> np.ndarray:
    """Up to `max_tokens` tokens that followed the latest earlier occurrence of the
    longest suffix n-gram (n from `max_ngram` down to `min_ngram`); empty if none.

    tokens [L] int: the request's prompt and output so far, last sampled token included.
    The copy may overlap its own output, as in LZ77: when the continuation reaches
    the end of `tokens`, it goes on with what it just copied, so a loop of period p
    ("a b a b", a run "x x x") drafts `max_tokens` tokens instead of p.
    """
    if not 1 <= min_ngram <= max_ngram:
        raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        windows = sliding_window_view(tokens[:-1], n)  # [L-n, n]: starts 0..L-n-1, never the suffix itself
        hits = np.flatnonzero((windows == tokens[length - n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            period = length - start  # >= 1: the match ends before the suffix does
            return tokens[start + np.arange(max_tokens) % period]
    return tokens[:0]


def lookup_run(tokens: np.ndarray, t: int, max_tokens: int) -> int:
    """Tokens a lookup draft at position t would get accepted on a known sequence, -1 if none.

    tokens [L]: the whole sequence (a greedy answer). At t the last sampled token
    is t+1, so the draft is made from tokens[:t+2] and checked against tokens[t+2:].
    """
    draft = lookup_draft(tokens[: t + 2], max_tokens)
    if not len(draft):
        return -1
    truth = tokens[t + 2: t + 2 + len(draft)]
    agree = draft[: len(truth)] == truth
    return int(agree.argmin()) if not agree.all() else len(truth)
