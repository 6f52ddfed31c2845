"""tools/draft_cost.py and the vLLM GEMMs drafting runs through (integration/vllm_linear.py)."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

from vllm_nfoxhead.core.heads import ResidualStack
from vllm_nfoxhead.tools.draft_cost import gemm_context


def test_vllm_gemms_compute_what_the_torch_modules_do() -> None:
    """A ResidualStack (blocks with bias, token fusions without) gives the same states after
    use_vllm_gemms swapped its nn.Linear layers for vLLM's, and vllm_gemm equals F.linear."""
    from vllm_nfoxhead.integration.vllm_linear import use_vllm_gemms, vllm_gemm

    torch.manual_seed(0)
    stack = ResidualStack(num_heads=2, num_layers=2, hidden_size=32, token_conditioned=True)
    for p in stack.parameters():
        p.data.normal_(0, 0.2)
    hidden, context = torch.randn(3, 32), torch.randn(3, 2, 32)
    with gemm_context("vllm"), torch.inference_mode():
        want = stack(hidden, context)
        use_vllm_gemms(stack)
        assert not any(type(m) is nn.Linear for m in stack.modules())
        torch.testing.assert_close(stack(hidden, context), want)
        weight = torch.randn(48, 32)
        torch.testing.assert_close(vllm_gemm(weight)(hidden), nn.functional.linear(hidden, weight))


def test_draft_cost_times_heads_and_a_draft_layer(tiny_assets, draft_layer) -> None:
    model, heads = tiny_assets
    for gemm in ("vllm", "torch"):
        out = subprocess.run([sys.executable, "-m", "vllm_nfoxhead.tools.draft_cost", "--model", str(model),
                              "--heads", str(heads), str(draft_layer), "--batch", "1", "3", "--repeats", "2",
                              "--dtype", "float32", "--gemm", gemm],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [line.split() for line in out.stdout.splitlines() if line.startswith((str(heads), str(draft_layer)))]
        assert [(r[0], r[1]) for r in rows] == [(str(h), b) for h in (heads, draft_layer) for b in ("1", "3")]
        assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows), out.stdout
        assert f"{gemm} GEMMs" in out.stdout
