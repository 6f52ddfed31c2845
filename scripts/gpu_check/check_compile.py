"""Compile (do not run) the kernel variants of the GPU run for a GPU target, on any machine.

Triton compiles ahead of time without a GPU: the backend's compiler and ptxas
ship in the triton wheel, and nothing needs the CUDA driver until a launch.
`run.py --compile-only` calls vLLM's `unified_attention` wrapper with CPU
tensors of the GPU run's shapes and dtypes; the launches of
`kernel_unified_attention` and `reduce_segments` are intercepted and, instead
of running, compiled for the target (default sm_90, the H200) through the same
binder and `_pack_args` that `JITFunction.run` uses, so the specialisation
(dtypes, constexprs, divisibility) is the one a real launch would compile.

This proves, before any GPU time is spent, that the extracted kernel compiles
with the installed Triton (run it with the GPU machine's Triton version) for
every variant, and reports each variant's shared memory and warps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from check_common import Check, Sizes, dtype_of, require
from check_kernels import load_unified_attention

from vllm_nfoxhead.integration.triton_tree_attention import kernel_bias, paged_kv
from vllm_nfoxhead.core.tree import parse_tree

SM90_SHARED = 232448  # bytes of shared memory per block on sm_90 (227 KB)


class Compiled:
    def __init__(self) -> None:
        self.kernels: dict[str, dict[str, Any]] = {}  # specialisation key -> metadata summary


@contextmanager
def compile_launches(arch: int) -> Iterator[Compiled]:
    """Inside: the kernel module's launches compile for cuda:arch and return without running."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as triton_compile
    from triton.runtime.jit import create_function_from_signature

    unified = load_unified_attention()
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    compiled = Compiled()
    originals = {name: getattr(unified, name) for name in ("kernel_unified_attention", "reduce_segments")}

    class Launcher:
        def __init__(self, fn: Any) -> None:
            self.fn = fn
            self.binder = create_function_from_signature(fn.signature, fn.params, backend)

        def __getitem__(self, grid: Any):
            def launch(*args: Any, **kwargs: Any) -> None:
                kwargs["debug"] = False
                for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # JITFunction.run adds these
                    if hasattr(triton.knobs.compilation, knob):
                        kwargs[knob] = getattr(triton.knobs.compilation, knob)
                bound, specialization, options = self.binder(*args, **kwargs)
                options, signature, constexprs, attrs = self.fn._pack_args(backend, kwargs, bound,
                                                                            specialization, options)
                key = f"{self.fn.__name__} {sorted(signature.items())} {sorted(constexprs.items(), key=str)} {attrs}"
                if key in compiled.kernels:
                    return
                start = time.perf_counter()
                kernel = triton_compile(ASTSource(self.fn, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
                compiled.kernels[key] = {"kernel": self.fn.__name__, "seconds": round(time.perf_counter() - start, 2),
                                         "num_warps": kernel.metadata.num_warps,
                                         "num_stages": kernel.metadata.num_stages,
                                         "shared_bytes": kernel.metadata.shared}
            return launch

    for name, fn in originals.items():
        setattr(unified, name, Launcher(fn))
    try:
        yield compiled
    finally:
        for name, fn in originals.items():
            setattr(unified, name, fn)


def _call(unified, dtype: torch.dtype, block: int, h_q: int, h_kv: int, d: int, rows: int, seqs: int,
          bias: torch.Tensor | None, split_k: bool) -> None:
    """unified_attention with zero CPU tensors of the given shape (only launches matter)."""
    blocks = 64
    kv = torch.zeros(blocks, block, h_kv, 2 * d, dtype=dtype).transpose(1, 2)
    key_cache, value_cache = paged_kv(kv, d)
    q = torch.zeros(rows * seqs, h_q, d, dtype=dtype)
    ones = torch.ones(1)
    extra = {}
    if split_k:
        segments = 16
        extra = dict(seq_threshold_3D=128 // h_kv, num_par_softmax_segments=segments,
                     softmax_segm_output=torch.empty(128, h_q, segments, d),
                     softmax_segm_max=torch.empty(128, h_q, segments),
                     softmax_segm_expsum=torch.empty(128, h_q, segments))
    unified.unified_attention(
        q=q, k=key_cache, v=value_cache, out=torch.empty_like(q),
        cu_seqlens_q=torch.arange(seqs + 1, dtype=torch.int32) * rows, max_seqlen_q=rows,
        seqused_k=torch.full((seqs,), 300, dtype=torch.int32), max_seqlen_k=300, softmax_scale=d ** -0.5,
        causal=True, window_size=(-1, -1), block_table=torch.zeros(seqs, blocks, dtype=torch.int32), softcap=0,
        q_descale=None, k_descale=ones.expand(seqs, h_kv), v_descale=ones.expand(seqs, h_kv), qq_bias=bias,
        use_td=False, **extra)


def variants(sizes: Sizes) -> list[tuple[str, dict]]:
    """(name, _call arguments) for every kind of launch the GPU run makes with `sizes`."""
    d = sizes.attn_head_size
    mask = parse_tree("mc_sim_16").buffers("cpu").attn_mask
    bias = kernel_bias(mask, "cpu")
    out = []
    for dtype in sizes.attn_dtypes:  # the attention checks: tree bias, 2D, 3 requests
        for block in sizes.attn_block_sizes:
            for h_q, h_kv in sizes.attn_gqa:
                out.append((f"compile[{dtype},block={block},heads={h_q}/{h_kv},D={d},qq_bias]",
                            dict(dtype=dtype, block=block, h_q=h_q, h_kv=h_kv, d=d, rows=mask.shape[0], seqs=3,
                                 bias=bias, split_k=False)))
    h_q, h_kv = sizes.attn_gqa[0]
    block = sizes.attn_block_sizes[0]
    for dtype in sizes.mixed_dtypes:  # the backend's causal pass over the mixed batch
        out.append((f"compile[{dtype},block={block},heads={h_q}/{h_kv},D={d},causal]",
                    dict(dtype=dtype, block=block, h_q=h_q, h_kv=h_kv, d=d, rows=20, seqs=5, bias=None, split_k=False)))
    cm = sizes.cost_model  # the cost table's model: split-K for <= 8 rows (one request), 2D above, tree bias
    common = dict(dtype=sizes.cost_dtype, block=cm["block_size"], h_q=cm["heads"], h_kv=cm["kv_heads"],
                  d=cm["head_dim"])
    out.append((f"compile[cost model,{sizes.cost_dtype},split-K decode]", dict(common, rows=1, seqs=1, bias=None,
                                                                              split_k=True)))
    out.append((f"compile[cost model,{sizes.cost_dtype},causal 2D]", dict(common, rows=33, seqs=1, bias=None,
                                                                         split_k=True)))
    out.append((f"compile[cost model,{sizes.cost_dtype},qq_bias]", dict(common, rows=33, seqs=1, bias=bias,
                                                                       split_k=False)))
    return out


def compile_plan(sizes: Sizes, compiled: Compiled) -> list:
    """Checks for run.py (inside `compile_launches`): one per variant, compiling the launches its call makes."""
    def one(check: Check, args: dict) -> None:
        before = set(compiled.kernels)
        _call(load_unified_attention(), **{**args, "dtype": dtype_of(args["dtype"])})
        new = [compiled.kernels[k] for k in compiled.kernels if k not in before]
        for info in new:
            require(info["shared_bytes"] <= SM90_SHARED,
                    f"{info['kernel']} needs {info['shared_bytes']} bytes of shared memory, sm_90 has {SM90_SHARED}")
        check.detail["kernels"] = new
        check.detail["summary"] = ", ".join(f"{i['kernel']} {i['seconds']}s shared {i['shared_bytes']}B "
                                            f"warps {i['num_warps']}" for i in new) or "already compiled"

    return [(name, lambda c, a=args: one(c, a)) for name, args in variants(sizes)]
