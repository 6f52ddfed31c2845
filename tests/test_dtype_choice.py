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


EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
"""


def test_describe_cpu_names_the_cpu_and_its_bf16_flags(monkeypatch):
    monkeypatch.setattr(dtype_choice.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    line = dtype_choice.describe_cpu(EPYC_CPUINFO)
    assert line.startswith("AMD EPYC 9654 96-Core Processor, ")
    assert line.endswith(", x86_64, native bf16 (avx512_bf16)")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert dtype_choice.describe_cpu("model name : Old Xeon\nflags : avx2\n").endswith(
        "x86_64, no native bf16 (no avx512_bf16 or amx_bf16)")


def test_describe_cpu_without_cpuinfo():
    assert "CPUs, " in dtype_choice.describe_cpu("")
    assert "bf16" in dtype_choice.describe_cpu()  # this machine's /proc/cpuinfo, if any


def test_explain_dtype_says_why(monkeypatch):
    assert dtype_choice.explain_dtype("float32") == "float32 (--dtype float32)"
    assert dtype_choice.explain_dtype("auto", "cuda").startswith("bfloat16 (--dtype auto: cuda ")
    monkeypatch.setattr(dtype_choice, "cpu_bf16_native", lambda: False)
    assert dtype_choice.explain_dtype("auto").startswith("float32 (--dtype auto: this CPU has no native bf16")
    monkeypatch.setattr(dtype_choice, "cpu_bf16_native", lambda: True)
    assert dtype_choice.explain_dtype("auto") == "bfloat16 (--dtype auto: this CPU computes bf16 natively)"
