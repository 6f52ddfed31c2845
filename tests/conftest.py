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
