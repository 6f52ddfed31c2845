"""Stand-ins for the five vLLM names the extracted kernel modules import.

Hand-written, not extracted (scripts/gpu_check/extract_kernels.py rewrites the
kernel modules' `vllm...` imports to this module and checks that every name and
attribute they use is defined here). Each stand-in returns what vLLM 0.33's
own object returns on a CUDA GPU:

  vllm.envs                              VLLM_BATCH_INVARIANT (same environment variable)
  vllm.logger.init_logger                a logging.Logger with debug_once
  vllm.platforms.current_platform        fp8_dtype(), is_device_capability_family()
  vllm.triton_utils.triton / tl          the real triton and triton.language
  vllm.v1.kv_cache_interface.KVQuantMode the enum's first five members, same values
"""

from __future__ import annotations

import logging
import os
from enum import IntEnum

import torch
import triton
import triton.language as tl

__all__ = ["VLLM_BATCH_INVARIANT", "KVQuantMode", "current_platform", "init_logger", "tl", "triton"]

# vllm/envs.py: bool(int(os.getenv("VLLM_BATCH_INVARIANT", "0")))
VLLM_BATCH_INVARIANT = bool(int(os.getenv("VLLM_BATCH_INVARIANT", "0")))


class KVQuantMode(IntEnum):
    """vllm/v1/kv_cache_interface.py KVQuantMode, the members the unified kernel reads."""

    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4


class _Logger(logging.LoggerAdapter):
    """vLLM's logger adds *_once methods; the kernel module uses debug_once."""

    _seen: set[str] = set()

    def debug_once(self, msg: str, *args: object) -> None:
        if msg not in self._seen:
            self._seen.add(msg)
            self.debug(msg, *args)


def init_logger(name: str) -> _Logger:
    return _Logger(logging.getLogger(name), {})


class _CudaPlatform:
    """vllm/platforms/interface.py semantics for the two calls the kernel module makes."""

    @staticmethod
    def fp8_dtype() -> torch.dtype:
        return torch.float8_e4m3fn  # Platform.fp8_dtype (ROCm's fnuz is irrelevant here)

    @staticmethod
    def is_device_capability_family(capability: int, device_id: int = 0) -> bool:
        """True if the device is any <major>.x of `capability` (e.g. 100 = 10.x); False without CUDA."""
        if not torch.cuda.is_available():
            return False
        major, minor = torch.cuda.get_device_capability(device_id)
        return (major * 10 + minor) // 10 == capability // 10


current_platform = _CudaPlatform()
