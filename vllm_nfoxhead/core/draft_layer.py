"""The draft layer: an EAGLE-style drafter in plain torch (no vLLM import).

Heads read one hidden state. The draft layer reads a bounded window of them
and drafts autoregressively at the feature level:

    z_j = Fuse([f_j ; e(x_{j+1})])                    f_j: base's final post-norm state at j
    g_t = Block(z_t | keys/values of z_{t-W+1..t})    one pre-norm decoder layer, window W
    logits(x_{t+2}) = base_lm_head(g_t)               g_t stands in for f_{t+1}

To draft token t+3 the layer feeds its own output back: z' = Fuse([g_t ;
e(x_{t+2})]) attends to the window plus z_t's drafted successors, and so on.
Each drafted entry is replaced by the true one once the base verifies it.

With `feature_layers` (EAGLE-3's "aux hidden states") f_j is not the final
state alone but a learned mix of it and the residual stream after a few of the
base's layers: f_j = Mix([norm(h^a_j) ; norm(h^b_j) ; ... ; final_j]), h^i the
state after i decoder layers (transformers' hidden_states[i], vLLM's aux layer
i). The mix starts as "final only", so such a layer can start from one trained
on the final state. Drafted g still stand in for the final state.

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
    # Base layers whose outputs are mixed into the feature (empty: the final state alone).
    feature_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        layers = tuple(self.feature_layers)
        # ascending: the order in which vLLM hands over aux hidden states
        if any(not isinstance(i, int) or i < 0 for i in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(f"feature_layers must be ascending layer numbers >= 0, got {list(layers)}")
        object.__setattr__(self, "feature_layers", layers)  # a JSON list becomes a tuple

    @property
    def feature_parts(self) -> int:
        """Hidden-size blocks of the layer's input row: one per feature layer, then the final state."""
        return len(self.feature_layers) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["feature_layers"] = list(self.feature_layers)
        return d


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
        self.mix: nn.Linear | None = None
        if spec.feature_layers:
            self.mix = nn.Linear(spec.feature_parts * h, h, bias=False)
            with torch.no_grad():  # starts as "final only" (see features)
                self.mix.weight.zero_()
                self.mix.weight[:, -h:].copy_(torch.eye(h))
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

    def features(self, parts: torch.Tensor) -> torch.Tensor:
        """The layer's input f from the base's states: parts [..., P * H] (the raw states after
        each of `feature_layers`, then the final post-norm state; P = spec.feature_parts) ->
        f [..., H]. Without feature layers parts is the final state and is returned as is."""
        if self.mix is None:
            return parts
        return self.mix(normed_parts(parts, self.fuse.weight.shape[0], self.spec.rms_eps))

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


def normed_parts(parts: torch.Tensor, hidden: int, eps: float) -> torch.Tensor:
    """parts [..., P * H] -> the same with every part but the last (the final state, already
    normed by the base) RMS-normed without a weight: the residual stream's scale grows
    with depth, the mix should not have to learn it."""
    aux = parts[..., :-hidden].unflatten(-1, (-1, hidden))  # [..., P - 1, H]
    normed = nn.functional.rms_norm(aux.float(), (hidden,), eps=eps).to(parts.dtype)
    return torch.cat([normed.flatten(-2), parts[..., -hidden:]], dim=-1)


def layer_tensors(layer: DraftLayer) -> dict[str, torch.Tensor]:
    """The layer's parameters under their on-disk names (`draft_layer.<module>.weight`)."""
    return {DRAFT_LAYER_PREFIX + name: p for name, p in layer.named_parameters()}


def layer_shapes(hidden_size: int, spec: DraftLayerSpec) -> dict[str, tuple[int, ...]]:
    """On-disk name -> shape of every tensor a draft layer stores."""
    h, i = hidden_size, spec.intermediate_size
    shapes = {"fuse.weight": (h, 2 * h), "q.weight": (h, h), "k.weight": (h, h), "v.weight": (h, h),
              "o.weight": (h, h), "gate.weight": (i, h), "up.weight": (i, h), "down.weight": (h, i),
              "attn_norm.weight": (h,), "mlp_norm.weight": (h,), "out_norm.weight": (h,)}
    if spec.feature_layers:
        shapes["mix.weight"] = (h, spec.feature_parts * h)
    return {DRAFT_LAYER_PREFIX + k: v for k, v in shapes.items()}


def load_layer(layer: DraftLayer, tensors: dict[str, torch.Tensor], keep_mix: bool = False) -> None:
    """Copy on-disk tensors (layer_tensors names) into `layer`. keep_mix: `tensors` come from a
    layer without feature layers, and `layer`'s mix keeps its "final only" start."""
    for name, p in layer.named_parameters():
        if keep_mix and name == "mix.weight":
            continue
        p.data.copy_(tensors[DRAFT_LAYER_PREFIX + name])
