"""`--verify`: original heads vs converted heads, compared by their logits.

The original side is recomputed from the SOURCE checkpoint by source tensor names
(`SourceHeads.layouts`), re-read from disk; the converted side is loaded the way
the plugin loads it (validate_heads_dir -> read_heads_tensors -> NFoxHeads). Both
run in float32 on the same random hidden states, so the difference measures the
conversion (renaming, dtype cast), not the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_nfoxhead.core.format import read_heads_tensors, validate_heads_dir
from vllm_nfoxhead.core.heads import NFoxHeads

from .result import SourceHeads
from .vllm_medusa import vllm_medusa_logits

# Unit roundoff of the stored dtype.
EPS = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


@dataclass
class VerifyResult:
    target: str  # what was compared
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def random_hidden(hidden_size: int, tokens: int = 8, seed: int = 0) -> torch.Tensor:
    """Post-RMSNorm-like hidden states [T, H] (unit scale)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, hidden_size, generator=gen)


def original_logits(source: SourceHeads, hidden: torch.Tensor, base_lm_head: torch.Tensor | None,
                    num_heads: int) -> torch.Tensor:
    """Logits [K, T, V] of the first `num_heads` source heads, from the source files."""
    names = [n for lay in source.layouts[:num_heads] for b in lay.blocks for n in b if n]
    names += [lay.proj for lay in source.layouts[:num_heads] if lay.proj]
    raw = source.checkpoint.read(names, desc="verify: re-reading source", quiet=True)
    out = []
    for lay in source.layouts[:num_heads]:
        x = hidden
        for weight, bias in lay.blocks:
            y = x @ raw[weight].float().T
            if bias is not None:
                y = y + raw[bias].float()
            x = x + torch.nn.functional.silu(y)
        proj = raw[lay.proj].float() if lay.proj else base_lm_head
        assert proj is not None, "shared-LM-head heads need the base LM head"
        out.append(x @ proj.T)
    return torch.stack(out)


def converted_logits(heads_dir: Path, hidden: torch.Tensor, base_lm_head: torch.Tensor | None) -> torch.Tensor:
    """Logits [K, T, V] of a written heads directory, loaded as the plugin loads it."""
    config = validate_heads_dir(heads_dir)
    tensors = {k: v.float() for k, v in read_heads_tensors(heads_dir, config).items()}
    model = NFoxHeads(config)
    model.load_format_tensors(tensors)
    with torch.no_grad():
        return model(hidden, base_lm_head)


def tolerance(dtype: str, reference: torch.Tensor, hidden_size: int) -> float:
    """Rounding the weights to `dtype` moves each logit by about eps*sqrt(H)*scale."""
    scale = max(1.0, float(reference.abs().max()))
    return 4.0 * EPS[dtype] * math.sqrt(hidden_size) * scale


def verify(
    source: SourceHeads,
    heads_dir: Path,
    dtype: str,
    num_heads: int,
    base_lm_head: torch.Tensor | None,
    vllm_dir: Path | None = None,
    tol: float | None = None,
) -> list[VerifyResult]:
    """Compare original vs converted (and vLLM-Medusa) logits on random hidden states."""
    hidden = random_hidden(source.config.hidden_size)
    base = base_lm_head.float() if base_lm_head is not None else None
    ref = original_logits(source, hidden, base, num_heads)
    limit = tol if tol is not None else tolerance(dtype, ref, source.config.hidden_size)
    results = [VerifyResult("nfoxhead", float((converted_logits(heads_dir, hidden, base) - ref).abs().max()), limit)]
    if vllm_dir is not None:
        diff = (vllm_medusa_logits(vllm_dir, hidden) - ref).abs().max()
        results.append(VerifyResult("vllm-medusa", float(diff), limit))
    return results
