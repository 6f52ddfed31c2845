"""vLLM's Triton attention kernel from vllm_kernels/ (no vLLM), and the glue the checks need.

* `block_vllm()`: any import of `vllm` or `vllm.*` fails from then on, so a
  check can never run the installed vLLM's code by accident (on the GPU
  machine there is none; in CI the CPU build is installed).
* `load_unified_attention()`: the extracted kernel module. Under Triton's
  interpreter one helper is re-jitted first (see `_interpretable`).
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

import ast
import builtins
import contextlib
import importlib.abc
import inspect
import os
import sys
import textwrap
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


class _AndToBitAnd(ast.NodeTransformer):
    """`a and b` -> `a & b`: what compiled Triton does with block operands (logical_and)."""

    def __init__(self) -> None:
        self.count = 0

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.op, ast.And):
            return node
        self.count += 1
        expr = node.values[0]
        for value in node.values[1:]:
            expr = ast.BinOp(left=expr, op=ast.BitAnd(), right=value)
        return ast.copy_location(expr, node)


def _interpretable(jit_fn: Any) -> Any:
    """`load_qq_bias_tile` re-jitted with its one `and` between blocks written as `&`.

    Interpreter only. Compiled Triton lowers `x and y` on block tensors to an
    elementwise logical_and, but the interpreter evaluates Python's `and`, and
    its tensors are always truthy, so there `x and y` is just `y`: the helper
    (`key_rel_pos >= 0 and key_rel_pos < qq_bias_stride_0`) would bias prefix
    keys with out-of-range reads. On a GPU the extracted file runs unchanged.
    Same rewrite as tests/triton_interpret_cases.py does for vLLM 0.32.
    """
    import triton

    fn = jit_fn.fn
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    tree.body[0].decorator_list = []
    rewriter = _AndToBitAnd()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    if rewriter.count != 1:
        raise RuntimeError(f"{fn.__name__} changed: expected one `and`, found {rewriter.count}")
    namespace: dict[str, Any] = {}
    exec(compile(tree, f"<{fn.__name__} with and -> &>", "exec"), fn.__globals__, namespace)
    return triton.jit(namespace[fn.__name__])


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
        load_bias = _interpretable(helpers.load_qq_bias_tile)
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
    from vllm_nfoxhead.tree_verify import top_k_top_p

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
