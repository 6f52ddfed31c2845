"""Shared pieces of the GPU check: sizes per mode, the result list, tolerances."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full GPU run and the small interpreter run."""

    device: str
    attn_head_size: int
    attn_dtypes: tuple[str, ...]
    attn_block_sizes: tuple[int, ...]
    attn_gqa: tuple[tuple[int, int], ...]  # (query heads, KV heads)
    attn_trees: tuple[str, ...]            # preset names, or "built_N" (tree_builder, N nodes)
    attn_contexts: tuple[int, ...]         # prefix lengths of the requests of one kernel call
    mixed_dtypes: tuple[str, ...]          # fix_tree_rows_triton on a mixed batch
    vocab: int                             # acceptance checks
    batch: int
    stat_trials: int                       # sampled requests in the statistical check
    stat_vocab: int
    heads_hidden: int
    heads_vocab: int
    cost_model: dict[str, int]
    cost_sizes: tuple[int, ...]
    cost_repeats: int
    cost_warmup: int
    cost_dtype: str
    cost_split_k: bool                     # vLLM's split-K ("3D") kernel for <= 8 query rows


FULL = Sizes(
    device="cuda",
    attn_head_size=128,
    attn_dtypes=("bfloat16", "float16"),
    attn_block_sizes=(16, 32, 64),
    attn_gqa=((32, 8), (8, 8), (32, 4), (28, 4)),  # Llama-3-8B (4), MHA (1), 8, Qwen2-7B (7)
    attn_trees=("chain_4", "wide_6", "mc_sim_16", "mc_sim_7b_63", "built_128"),
    attn_contexts=(1, 37, 1000),
    mixed_dtypes=("bfloat16", "float16"),
    vocab=128256,
    batch=8,
    stat_trials=40000,
    stat_vocab=64,
    heads_hidden=4096,
    heads_vocab=32000,
    cost_model=dict(hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                    vocab=128256, context=1024, block_size=16),
    cost_sizes=(1, 2, 4, 8, 16, 32, 64, 128),
    cost_repeats=30,
    cost_warmup=3,
    cost_dtype="bfloat16",
    cost_split_k=True,
)

SMALL = Sizes(  # CPU, Triton interpreter: only the code paths, at sizes the interpreter runs in seconds
    device="cpu",
    attn_head_size=32,
    attn_dtypes=("float32", "float16"),  # no bfloat16: the interpreter computes it on raw bits (garbage)
    attn_block_sizes=(16, 32),
    attn_gqa=((4, 2), (3, 1)),
    attn_trees=("wide_6", "mc_sim_7b_63"),
    attn_contexts=(3, 21),
    mixed_dtypes=("float32",),
    vocab=500,
    batch=6,
    stat_trials=4000,
    stat_vocab=24,
    heads_hidden=64,
    heads_vocab=300,
    cost_model=dict(hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128,
                    vocab=256, context=24, block_size=16),
    cost_sizes=(1, 2, 4),
    cost_repeats=1,
    cost_warmup=1,
    cost_dtype="float32",
    cost_split_k=True,
)


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


# Output tolerance of the kernel against a float32 reference on the same (rounded) inputs:
# the kernel rounds the softmax weights to the input dtype before P @ V.
TOLERANCE = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


@dataclass
class Check:
    name: str
    status: str = "PASS"  # PASS, FAIL or SKIP
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class CheckFailed(AssertionError):
    """A check's own finding (as opposed to a crash): reported without a traceback."""


class Skip(Exception):
    """The check cannot run in this environment (reason in the message)."""


@dataclass
class Results:
    checks: list[Check] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[Check], None]) -> Check:
        """Run fn(check); an exception turns the check into FAIL (or SKIP); print one line."""
        check = Check(name)
        start = time.perf_counter()
        try:
            fn(check)
        except Skip as exc:
            check.status, check.error = "SKIP", str(exc)
        except CheckFailed as exc:
            check.status, check.error = "FAIL", str(exc)
        except Exception:  # noqa: BLE001 - a crash is a failure of this check, not of the run
            check.status, check.error = "FAIL", traceback.format_exc(limit=8)
        if torch.cuda.is_available():
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - an asynchronous CUDA error surfaces here
                check.status, check.error = "FAIL", (check.error or "") + traceback.format_exc(limit=2)
        check.seconds = round(time.perf_counter() - start, 3)
        self.checks.append(check)
        summary = check.detail.get("summary", "")
        reason = "" if check.status == "PASS" else f"  {(check.error or '').strip().splitlines()[-1][:300]}"
        print(f"{check.status} {name} ({check.seconds:.1f}s){'  ' + summary if summary else ''}{reason}",
              flush=True)
        return check

    @property
    def ok(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def compare(got: torch.Tensor, want: torch.Tensor, atol: float, what: str) -> float:
    """max |got - want| (float32, on CPU); fails the check if above atol or not finite."""
    diff = (got.float().cpu() - want.float().cpu()).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    require(math.isfinite(worst), f"{what}: non-finite values (NaN/inf) in the result")
    require(worst <= atol, f"{what}: max abs error {worst:.3g} > {atol:g}")
    return worst


def chi_square_pvalue(stat: float, dof: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty; no scipy on the GPU machine)."""
    if dof <= 0:
        return 1.0
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))
