"""One-shot GPU check of the plugin's GPU code, without vLLM (see docs/gpu-check.md).

    python scripts/gpu_check/run.py                 # on a CUDA GPU (full sizes)
    python scripts/gpu_check/run.py --interpret     # CPU, Triton interpreter, toy sizes (CI)

Checks: vLLM's Triton attention kernel with the tree as qq_bias against SDPA
(several trees, GQA ratios, block sizes, bf16/fp16); the plugin's
fix_tree_rows_triton on a mixed batch; KV compaction on the Triton cache
layout; tree acceptance (verify_trees: greedy and typical against the CPU,
exact sampling statistically and with per-request generators); the heads and
tree drafting against the CPU; then a verification-cost table for a
Llama-3-8B-shaped model in tree_builder's --cost-table format.

Writes report.json and cost_table.json to --out, else $OUT, else ./gpu-check-out;
prints one PASS/FAIL line per check; exits 1 if any check failed (2: could not start).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from check_common import Check, Results, Sizes

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interpret", action="store_true",
                   help="run on the CPU under Triton's interpreter (sets TRITON_INTERPRET=1; implies --small)")
    p.add_argument("--small", action="store_true", help="toy sizes (the CI run)")
    p.add_argument("--out", type=Path, help="results folder (default: $OUT, else ./gpu-check-out)")
    p.add_argument("--only", nargs="+", metavar="PREFIX", help="run only checks whose name starts with one of these")
    p.add_argument("--skip-cost", action="store_true", help="do not measure the cost table")
    p.add_argument("--compile-only", action="store_true",
                   help="no GPU needed: compile every kernel variant of the GPU run for --arch with this "
                        "machine's Triton, run nothing (with --small: the bf16, block-16 variants only)")
    p.add_argument("--arch", type=int, default=90, help="CUDA arch for --compile-only (default %(default)s: H100/H200)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret and args.compile_only:
        print("FAIL setup: --compile-only needs compiled Triton, not --interpret", flush=True)
        return 2
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (torch does not import it)
        args.small = True
    elif args.compile_only:
        os.environ.pop("TRITON_INTERPRET", None)
    sys.path[:0] = [str(HERE), str(REPO)]  # vllm_kernels + check modules, then the plugin (not installed there)
    # vLLM's load_qq_bias_tile writes `a and b` on blocks; compiled Triton evaluates it elementwise (what the
    # kernel needs, and what the attention checks verify) but warns at every compile.
    warnings.filterwarnings("ignore", message="Logical operators 'and' and 'or' are deprecated")
    if "TRITON_CACHE_DIR" not in os.environ and not os.access(Path.home(), os.W_OK):
        os.environ["TRITON_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "gpu_check_triton_cache")
    from check_kernels import block_vllm

    block_vllm()
    started = time.time()
    import torch

    _stub_safetensors_if_missing()
    from dataclasses import replace

    from check_common import FULL, SMALL, Results

    sizes = SMALL if args.small else FULL
    if args.interpret:
        sizes = SMALL
    elif args.compile_only:
        sizes = replace(FULL, device="cpu")
        if args.small:
            sizes = replace(sizes, attn_dtypes=("bfloat16",), attn_block_sizes=(16,), mixed_dtypes=("bfloat16",))
    elif not torch.cuda.is_available():
        print("FAIL setup: no CUDA device; run with --interpret for the CPU check", flush=True)
        return 2
    elif args.small:
        sizes = replace(SMALL, device="cuda")
    out_dir = args.out or Path(os.environ.get("OUT") or "gpu-check-out")
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(sizes)
    how = "interpreter" if args.interpret else f"compile only, sm_{args.arch}" if args.compile_only else "compiled"
    print(f"gpu check: {env['device_name']}, torch {env['torch']}, triton {env['triton']}, {how}, "
          f"{'small' if args.small else 'full'} sizes -> {out_dir}", flush=True)

    results = Results()
    with contextlib.ExitStack() as stack:
        if args.compile_only:
            import check_compile

            compiled = stack.enter_context(check_compile.compile_launches(args.arch))
            checks = check_compile.compile_plan(sizes, compiled)
        else:
            checks = plan(sizes, out_dir, args.skip_cost)
        for name, fn in checks:
            if args.only and not any(name.startswith(p) for p in args.only):
                continue
            results.run(name, fn)
            write_report(out_dir, env, results, time.time() - started, args, complete=False)  # survives a timeout

    from check_kernels import vllm_modules_loaded

    env["vllm_modules_loaded"] = vllm_modules_loaded()
    kernel = sys.modules.get("vllm_kernels.triton_unified_attention")
    env["kernel_file"] = None if kernel is None else str(Path(kernel.__file__).resolve().relative_to(REPO))
    if env["vllm_modules_loaded"]:
        results.run("no_vllm", lambda c: (_ for _ in ()).throw(AssertionError(
            f"vLLM modules were imported: {env['vllm_modules_loaded'][:5]}")))
    write_report(out_dir, env, results, time.time() - started, args, complete=True)
    passed = sum(c.status == "PASS" for c in results.checks)
    failed = [c.name for c in results.checks if c.status == "FAIL"]
    print(f"{'PASS' if not failed else 'FAIL'} all: {passed} passed, {len(failed)} failed, "
          f"{sum(c.status == 'SKIP' for c in results.checks)} skipped in {time.time() - started:.0f}s; "
          f"report {out_dir / 'report.json'}", flush=True)
    return 0 if not failed else 1


def plan(sizes: Sizes, out_dir: Path, skip_cost: bool) -> list[tuple[str, Callable[[Check], None]]]:
    """(check name, fn(check)) in run order."""
    import check_attention as att
    import check_cost as cost
    import check_draft_layer as layer
    import check_sampling as smp

    checks = []
    for dtype in sizes.attn_dtypes:
        for block in sizes.attn_block_sizes:
            for h_q, h_kv in sizes.attn_gqa:
                name = f"attention[{dtype},block={block},heads={h_q}/{h_kv},D={sizes.attn_head_size}]"
                seed = len(checks)
                checks.append((name, lambda c, d=dtype, b=block, q=h_q, k=h_kv, s=seed:
                               att.check_attention_case(c, sizes, d, b, q, k, s)))
    for dtype in sizes.mixed_dtypes:
        checks.append((f"fix_tree_rows_triton[{dtype},mixed batch]",
                       lambda c, d=dtype: att.check_mixed_batch(c, sizes, d)))
    checks += [
        ("kv_compaction", lambda c: att.check_compaction(c, sizes)),
        ("verify_trees[greedy]", lambda c: smp.check_greedy(c, sizes)),
        ("verify_trees[typical]", lambda c: smp.check_typical(c, sizes)),
        ("verify_trees[generators]", lambda c: smp.check_generators(c, sizes)),
        ("verify_trees[sampling distribution]", lambda c: smp.check_sampling_distribution(c, sizes)),
        ("tree_sampler_step", lambda c: smp.check_sampler_step(c, sizes)),
        ("heads", lambda c: smp.check_heads(c, sizes)),
        ("draft_layer", lambda c: layer.check_draft_layer(c, sizes)),
    ]
    if not skip_cost:
        checks.append(("cost_table", lambda c: cost.check_cost_table(c, sizes, out_dir)))
    return checks


def _stub_safetensors_if_missing() -> None:
    """vllm_nfoxhead.core.heads imports format.py, which imports safetensors (only to read/write files,
    which no check does). If the GPU machine lacks it, stand-in modules let the import succeed."""
    try:
        importlib.import_module("safetensors")
        importlib.import_module("safetensors.torch")
    except ImportError:
        import types

        def missing(*_a, **_k):
            raise RuntimeError("safetensors is not installed on this machine")

        top, sub = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
        top.safe_open, sub.save_file, sub.load_file, top.torch = missing, missing, missing, sub
        sys.modules.update({"safetensors": top, "safetensors.torch": sub})
        os.environ["GPU_CHECK_SAFETENSORS_STUB"] = "1"


def environment(sizes: Sizes) -> dict[str, Any]:
    """What ran the check: device, library versions, interpreter and stub flags, vendored kernels."""
    import platform

    import torch
    import triton

    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    cuda = sizes.device == "cuda"
    kernels = HERE / "vllm_kernels" / "PROVENANCE.json"
    import json

    provenance = json.loads(kernels.read_text()) if kernels.is_file() else {}
    return {
        "device": sizes.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "numpy": numpy_version, "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "safetensors_stubbed": os.environ.get("GPU_CHECK_SAFETENSORS_STUB") == "1",
        "vllm_kernels": {k: provenance.get(k) for k in ("vllm_version", "vllm_commit", "wheel")},
    }


def write_report(out_dir: Path, env: dict[str, Any], results: Results, seconds: float, args: argparse.Namespace,
                 complete: bool) -> None:
    import json
    from dataclasses import asdict

    report = {"ok": results.ok and complete, "complete": complete, "seconds": round(seconds, 1),
              "mode": ("compile-only " if args.compile_only else "") + ("small" if args.small else "full"),
              "environment": env, "checks": [asdict(c) for c in results.checks]}
    cost = next((c for c in results.checks if c.name == "cost_table" and "cost_table" in c.detail), None)
    report["cost_table"] = cost.detail["cost_table"] if cost else None
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
