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

import platform

import torch

DTYPE_CHOICES = ("auto", "bfloat16", "float32")


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


AUTO_HELP = ("auto (default): bfloat16 where the hardware computes it natively (GPU, x86 CPU with "
             "AVX512-BF16/AMX), else float32, since emulated bf16 is several times slower")
