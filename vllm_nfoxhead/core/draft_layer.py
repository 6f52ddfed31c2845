"""The draft layer: an EAGLE-style drafter in plain torch (no vLLM import).

Heads read one hidden state. The draft layer reads a bounded window of them
and drafts autoregressively at the feature level:

    z_j = Fuse([f_j ; e(x_{j+1})])                    f_j: base's final post-norm state at j
    g_t = Block(z_t | keys/values of z_{t-W+1..t})    one pre-norm decoder layer, window W
    logits(x_{t+2}) = base_lm_head(g_t)               g_t stands in for f_{t+1}

To draft token t+3 the layer feeds its own output back: z' = Fuse([g_t ;
e(x_{t+2})]) attends to the window plus z_t's drafted successors, and so on.
Each drafted entry is replaced by the true one once the base verifies it.

The window holds only positions the proposer saw: the prompt's last position
and every accepted position after it (vLLM hands the proposer those hidden
states, not the whole prompt's). Training masks keys the same way, so the
layer learns what serving gives it. Rotary positions are relative, so any
position counter works as long as it counts the request's tokens.

Shapes: H hidden size, nh attention heads of hd = H / nh, W window, T rows.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
from torch import nn

DRAFT_LAYER_PREFIX = "draft_layer."


@dataclass(frozen=True)
class DraftLayerSpec:
    """The layer's shape, as config.json's `draft_layer` object holds it."""

    num_attention_heads: int = 9
    intermediate_size: int = 1536
    window: int = 64  # true entries a request keeps (keys/values of the last W positions)
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


@functools.lru_cache(maxsize=16)
def _inverse_frequencies(hd: int, theta: float, device: torch.device) -> torch.Tensor:
    """theta^(-2i/hd) [hd/2] float32, built once per shape and device (a plain tensor even
    when first asked for under inference mode, so training may use it too)."""
    with torch.inference_mode(False):
        return theta ** (-torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd)


def rotary(pos: torch.Tensor, hd: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., T, 1, hd/2] float32 for positions pos [..., T]: shared by the queries
    and keys of the same positions."""
    ang = pos.to(torch.float32).unsqueeze(-1) * _inverse_frequencies(hd, theta, pos.device)  # [..., T, hd/2]
    return ang.cos().unsqueeze(-2), ang.sin().unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (half split): x [..., T, nh, hd] with rotary(pos) -> same shape and dtype."""
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(x.dtype)


def rotate(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x [..., T, nh, hd] at positions pos [..., T] -> same shape."""
    return apply_rotary(x, *rotary(pos, x.shape[-1], theta))


class DraftLayer(nn.Module):
    """Fuse + one decoder layer + output norm; the vocabulary projection is the base's."""

    def __init__(self, hidden_size: int, spec: DraftLayerSpec) -> None:
        super().__init__()
        h, self.spec = hidden_size, spec
        self.nh, self.hd = spec.num_attention_heads, hidden_size // spec.num_attention_heads
        self.fuse = nn.Linear(2 * h, h, bias=False)
        self.attn_norm = RMSNorm(h, spec.rms_eps)
        self.q = nn.Linear(h, h, bias=False)
        self.k = nn.Linear(h, h, bias=False)
        self.v = nn.Linear(h, h, bias=False)
        self.o = nn.Linear(h, h, bias=False)
        self.mlp_norm = RMSNorm(h, spec.rms_eps)
        self.gate = nn.Linear(h, spec.intermediate_size, bias=False)
        self.up = nn.Linear(h, spec.intermediate_size, bias=False)
        self.down = nn.Linear(spec.intermediate_size, h, bias=False)
        self.out_norm = RMSNorm(h, spec.rms_eps)
        for lin in (self.fuse, self.q, self.k, self.v, self.o, self.gate, self.up, self.down):
            nn.init.normal_(lin.weight, std=0.02)

    @torch.no_grad()
    def init_as_passthrough(self) -> None:
        """Start as g = out_norm(f): Fuse copies the feature half, the attention output and
        MLP down projections start at zero (so both residual branches add nothing). At
        step 0 the layer then predicts what the base predicts from f_t, as a new head does
        (heads.py's zero-initialised blocks), instead of noise."""
        h = self.fuse.weight.shape[0]
        self.fuse.weight.zero_()
        self.fuse.weight[:, :h].copy_(torch.eye(h))
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.down.weight)

    def entry(self, feature: torch.Tensor, next_embed: torch.Tensor) -> torch.Tensor:
        """feature [..., H] (f_j or a drafted g), next_embed [..., H] (e(x_{j+1})) -> z [..., H]."""
        return self.fuse(torch.cat([feature, next_embed.to(feature.dtype)], dim=-1))

    def keys_values(self, z: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [..., T, H], pos [..., T] -> rotated keys, values [..., T, nh, hd]."""
        x = self.attn_norm(z)
        k = self.k(x).unflatten(-1, (self.nh, self.hd))
        return rotate(k, pos, self.spec.rope_theta), self.v(x).unflatten(-1, (self.nh, self.hd))

    def query(self, z: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """z [..., T, H], pos [..., T] -> rotated, pre-scaled queries [..., T, nh, hd]."""
        q = self.q(self.attn_norm(z)).unflatten(-1, (self.nh, self.hd))
        return rotate(q, pos, self.spec.rope_theta) * self.hd ** -0.5

    def finish(self, z: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """z [..., H] and its attention output [..., nh, hd] -> g [..., H] (o, residuals, MLP, norm)."""
        x = z + self.o(attended.flatten(-2))
        y = self.mlp_norm(x)
        x = x + self.down(nn.functional.silu(self.gate(y)) * self.up(y))
        return self.out_norm(x)


def layer_tensors(layer: DraftLayer) -> dict[str, torch.Tensor]:
    """The layer's parameters under their on-disk names (`draft_layer.<module>.weight`)."""
    return {DRAFT_LAYER_PREFIX + name: p for name, p in layer.named_parameters()}


def layer_shapes(hidden_size: int, spec: DraftLayerSpec) -> dict[str, tuple[int, ...]]:
    """On-disk name -> shape of every tensor a draft layer stores."""
    h, i = hidden_size, spec.intermediate_size
    shapes = {"fuse.weight": (h, 2 * h), "q.weight": (h, h), "k.weight": (h, h), "v.weight": (h, h),
              "o.weight": (h, h), "gate.weight": (i, h), "up.weight": (i, h), "down.weight": (h, i),
              "attn_norm.weight": (h,), "mlp_norm.weight": (h,), "out_norm.weight": (h,)}
    return {DRAFT_LAYER_PREFIX + k: v for k, v in shapes.items()}


def load_layer(layer: DraftLayer, tensors: dict[str, torch.Tensor]) -> None:
    """Copy on-disk tensors (layer_tensors names) into `layer`."""
    for name, p in layer.named_parameters():
        p.data.copy_(tensors[DRAFT_LAYER_PREFIX + name])
