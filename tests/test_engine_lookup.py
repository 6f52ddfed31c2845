"""Prompt-lookup drafts next to the heads, on the real vLLM engine (CPU build, float32):
a request whose recent tokens occurred before drafts the copied continuation, up to
8 tokens (more than the 4 heads), and greedy output stays plain decoding's."""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from conftest import make_llm
from test_engine_greedy import metric, token_ids

pytestmark = pytest.mark.engine

# Prompts that repeat themselves: the answer's continuation is in the prompt.
PROMPTS = [
    "one two three four five six seven eight nine ten eleven twelve . " * 3,
    "the cat sat on the mat and the dog sat on the log and the cat sat on the",
    "alpha beta gamma delta epsilon zeta eta theta alpha beta gamma delta epsilon",
]


@pytest.fixture(scope="module")
def lookup_llm(tiny_assets):
    # Its own engine: the newest engine that logs stats owns vLLM's metrics.
    # num_speculative_tokens left out: it becomes max(4 heads, lookup 8).
    llm = make_llm(*tiny_assets, speculative_config={"model": f"nfoxhead:{tiny_assets[1]}", "lookup": 8})
    yield llm
    llm.llm_engine.engine_core.shutdown()


def accepted_at(llm, position: int) -> int:
    """Drafts accepted at 0-based draft position `position` so far."""
    return metric(llm, "vllm:spec_decode_num_accepted_tokens_per_pos").values[position]


def test_lookup_drafts_beyond_the_heads_and_stays_exact(plain_llm, lookup_llm):
    nfox_llm = lookup_llm  # 4 heads drafting 4 tokens; lookup up to 8
    assert nfox_llm.llm_engine.vllm_config.speculative_config.num_speculative_tokens == 8
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    before = accepted_at(nfox_llm, 6)
    want = token_ids(plain_llm.generate(PROMPTS, params, use_tqdm=False))
    got = token_ids(nfox_llm.generate(PROMPTS, params, use_tqdm=False))
    assert got == want
    # Only a lookup draft reaches a 7th position: 4 heads draft 4 tokens.
    assert accepted_at(nfox_llm, 6) > before
