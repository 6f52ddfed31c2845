"""NFoxHead on quantized bases and quantized KV caches (real vLLM engines, CPU build, float32).

In float32, vLLM's CPU build runs compressed-tensors W8A8 checkpoints (int8 and
fp8 weights, activations quantized per token); its 4-bit kernels (GPTQ, AWQ,
compressed-tensors W4A16) and online fp8 / int8 weight-only quantization need
bf16, where greedy equality is not exact even unquantized. So the engines here
serve the tiny Llama re-saved as W8A8 int8 with its LM head quantized too
(quantized_model.py), with heads fitted to its own continuations:

- heads that share the LM head: token-conditioned ones with a draft vocabulary
  read dequantized LM-head rows (the packed int8 rows are not float rows);
  Medusa ones call the target's compute_logits on the quantized head;
- a tree over a base that quantizes activations, or over an fp8 KV cache,
  falls back to a chain at start-up with one warning (the tree path would
  round differently from plain decoding, or stop the engine);
- heads of another hidden size or vocabulary are refused at start-up.

Output equals plain decoding of the same quantized base (and KV cache) token
for token.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
from vllm.engine.arg_utils import EngineArgs

from conftest import make_llm
from test_engine_greedy import metric, token_ids
from test_engine_tree import GREEDY, MIXED, PROMPTS
from vllm_nfoxhead.core.errors import NFoxHeadError

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def w8a8_root(tmp_path_factory):
    return tmp_path_factory.mktemp("w8a8")


@pytest.fixture(scope="module")
def w8a8(tiny_assets, w8a8_root):
    """The tiny Llama as compressed-tensors W8A8 int8, its LM head quantized too."""
    from vllm_nfoxhead.models.quantized_model import quantize_checkpoint

    return quantize_checkpoint(tiny_assets[0], w8a8_root / "model", "w8a8_int8", quantize_lm_head=True)


@pytest.fixture(scope="module")
def w8a8_heads(tiny_assets, w8a8_root):
    """Heads fitted to the W8A8 model's float twin (same quantized weights, float
    activations): shared token-conditioned heads with a draft vocabulary, and shared
    Medusa heads."""
    from vllm_nfoxhead.models.quantized_model import quantize_checkpoint
    from vllm_nfoxhead.models.tiny_model import write_fitted_heads

    twin = quantize_checkpoint(tiny_assets[0], w8a8_root / "twin", "w8a8_int8", quantize_lm_head=True, twin=True)
    conditioned = write_fitted_heads(twin, w8a8_root / "conditioned", steps=60, shared_lm_head=True,
                                     conditioning="tokens")
    medusa = write_fitted_heads(twin, w8a8_root / "medusa", steps=60, shared_lm_head=True)
    return conditioned, medusa


@pytest.fixture(scope="module")
def w8a8_plain(w8a8):
    llm = make_llm(w8a8)
    try:
        yield token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    finally:
        llm.llm_engine.engine_core.shutdown()


@contextlib.contextmanager
def plugin_warnings():
    """Warnings the plugin logs in this (front-end) process. A filter on its logger, not a
    handler: vLLM re-applies its logging config while it builds the engine config, which
    drops the handlers of its child loggers (and keeps their filters)."""
    lines: list[str] = []

    def record(rec: logging.LogRecord) -> bool:
        if rec.levelno >= logging.WARNING:
            lines.append(rec.getMessage())
        return True

    log = logging.getLogger("vllm.nfoxhead")
    log.addFilter(record)
    try:
        yield lines
    finally:
        log.removeFilter(record)


def speculate(model, heads, **spec_and_engine):
    """Greedy outputs of PROMPTS with speculation, the mean acceptance length, and the
    plugin's warnings while the engine was created."""
    engine = {k: spec_and_engine.pop(k) for k in ("kv_cache_dtype",) if k in spec_and_engine}
    with plugin_warnings() as warnings:
        llm = make_llm(model, speculative_config={"model": f"nfoxhead:{heads}", "lookup": 0, **spec_and_engine},
                       **engine)
    try:
        got = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        drafts = metric(llm, "vllm:spec_decode_num_drafts").value
        mean_length = 1 + metric(llm, "vllm:spec_decode_num_accepted_tokens").value / max(drafts, 1)
        return got, mean_length, warnings
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_shared_draft_vocab_heads_on_quantized_lm_head_tree_falls_back(w8a8, w8a8_heads, w8a8_plain):
    """Token-conditioned heads sharing an int8 LM head (draft vocabulary rows dequantized),
    tree requested: W8A8 quantizes activations, so the engine drafts a chain, says so
    once, and matches plain decoding. Before: the engine died loading the heads
    (`lm_head.weight` is None once vLLM's CPU int8 kernel has packed it); with the rows
    fixed but trees kept, 2 of 32 answers differed at near-tied tokens."""
    got, mean_length, warnings = speculate(w8a8, w8a8_heads[0], tree=MIXED)
    assert got == w8a8_plain
    assert [w for w in warnings if "quantizes activations (compressed-tensors)" in w and "chain" in w] \
        and len(warnings) == 1, warnings
    # Random draft-vocabulary rows give 1.01; the dequantized rows 1.36 here.
    assert mean_length > 1.2, mean_length


