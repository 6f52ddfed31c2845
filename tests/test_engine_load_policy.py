"""The load policy on the real vLLM engine (CPU build, float32): one request gets the
tree, a batch past the break-even point gets no drafts, and greedy output stays
plain decoding's either way."""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from conftest import make_llm
from test_engine_greedy import metric, token_ids
from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS

pytestmark = pytest.mark.engine

TREE = [[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]]
# Verification is cheap for up to 8 tokens, then every token costs a full step:
# the tree (7 tokens/request) pays at batch 1, nothing pays at batch >= 4.
COST = {"1": 1.0, "7": 1.05, "8": 2.0, "64": 58.0}
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def policy_llm(tiny_assets, policy_heads):
    llm = make_llm(tiny_assets[0], speculative_config={
        "model": f"nfoxhead:{policy_heads}", "tree": TREE, "cost_table": COST,
        "load_policy": "static", "lookup": 0})  # the plan itself; "auto" would also probe neighbouring shapes
    yield llm
    llm.llm_engine.engine_core.shutdown()


def drafts(llm) -> int:
    return metric(llm, "vllm:spec_decode_num_drafts").value


def test_one_request_drafts_the_tree(policy_llm, plain_llm):
    tokens = metric(policy_llm, "vllm:spec_decode_num_draft_tokens").value
    before = drafts(policy_llm)
    got = token_ids(policy_llm.generate(SEED_PROMPTS[:1], GREEDY, use_tqdm=False))
    assert got == token_ids(plain_llm.generate(SEED_PROMPTS[:1], GREEDY, use_tqdm=False))
    made = drafts(policy_llm) - before
    assert made > 0
    assert metric(policy_llm, "vllm:spec_decode_num_draft_tokens").value - tokens == len(TREE) * made


def test_a_large_batch_drafts_nothing_and_stays_exact(policy_llm, plain_llm):
    prompts = SEED_PROMPTS[:12]
    before = drafts(policy_llm)
    got = token_ids(policy_llm.generate(prompts, GREEDY, use_tqdm=False))
    assert got == token_ids(plain_llm.generate(prompts, GREEDY, use_tqdm=False))
    # The 12 requests run in lockstep; allow stragglers a few drafts, no more.
    assert drafts(policy_llm) - before < 0.1 * len(prompts) * GREEDY.max_tokens
