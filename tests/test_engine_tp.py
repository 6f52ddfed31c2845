"""NFoxHead under tensor parallelism (TP=2) in vLLM's multiprocessing executor (CPU build, float32).

The oracle is a plain engine with the same TP layout (all-reduce may round
differently from TP=1). Each speculative engine runs the 32 prompts of the tree
tests together; one runs under KV-cache pressure (preemption, chunked prefill).

The load-policy engine has its tuner on ("auto") with the ranks' clocks skewed
by a test-only hook: tree steps look 50x slower on rank 0 and all others 50x
slower on rank 1, so ranks deciding alone would draft different shapes (then
their collectives and tree layouts disagree). The plan is made on rank 0 and shared,
and the ranks compare digests of their drafts on every step.

A hang is a failure: vLLM's execute-model timeout and a pytest timeout bound
every engine here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from conftest import make_llm
from test_engine_greedy import metric, token_ids
from test_engine_tree import GREEDY, MIXED, PROMPTS, WIDE_SHALLOW

pytestmark = [pytest.mark.engine, pytest.mark.timeout(420)]

TP_ENV = {
    "VLLM_CPU_OMP_THREADS_BIND": "0|1",  # one core per rank (one NUMA node here)
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "60",  # a hung collective fails in a minute
}
# Rank 0 times tree steps 50x slower, rank 1 every other kind (rank_sync.TIMER_SKEW_ENV):
# deciding alone, rank 0 would never draft the tree and rank 1 nothing else.
SKEW = "0:tree:50,1:chain:50,1:lookup:50,1:none:50"
# Verification cheap up to 11 tokens: the tree pays at small batches.
COST = {"1": 1.0, "11": 1.05, "12": 2.0, "128": 100.0}
KV_PRESSURE = dict(block_size=32, kv_cache_memory_bytes=24 * 32 * 1024, max_num_batched_tokens=128)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set variables for engines started inside (vLLM's workers inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def tp_llm(model, heads=None, extra_env: dict[str, str] | None = None, **overrides):
    with environment(**TP_ENV, **(extra_env or {})):
        llm = make_llm(model, heads, tensor_parallel_size=2, distributed_executor_backend="mp", **overrides)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


def tokens_per_step(llm) -> float:
    drafts = metric(llm, "vllm:spec_decode_num_drafts").value
    return 1 + metric(llm, "vllm:spec_decode_num_accepted_tokens").value / max(drafts, 1)


@pytest.fixture(scope="module")
def plain_tp_outputs(tiny_assets):
    with tp_llm(tiny_assets[0]) as llm:
        return token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def test_tree_lookup_and_tuner_with_a_skewed_rank(tiny_assets, policy_heads, plain_tp_outputs):
    spec = {"model": f"nfoxhead:{policy_heads}", "tree": MIXED, "load_policy": "auto", "cost_table": COST,
            "rank_check_interval": 1}
    with tp_llm(tiny_assets[0], extra_env={"NFOXHEAD_TEST_TIMER_SKEW": SKEW},
                speculative_config=spec) as llm:
        singles = [token_ids(llm.generate(p, GREEDY, use_tqdm=False))[0] for p in PROMPTS[:4]]  # batch 1: tree
        assert singles == plain_tp_outputs[:4]
        assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain_tp_outputs
        rate = tokens_per_step(llm)
    print(f"TP=2 tree + lookup + tuner: {rate:.2f} tokens per step")
    assert rate > 1.4


@pytest.mark.parametrize("drafter, tree", [("heads", "chain"), ("heads", WIDE_SHALLOW), ("fused_layer", MIXED)],
                         ids=["own-lm-heads-chain", "own-lm-heads-wide-shallow", "fused-draft-layer-tree"])
def test_under_kv_pressure(request, tiny_assets, plain_tp_outputs, drafter, tree):
    """Preemption and chunked prefill under TP. The draft layer keeps per-request windows
    on every rank: both ranks must keep the same ones (drafts compared every step). It
    reads two of the base's layers besides the last (vLLM's aux hidden states, which
    every rank holds whole)."""
    heads = tiny_assets[1] if drafter == "heads" else request.getfixturevalue(drafter)
    spec = {"model": f"nfoxhead:{heads}", "tree": tree, "lookup": 0, "rank_check_interval": 1}
    with tp_llm(tiny_assets[0], speculative_config=spec, **KV_PRESSURE) as llm:
        assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain_tp_outputs
        assert metric(llm, "vllm:num_preemptions").value > 0
        rate = tokens_per_step(llm)
    print(f"TP=2 {drafter} {tree if tree == 'chain' else 'tree'} under KV pressure: {rate:.2f} tokens per step")
    assert rate > 1.4


def test_conditioned_heads_sharing_the_lm_head_with_a_draft_vocabulary(tiny_assets, plain_tp_outputs,
                                                                      tmp_path_factory):
    """Shared LM head + draft vocabulary: the rows must come from the whole vocabulary,
    not from this rank's shard of the target's LM head."""
    from vllm_nfoxhead.models.tiny_model import write_fitted_heads

    heads = write_fitted_heads(tiny_assets[0], tmp_path_factory.mktemp("tp-cond") / "heads", steps=60,
                               shared_lm_head=True, conditioning="tokens")
    spec = {"model": f"nfoxhead:{heads}", "tree": MIXED, "lookup": 0, "rank_check_interval": 1}
    with tp_llm(tiny_assets[0], speculative_config=spec) as llm:
        assert token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == plain_tp_outputs
        rate = tokens_per_step(llm)
    print(f"TP=2 conditioned heads, shared LM head, draft vocabulary: {rate:.2f} tokens per step")
    assert rate > 1.4

