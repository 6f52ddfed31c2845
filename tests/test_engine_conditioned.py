"""Token-conditioned (Hydra-style) heads on the real vLLM engine (CPU build, float32).

These heads are drafted head by head from the sampled token and the drafted
tokens before each one, so chain and tree drafting take a different code path
(`draft_conditioned`). Greedy output must still equal plain decoding token for
token, with a chain and with a tree, for the 32 prompts of the tree tests
(several KV blocks long, submitted together).
"""

from __future__ import annotations

import pytest

from conftest import make_llm
from test_engine_greedy import metric, token_ids
from test_engine_tree import GREEDY, MIXED, PROMPTS

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def conditioned_heads(tiny_assets, tmp_path_factory):
    from vllm_nfoxhead.models.tiny_model import write_fitted_heads

    return write_fitted_heads(tiny_assets[0], tmp_path_factory.mktemp("cond") / "heads",
                              steps=60, conditioning="tokens")


@pytest.fixture(scope="module")
def plain_outputs(plain_llm):
    return token_ids(plain_llm.generate(PROMPTS, GREEDY, use_tqdm=False))


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_conditioned_heads_greedy_equal(tiny_assets, conditioned_heads, plain_outputs, shape):
    spec = {"num_speculative_tokens": 4} if shape == "chain" else {"tree": MIXED}
    llm = make_llm(tiny_assets[0], speculative_config={"model": f"nfoxhead:{conditioned_heads}", "lookup": 0,
                                                       **spec})
    try:
        got = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        assert got == plain_outputs
        accepted = metric(llm, "vllm:spec_decode_num_accepted_tokens").value
        drafts = metric(llm, "vllm:spec_decode_num_drafts").value
        # Heads fitted to the model's continuations: far above what chance allows
        # (vocabulary 384), so the drafted tokens really come from the heads.
        # Not a check of the context tokens: with the first context token forced to 0
        # this bound still held (1.68 against 1.72), since these tiny heads lean on the
        # hidden state. The core drafting tests check the context hand by hand.
        assert 1 + accepted / drafts > 1.5, (accepted, drafts)
    finally:
        llm.llm_engine.engine_core.shutdown()