def test_shared_medusa_heads_on_quantized_lm_head(w8a8, w8a8_heads, w8a8_plain):
    """Medusa heads sharing the int8 LM head go through the target's compute_logits."""
    got, mean_length, warnings = speculate(w8a8, w8a8_heads[1], num_speculative_tokens=4)
    assert got == w8a8_plain
    assert not warnings
    assert mean_length > 1.15, mean_length  # about 1.3 here; chance is about 1.0


def test_fp8_kv_cache_tree_falls_back_to_chain(tiny_assets):
    """A tree over an fp8 KV cache: a chain, one warning, output equal to plain decoding
    with the same cache. Before: the engine died at the first tree step (the CPU tree
    path refuses a quantized cache)."""
    llm = make_llm(tiny_assets[0], kv_cache_dtype="fp8")
    try:
        want = token_ids(llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    finally:
        llm.llm_engine.engine_core.shutdown()
    got, mean_length, warnings = speculate(tiny_assets[0], tiny_assets[1], tree=MIXED, kv_cache_dtype="fp8")
    assert got == want
    assert len(warnings) == 1 and "KV cache of dtype fp8 on CPU; drafting a chain instead" in warnings[0], warnings
    # The fp8 cache moves this random model's greedy choices away from the float
    # continuations the heads were fitted to: 1.16 here, chance about 1.0.
    assert mean_length > 1.08, mean_length


def engine_config(model, spec, **engine):
    args = EngineArgs(model=str(model), max_model_len=512, speculative_config=spec,
                      **{"dtype": "float32", **engine})
    return args.create_engine_config()


@pytest.mark.parametrize("kv", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_every_fp8_spelling_drops_the_tree(tiny_assets, kv):
    with plugin_warnings() as warnings:
        cfg = engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "tree": MIXED, "lookup": 0},
                            kv_cache_dtype=kv)
    assert cfg.additional_config["nfoxhead"]["tree"] is None
    assert cfg.speculative_config.num_speculative_tokens == 4  # the chain's default: one per head
    assert len(warnings) == 1 and f"KV cache of dtype {kv}" in warnings[0]


@pytest.mark.parametrize("scheme,dtype,tree_kept", [
    ("w8a8_int8", "float32", False), ("w8a8_fp8", "float32", False),  # activations quantized
    ("w4a16", "bfloat16", True), ("gptq_w4", "bfloat16", True),  # weight-only
])
def test_trees_kept_only_on_bases_with_float_activations(tiny_assets, tmp_path, scheme, dtype, tree_kept):
    from vllm_nfoxhead.models.quantized_model import quantize_checkpoint

    model = quantize_checkpoint(tiny_assets[0], tmp_path / scheme, scheme)
    with plugin_warnings() as warnings:
        cfg = engine_config(model, {"model": f"nfoxhead:{tiny_assets[1]}", "tree": MIXED}, dtype=dtype)
    assert (cfg.additional_config["nfoxhead"]["tree"] == MIXED) == tree_kept
    assert len(warnings) == (0 if tree_kept else 1), warnings


def test_heads_for_another_model_refused_on_quantized_base(w8a8, mismatched_heads):
    """Hidden size and vocabulary come from the base's config, quantized or not."""
    for field, heads in mismatched_heads:
        with pytest.raises(NFoxHeadError, match=field):
            engine_config(w8a8, {"model": f"nfoxhead:{heads}"})
