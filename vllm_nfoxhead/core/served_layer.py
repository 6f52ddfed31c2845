"""The draft layer as serving runs it (no vLLM import).

Training's `DraftLayer` keeps one `nn.Linear` per projection, which is what
autograd and the on-disk names want. Serving runs the same function with fewer,
larger operations, because at a few rows per step the drafting cost is GEMV
launches and small ops, not arithmetic:

- q|k|v and gate|up are fused into one GEMM each (5 GEMMs per drafted token
  instead of 8);
- every GEMM comes from a `GemmFactory`: plain `F.linear` by default, and the
  vLLM adapter passes the engine's own kernels (on CPUs vLLM's prepacked oneDNN
  GEMM, 2-3x faster than `F.linear` for one bf16 row);
- queries are rotated together with keys, attention is one
  `scaled_dot_product_attention` over head-major keys, and each RMS norm is
  torch's fused `rms_norm` (in bf16 it rounds once where the training module
  rounds twice: drafts may differ in rare near-ties, never the verified output).

Built once from a layer whose weights are final (loaded, on its device and
dtype): the fused weights are copies, so later changes to the layer are not
seen. tests/test_draft_layer.py checks serving against the unrolled training
pass.

Shapes: H hidden size, nh heads of hd = H / nh, I the MLP width, T rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from vllm_nfoxhead.core.draft_layer import DraftLayer, apply_rotary, normed_parts, rotary

Gemm = Callable[[torch.Tensor], torch.Tensor]  # x [..., in] -> x @ W.T [..., out]
GemmFactory = Callable[[torch.Tensor], Gemm]  # W [out, in] -> its GEMM


def torch_gemm(weight: torch.Tensor) -> Gemm:
    """The default GEMM: `F.linear` with `weight` [out, in]."""
    return functools.partial(nn.functional.linear, weight=weight)


class ServedLayer:
    """A `DraftLayer`'s serving form: entry, fused q/k/v, and the rest of the block."""

    def __init__(self, layer: DraftLayer, gemm: GemmFactory = torch_gemm) -> None:
        def fused(*mods: nn.Linear) -> torch.Tensor:
            return torch.cat([m.weight.detach() for m in mods]).contiguous()

        self.spec, self.nh, self.hd = layer.spec, layer.nh, layer.hd
        self.attn_norm, self.mlp_norm, self.out_norm = (functools.partial(
            nn.functional.rms_norm, normalized_shape=norm.weight.shape, weight=norm.weight.detach(), eps=norm.eps)
            for norm in (layer.attn_norm, layer.mlp_norm, layer.out_norm))
        self.hidden, self.rms_eps = layer.fuse.weight.shape[0], layer.spec.rms_eps
        self.mix = gemm(layer.mix.weight.detach().contiguous()) if layer.mix is not None else None  # [H, P * H]
        self.fuse = gemm(layer.fuse.weight.detach().contiguous())  # [H, 2H]
        self.qkv = gemm(fused(layer.q, layer.k, layer.v))  # [3H, H]
        self.o = gemm(layer.o.weight.detach().contiguous())  # [H, H]
        self.gate_up = gemm(fused(layer.gate, layer.up))  # [2I, H]
        self.down = gemm(layer.down.weight.detach().contiguous())  # [H, I]

    def features(self, parts: torch.Tensor) -> torch.Tensor:
        """parts [T, P * H] (the base's states after the feature layers, then its final
        state) -> the layer's input f [T, H], as `DraftLayer.features`."""
        if self.mix is None:
            return parts
        return self.mix(normed_parts(parts, self.hidden, self.rms_eps))

    def entry(self, feature: torch.Tensor, next_embed: torch.Tensor) -> torch.Tensor:
        """feature [T, H] (f_j or a drafted g), next_embed [T, H] (e(x_{j+1})) -> z [T, H]."""
        return self.fuse(torch.cat([feature, next_embed.to(feature.dtype)], dim=-1))

    def qkv_heads(self, z: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [T, H], pos [T] -> rotated queries (not scaled), rotated keys, values [T, nh, hd]."""
        y = self.qkv(self.attn_norm(z)).unflatten(-1, (3, self.nh, self.hd))  # [T, 3, nh, hd]
        cos, sin = rotary(pos, self.hd, self.spec.rope_theta)  # [T, 1, hd/2]
        qk = apply_rotary(y[:, :2], cos.unsqueeze(-2), sin.unsqueeze(-2))  # [T, 2, nh, hd]
        return qk[:, 0], qk[:, 1], y[:, 2]

    def finish(self, z: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """z [T, H] and its attention output [T, nh, hd] -> g [T, H] (o, residuals, MLP, norm)."""
        x = z + self.o(attended.flatten(-2))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)  # [T, I] each
        return self.out_norm(x + self.down(nn.functional.silu(gate) * up))


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each query row over its own key rows, scaled by hd^-0.5.

    q [M, nh, hd]; keys, values [M, nh, L, hd] (head-major); mask [M, L] bool
    (True: visible; every row must see at least one key) -> [M, nh, hd].
    """
    out = nn.functional.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask[:, None, None, :])
    return out.squeeze(2)
