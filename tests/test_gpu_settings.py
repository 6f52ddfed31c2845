"""Engine settings a tree needs on a GPU (checked here by making vLLM's platform
report a non-CPU device for the duration of the test: only our translation runs)."""

from __future__ import annotations

import pytest
from vllm.config.compilation import CUDAGraphMode
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms import current_platform

from vllm_nfoxhead.errors import NFoxHeadError
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
