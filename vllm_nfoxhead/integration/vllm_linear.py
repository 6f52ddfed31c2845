"""The drafters' small GEMMs through vLLM's own linear kernels.

Heads and the draft layer are plain torch modules (core/). Served as they are,
each projection is `F.linear`, which on CPUs runs one bf16 row 2-3x slower
than the prepacked oneDNN GEMM vLLM binds to every unquantized linear layer
(`UnquantizedLinearMethod.process_weights_after_loading`). Drafting is a few
rows per step, so that gap is most of a drafter's cost. These helpers give a
drafter vLLM's replicated linear layers with the same weights; on GPUs vLLM's
choice is a plain GEMM, so nothing changes there.

Call them once the weights are loaded and on their device and dtype: the
layers hold copies (on CPUs, only the packed copy).
"""

from __future__ import annotations

import torch
from torch import nn

from vllm_nfoxhead.core.served_layer import Gemm


def vllm_gemm(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Gemm:
    """`weight` [out, in] (and `bias` [out]) as a replicated vLLM linear layer:
    x [..., in] -> [..., out] through the engine's unquantized GEMM."""
    from vllm.model_executor.layers.linear import ReplicatedLinear

    with torch.device(weight.device):
        linear = ReplicatedLinear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                  params_dtype=weight.dtype, prefix="nfoxhead", return_bias=False,
                                  disable_tp=True)
    with torch.no_grad():
        linear.weight_loader(linear.weight, weight.detach())
        if bias is not None:
            linear.weight_loader(linear.bias, bias.detach())
    linear.quant_method.process_weights_after_loading(linear)
    return linear


def use_vllm_gemms(module: nn.Module) -> None:
    """Replace every `nn.Linear` inside `module` by `vllm_gemm` of its weights (same function)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, vllm_gemm(child.weight, child.bias))
