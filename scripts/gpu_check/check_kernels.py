"""vLLM's Triton attention kernel from vllm_kernels/ (no vLLM), and the glue the checks need.

* `block_vllm()`: any import of `vllm` or `vllm.*` fails from then on, so a
  check can never run the installed vLLM's code by accident (on the GPU
  machine there is none; in CI the CPU build is installed).
* `load_unified_attention()`: the extracted kernel module. Under Triton's
  interpreter one helper is re-jitted first (see vllm_nfoxhead/tools/triton_interpret.py).
* `plugin_vllm_imports()`: the plugin's GPU functions import vLLM lazily,
  inside their bodies. While this context is active exactly these imports
  resolve, without adding anything named vllm to sys.modules, so the plugin's
  own code runs unchanged:
    vllm.v1.attention.ops.triton_unified_attention  the extracted kernel module
    vllm.v1.kv_cache_interface.is_quantized_kv_cache  "auto" = not quantized
    vllm.platforms.current_platform.is_cpu()  False: the Triton backend's paths
    vllm.v1.sample.ops.topk_topp_sampler.apply_top_k_top_p  the plugin's torch
        top_k_top_p (tree_verify.py), documented as the same rule as vLLM's
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.abc
import os
import sys
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any


class _NoVllm(importlib.abc.MetaPathFinder):
    """Refuses `vllm` and `vllm.*` (not vllm_nfoxhead / vllm_kernels: other top-level names)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "vllm" or fullname.startswith("vllm."):
            raise ModuleNotFoundError(f"{fullname}: the GPU check runs without vLLM (blocked by check_kernels)")
        return None


def block_vllm() -> None:
    if any(isinstance(f, _NoVllm) for f in sys.meta_path):
        return
    loaded = sorted(m for m in sys.modules if m == "vllm" or m.startswith("vllm."))
    if loaded:
        raise RuntimeError(f"vLLM modules already imported before the check started: {loaded[:5]}")
    sys.meta_path.insert(0, _NoVllm())


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_module: ModuleType | None = None


def load_unified_attention() -> ModuleType:
    """vllm_kernels.triton_unified_attention, ready to run (interpreted or compiled)."""
    global _module
    if _module is not None:
        return _module
    from vllm_kernels import triton_attention_helpers as helpers
    from vllm_kernels import triton_unified_attention as unified

    if interpreting():
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(unified.kernel_unified_attention, InterpretedFunction):
            raise RuntimeError("TRITON_INTERPRET=1 but the kernel is not interpreted "
                               "(triton was imported before the variable was set)")
        from vllm_nfoxhead.tools.triton_interpret import interpretable

        load_bias = interpretable(helpers.load_qq_bias_tile)
        helpers.load_qq_bias_tile = load_bias
        unified.load_qq_bias_tile = load_bias  # the kernel looks the name up at run time
    _module = unified
    return unified


def is_quantized_kv_cache(kv_cache_dtype: str) -> bool:
    """Stand-in for vllm.v1.kv_cache_interface.is_quantized_kv_cache ("auto" = not quantized)."""
    return kv_cache_dtype != "auto"


@contextlib.contextmanager
def plugin_vllm_imports() -> Iterator[None]:
    """Let the plugin's two lazy vLLM imports resolve to the extracted kernel (see module doc)."""
    from vllm_nfoxhead.core.tree_verify import top_k_top_p

    unified = load_unified_attention()
    targets = {
        "vllm.v1.attention.ops.triton_unified_attention": unified,
        "vllm.v1.kv_cache_interface": SimpleNamespace(is_quantized_kv_cache=is_quantized_kv_cache),
        "vllm.platforms": SimpleNamespace(current_platform=SimpleNamespace(is_cpu=lambda: False)),
        "vllm.v1.sample.ops.topk_topp_sampler": SimpleNamespace(apply_top_k_top_p=top_k_top_p),
    }
    original = builtins.__import__

    def redirected(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0):
        if level == 0 and name in targets and fromlist:
            return targets[name]
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = redirected
    try:
        yield
    finally:
        builtins.__import__ = original


def vllm_modules_loaded() -> list[str]:
    return sorted(m for m in sys.modules if m == "vllm" or m.startswith("vllm."))
