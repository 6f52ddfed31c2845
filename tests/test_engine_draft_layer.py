"""The draft layer (an EAGLE-style drafter, core/draft_layer.py) on the real vLLM engine.

It keeps per-request state (keys and values of a window of accepted
positions), so besides greedy equality with a chain and a tree this runs it
under KV-cache pressure, where vLLM preempts and recomputes requests (their
windows must start afresh) and splits long prompts over steps. The fitted
layer's window is 16 positions and answers are 48 tokens, so windows roll over.
On the prompts it was fitted to, the engine's acceptance must match the
training code's offline walk: a window fed the wrong rows or positions keeps
greedy output equal (verification catches every bad draft) but not that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_llm
from test_engine_greedy import metric, token_ids
from test_engine_tree import GREEDY, MIXED, PROMPTS
from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def plain_outputs(plain_llm):
    return token_ids(plain_llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def counts(llm) -> tuple[float, float]:
    return (metric(llm, "vllm:spec_decode_num_accepted_tokens").value,
            metric(llm, "vllm:spec_decode_num_drafts").value)


def acceptance_length(llm) -> float:
    accepted, drafts = counts(llm)
    return 1 + accepted / drafts


def offline_walk(model: Path, layer_dir: Path) -> float:
    """The training code's acceptance walk over the layer's own fitting data (the seed prompts)."""
    import torch

    from vllm_nfoxhead.core.draft_layer import DraftLayer, load_layer
    from vllm_nfoxhead.core.format import read_heads_tensors, validate_heads_dir
    from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS, greedy_hidden_states
    from vllm_nfoxhead.training.draft_layer_train import Crops, evaluate_layer
    from vllm_nfoxhead.training.trainer import Sequences

    config = validate_heads_dir(layer_dir)
    tensors = read_heads_tensors(layer_dir, config)
    layer = DraftLayer(config.hidden_size, config.layer_spec)
    load_layer(layer, tensors)
    states, lm_head, embed = greedy_hidden_states(model, SEED_PROMPTS, layers=config.layer_spec.feature_layers)
    seqs = Sequences([s[1].tolist() for s in states], [len(s[1]) - 48 for s in states])
    crops = Crops.build(seqs, torch.cat([s[0] for s in states]).detach())
    vocab = tensors["draft_vocab"]
    walk = evaluate_layer(layer, crops, list(range(len(crops))), embed, lm_head[vocab], vocab,
                          config.num_heads, torch.device("cpu"))
    return walk["step_accept"]


def check_greedy_equal_and_walk(llm, model: Path, layer_dir: Path, plain_outputs, walk: bool) -> None:
    assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain_outputs
    # Fitted to the model's continuations of other prompts: far above chance
    # (vocabulary 384), so the drafts really come from the layer.
    assert acceptance_length(llm) > 1.5
    if walk:  # on the fitting prompts the engine walks as the training code does
        before = counts(llm)
        llm.generate(SEED_PROMPTS, GREEDY, use_tqdm=False)
        accepted, drafts = (a - b for a, b in zip(counts(llm), before))
        assert 1 + accepted / drafts == pytest.approx(offline_walk(model, layer_dir), abs=0.1)


@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_draft_layer_greedy_equal(tiny_assets, draft_layer, plain_outputs, shape):
    spec = {"num_speculative_tokens": 4} if shape == "chain" else {"tree": MIXED}
    llm = make_llm(tiny_assets[0], speculative_config={"model": f"nfoxhead:{draft_layer}", "lookup": 0, **spec})
    try:
        check_greedy_equal_and_walk(llm, tiny_assets[0], draft_layer, plain_outputs, walk=shape == "chain")
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_fused_layer_reads_the_base_layers_it_was_trained_on(tiny_assets, fused_layer, plain_outputs):
    """A layer fed vLLM's aux hidden states of layers 0 and 1 besides the final state: the
    engine's acceptance on the fitting prompts matches the training walk only if each
    accepted position's aux rows reach the layer."""
    llm = make_llm(tiny_assets[0], speculative_config={"model": f"nfoxhead:{fused_layer}", "lookup": 0,
                                                       "num_speculative_tokens": 4})
    try:
        check_greedy_equal_and_walk(llm, tiny_assets[0], fused_layer, plain_outputs, walk=True)
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.mark.parametrize("layer", ["draft_layer", "fused_layer"])
def test_draft_layer_under_preemption_and_chunked_prefill(tiny_assets, layer, plain_outputs, request):
    layer_dir = request.getfixturevalue(layer)
    llm = make_llm(tiny_assets[0], block_size=32, kv_cache_memory_bytes=24 * 32 * 1024,
                   max_num_batched_tokens=128,
                   speculative_config={"model": f"nfoxhead:{layer_dir}", "lookup": 0, "tree": MIXED})
    try:
        assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain_outputs
        assert metric(llm, "vllm:num_preemptions").value > 0
        assert acceptance_length(llm) > 1.5
    finally:
        llm.llm_engine.engine_core.shutdown()
