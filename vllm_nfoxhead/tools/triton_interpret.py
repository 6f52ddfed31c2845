"""Running vLLM's Triton attention helpers under Triton's interpreter (TRITON_INTERPRET=1).

Compiled Triton lowers `x and y` on block tensors to an elementwise
logical_and (triton/compiler/code_generator.py, visit_BoolOp ->
_apply_boolean_values), but the interpreter evaluates Python's `and`, and its
tensors are always truthy (interpreter.py `_get_bool`), so `x and y` there is
just `y`. vLLM's `load_qq_bias_tile` (0.32 and 0.33) relies on the compiled
meaning (`key_rel_pos >= 0 and key_rel_pos < qq_bias_stride_0`); without this
rewrite the interpreter would bias prefix keys with out-of-range reads.

Used by the CPU tests of the tree attention (tests/triton_interpret_cases.py)
and by the GPU check in interpreter mode (scripts/gpu_check/check_kernels.py).
Imports no vLLM; Triton only when called.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any


class AndToBitAnd(ast.NodeTransformer):
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


def interpretable(jit_fn: Any, expected_ands: int = 1) -> Any:
    """A @triton.jit function re-jitted with its `and`s between blocks written as `&`.

    Raises if the source holds another number of `and`s than expected: the
    helper changed upstream and the rewrite must be looked at again.
    """
    import triton

    fn = jit_fn.fn
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    tree.body[0].decorator_list = []
    rewriter = AndToBitAnd()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    if rewriter.count != expected_ands:
        raise RuntimeError(f"{fn.__name__} changed: expected {expected_ands} `and`, found {rewriter.count}")
    namespace: dict[str, Any] = {}
    exec(compile(tree, f"<{fn.__name__} with and -> &>", "exec"), fn.__globals__, namespace)
    return triton.jit(namespace[fn.__name__])
