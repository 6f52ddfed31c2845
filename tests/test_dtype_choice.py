"""dtype_choice: bf16 only where the hardware computes it natively."""

from __future__ import annotations

import torch

from vllm_nfoxhead.core import dtype_choice


def test_explicit_dtypes_pass_through():
    assert dtype_choice.resolve_dtype("bfloat16") == "bfloat16"
    assert dtype_choice.resolve_dtype("float32") == "float32"


def test_cuda_is_bf16():
    assert dtype_choice.resolve_dtype("auto", "cuda") == "bfloat16"


def test_x86_without_avx512_bf16_or_amx_is_float32(monkeypatch):
    monkeypatch.setattr(dtype_choice.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert dtype_choice.resolve_dtype("auto") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert dtype_choice.resolve_dtype("auto") == "bfloat16"


def test_arm_is_bf16(monkeypatch):
    monkeypatch.setattr(dtype_choice.platform, "machine", lambda: "aarch64")
    assert dtype_choice.resolve_dtype("auto") == "bfloat16"
