"""Shared fixtures: the tiny Llama checkpoint with fitted heads, and real vLLM engines.

Engines are expensive (about 20 s to start on 2 cores), so each kind is
started once per session and shared by every test that needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The CPU backend sizes its KV cache from memory; tests give it a small fixed size.
KV_CACHE_BYTES = 96 * 2**20


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, Path]:
    """(model_dir, heads_dir) of the tiny random Llama and heads fitted to it."""
    from vllm_nfoxhead.models.tiny_model import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny") / "assets")


@pytest.fixture(scope="session")
def policy_heads(tiny_assets, tmp_path_factory) -> Path:
    """The tiny heads with per-rank accuracies, so the load policy (and its tuner) run."""
    import json
    import shutil

    heads = tmp_path_factory.mktemp("policy") / "heads"
    shutil.copytree(tiny_assets[1], heads)
    config = json.loads((heads / "config.json").read_text())
    config.setdefault("extra", {})["rank_accuracy"] = [[0.8, 0.1], [0.7, 0.1], [0.6, 0.1], [0.5, 0.1]]
    (heads / "config.json").write_text(json.dumps(config))
    return heads


@pytest.fixture(scope="session")
def draft_layer(tiny_assets, tmp_path_factory) -> Path:
    """A draft layer (architecture draft_layer) fitted to the tiny model, window 16."""
    from vllm_nfoxhead.models.tiny_model import write_fitted_layer

    return write_fitted_layer(tiny_assets[0], tmp_path_factory.mktemp("layer") / "layer")


@pytest.fixture(scope="session")
def fused_layer(tiny_assets, tmp_path_factory) -> Path:
    """A draft layer fed the tiny model's embeddings and first layer's output besides its final
    state (feature layers 0 and 1, EAGLE-3's aux hidden states), window 16."""
    from vllm_nfoxhead.models.tiny_model import write_fitted_layer

    return write_fitted_layer(tiny_assets[0], tmp_path_factory.mktemp("fused") / "layer", feature_layers=(0, 1))


@pytest.fixture()
def mismatched_heads(tmp_path) -> list[tuple[str, Path]]:
    """(start of the refusal message, heads dir) for heads whose hidden size, or whose
    vocabulary, differs from the tiny model's (hidden 128, vocabulary 384)."""
    import torch

    from vllm_nfoxhead.core.format import HeadsConfig, save_heads
    from vllm_nfoxhead.core.heads import NFoxHeads

    made = []
    for field, config in [
        ("hidden size 64 but", HeadsConfig(num_heads=2, num_layers=1, hidden_size=64,
                                            vocab_size=384, shared_lm_head=True)),
        ("vocabulary size 500 but", HeadsConfig(num_heads=2, num_layers=1, hidden_size=128,
                                                vocab_size=500, shared_lm_head=False)),
    ]:
        torch.manual_seed(0)
        out = tmp_path / field.split()[0]
        save_heads(out, config, NFoxHeads(config).state_dict_for_format())
        made.append((field, out))
    return made


def make_llm(model: Path, heads: Path | None = None, **overrides):
    """A real vLLM engine in float32 (the greedy-equality oracle needs exact math)."""
    from vllm import LLM

    kwargs = dict(
        model=str(model), dtype="float32", seed=0, max_model_len=512,
        kv_cache_memory_bytes=KV_CACHE_BYTES, disable_log_stats=False,
        max_num_seqs=32,
    )
    if heads is not None:
        # Heads alone (lookup off), so draft counts and acceptance are the heads'; the
        # lookup drafts have their own engine in test_engine_lookup.py.
        kwargs["speculative_config"] = {"model": f"nfoxhead:{heads}", "num_speculative_tokens": 4, "lookup": 0}
    kwargs.update(overrides)
    return LLM(**kwargs)


@pytest.fixture(scope="session")
def plain_llm(tiny_assets):
    llm = make_llm(tiny_assets[0])
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def nfox_llm(tiny_assets):
    llm = make_llm(*tiny_assets)
    yield llm
    llm.llm_engine.engine_core.shutdown()


def pytest_configure(config):
    # vLLM spawns its engine process; keep its logs short in test output.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
