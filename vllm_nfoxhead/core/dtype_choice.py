"""Which float dtype to compute in on this machine: bfloat16 where it is native, else float32.

SmolLM2 ships in bf16 and vLLM serves it in bf16, which is right on GPUs and on
x86 CPUs with AVX512-BF16 or AMX. On an x86 CPU without them (AVX2 only, e.g.
many AMD EPYC hosts), PyTorch and vLLM's CPU kernels emulate bf16: a 16x576 by
576x1536 linear measured 5.6 ms in bf16 against 0.9 ms in float32 on such a
2-core host, and plain vLLM at 16 requests ran 22.7 tok/s in bf16 against 91.9 in
float32 (about 4x). The project's
CLIs take `--dtype auto` (their default) and resolve it here.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DTYPE_CHOICES = ("auto", "bfloat16", "float32")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of x86's bf16 instructions


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (x86: AVX512-BF16 or AMX; other ISAs: assumed)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True  # aarch64/ppc64le/s390x builds of vLLM treat bf16 as native
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(torch.cpu._is_avx512_bf16_supported() or amx())


def fast_dtype(device: str = "cpu") -> str:
    """'bfloat16' on CUDA or a CPU with native bf16, else 'float32'."""
    if device != "cpu" or cpu_bf16_native():
        return "bfloat16"
    return "float32"


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """`name` itself, or for 'auto' this machine's fast dtype."""
    return fast_dtype(device) if name == "auto" else name


def describe_cpu(cpuinfo: str | None = None) -> str:
    """One line on this CPU for logs and reports: model name, CPUs usable, ISA, bf16 verdict.

    e.g. 'AMD EPYC, 2 CPUs, x86_64, native bf16 (avx512_bf16)'. The name and flags come
    from `cpuinfo` (default: /proc/cpuinfo); the verdict is cpu_bf16_native()'s, the one
    --dtype auto goes by.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = platform.machine() or "unknown ISA"
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if not cpu_bf16_native():
        bf16 = f"no native bf16 (no {' or '.join(BF16_CPU_FLAGS)})"
    elif found:
        bf16 = f"native bf16 ({', '.join(found)})"
    else:
        bf16 = "native bf16"
    return f"{name}, {cpus} CPUs, {isa}, {bf16}"


def explain_dtype(requested: str, device: str = "cpu") -> str:
    """resolve_dtype(requested, device) and why, e.g. 'bfloat16 (--dtype auto: native bf16 here)'."""
    chosen = resolve_dtype(requested, device)
    if requested != "auto":
        return f"{chosen} (--dtype {requested})"
    if device != "cpu":
        return f"{chosen} (--dtype auto: {device} computes bf16 natively)"
    if chosen == "bfloat16":
        return f"{chosen} (--dtype auto: this CPU computes bf16 natively)"
    return f"{chosen} (--dtype auto: this CPU has no native bf16, and emulated bf16 is several times slower)"


AUTO_HELP = ("auto (default): bfloat16 where the hardware computes it natively (GPU, x86 CPU with "
             "AVX512-BF16/AMX), else float32, since emulated bf16 is several times slower")
