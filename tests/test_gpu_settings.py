"""Engine settings a tree needs on a GPU (checked here by making vLLM's platform
report a non-CPU device for the duration of the test: only our translation runs)."""

from __future__ import annotations

import pytest
from vllm.config.compilation import CUDAGraphMode
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms import current_platform

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.integration.options import gpu_tree_settings


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)


def test_tree_on_gpu_selects_triton_and_piecewise_graphs(on_gpu):
    args = EngineArgs(model="unused")
    gpu_tree_settings(args)
    assert args.attention_backend == "TRITON_ATTN"
    assert args.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE


def test_user_choices_are_kept_or_refused(on_gpu):
    args = EngineArgs(model="unused", attention_backend="FLASH_ATTN",
                      compilation_config={"cudagraph_mode": "NONE"})
    gpu_tree_settings(args)  # kept: the worker then drafts chains, with a warning
    assert args.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
    args = EngineArgs(model="unused", compilation_config={"cudagraph_mode": "FULL_AND_PIECEWISE"})
    with pytest.raises(NFoxHeadError, match="cudagraph_mode FULL_AND_PIECEWISE replays attention"):
        gpu_tree_settings(args)


def test_cpu_is_left_alone():
    args = EngineArgs(model="unused")
    gpu_tree_settings(args)
    assert args.attention_backend is None and args.compilation_config.cudagraph_mode is None


@pytest.fixture
def random_heads(tmp_path):
    """Heads for a hidden size 128, vocabulary 384 base (weights never run here)."""
    import torch

    from vllm_nfoxhead.core.format import HeadsConfig, save_heads
    from vllm_nfoxhead.core.heads import NFoxHeads

    config = HeadsConfig(num_heads=4, num_layers=1, hidden_size=128, vocab_size=384, shared_lm_head=True)
    torch.manual_seed(0)
    return save_heads(tmp_path / "heads", config, NFoxHeads(config).state_dict_for_format())


def validated(heads, target_model_config, **engine):
    """EngineArgs after the plugin's front-end translation and checks, and the plugin's warnings."""
    import logging
    from types import SimpleNamespace

    from vllm_nfoxhead.integration.options import translate_engine_args, validate_for_target

    args = EngineArgs(model="unused", speculative_config={"model": f"nfoxhead:{heads}", "tree": [[0], [1], [0, 0]]},
                      **engine)
    translate_engine_args(args)
    lines: list[str] = []

    def record(rec: logging.LogRecord) -> bool:
        lines.append(rec.getMessage())
        return True

    log = logging.getLogger("vllm.nfoxhead")
    log.addFilter(record)
    try:
        validate_for_target(args, hidden_size=128, vocab_size=384, base="base",
                            target_model_config=SimpleNamespace(**{"quantization": None, "hf_config": None,
                                                                   **target_model_config}))
    finally:
        log.removeFilter(record)
    return args, lines


@pytest.mark.parametrize("kv,hf_config", [
    ("fp8", None),
    ("fp8_e5m2", None),
    # kv_cache_dtype 'auto' resolved from the checkpoint, as vLLM does (ModelOpt FP8 KV).
    ("auto", {"quantization_config": {"quant_method": "modelopt", "quantization": {"kv_cache_quant_algo": "FP8"}}}),
])
def test_quantized_kv_cache_drops_the_tree_on_gpu(on_gpu, random_heads, kv, hf_config):
    """The Triton tree path refuses a quantized KV cache at run time (stopping the engine):
    the front end drafts a chain instead, with one warning, and leaves the attention
    backend and CUDA graphs to vLLM. Before: the tree was kept."""
    from types import SimpleNamespace

    hf = SimpleNamespace(**hf_config) if hf_config else SimpleNamespace()
    args, warnings = validated(random_heads, {"hf_config": hf}, kv_cache_dtype=kv)
    assert args.additional_config["nfoxhead"]["tree"] is None
    assert args.speculative_config["num_speculative_tokens"] == 8  # the chain's default (lookup 8)
    assert args.attention_backend is None and args.compilation_config.cudagraph_mode is None
    assert len(warnings) == 1 and "a quantized KV cache (fp8" in warnings[0], warnings


def test_tree_kept_on_gpu_with_auto_kv_and_a_w8a8_base(on_gpu, random_heads):
    """Activation-quantized bases drop the tree on CPU only (its fix-up's rounding)."""
    from types import SimpleNamespace

    args, warnings = validated(random_heads, {"quantization": "compressed-tensors",
                                              "hf_config": SimpleNamespace()})
    assert args.additional_config["nfoxhead"]["tree"] == [[0], [1], [0, 0]]
    assert args.attention_backend == "TRITON_ATTN" and not warnings
