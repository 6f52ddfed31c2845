"""NFoxHead decoding heads in plain torch (no vLLM import).

Head k reads the base model's final post-norm hidden state h_t and predicts
token t+k+2 (the base LM head predicts t+1):

    x_k    = h_t                                          (conditioning "none": Medusa)
    x_k    = h_t + sum_{j<=k} F_k,j e(x_{t+1+j})          (conditioning "tokens")
    r_k    = ResBlock_k,L(... ResBlock_k,1(x_k))          ResBlock(x) = x + SiLU(W x + b)
    logits = W_vocab_k r_k        (own projection)  or  base_lm_head(r_k)  (shared)

Token-conditioned heads (Hydra's sequential dependence) also read the base
model's input embeddings e(.) of the tokens between t and their target: the
token sampled at t+1 and the drafted tokens before theirs. Knowing them turns
each head into a small next-token predictor, which is what makes later heads
accurate; the price is that drafting runs head by head (drafting.py, tree.py).

This module is used by training, conversion and tests; the vLLM layer reuses
`ResidualStack` and swaps the vocabulary projection for vLLM's parallel head.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, HeadsConfig, fuse_key, head_key


class ResBlock(nn.Module):
    """x + SiLU(W x + b). W starts at zero so a new head starts as the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=True)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class TokenFusion(nn.Module):
    """sum_j F_j e_j: how one token-conditioned head takes in its context tokens.

    The maps start at zero, so a new conditioned head starts as a Medusa head.
    """

    def __init__(self, num_tokens: int, hidden_size: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(hidden_size, hidden_size, bias=False) for _ in range(num_tokens))
        for m in self.maps:
            nn.init.zeros_(m.weight)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """embeds [T, J, H] (J >= number of maps; extra tokens unused) -> [T, H]."""
        return sum(m(embeds[:, j]) for j, m in enumerate(self.maps))  # type: ignore[return-value]


class ResidualStack(nn.Module):
    """The residual blocks (and token fusions) of every head, up to the vocabulary projection."""

    def __init__(self, num_heads: int, num_layers: int, hidden_size: int,
                 token_conditioned: bool = False) -> None:
        super().__init__()
        # Separate modules per layer (the reference's `[ResBlock]*n` tied them).
        self.heads = nn.ModuleList(
            nn.Sequential(*(ResBlock(hidden_size) for _ in range(num_layers)))
            for _ in range(num_heads)
        )
        self.fusions: nn.ModuleList | None = None
        if token_conditioned:
            self.fusions = nn.ModuleList(TokenFusion(k + 1, hidden_size) for k in range(num_heads))

    def forward(self, hidden: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [T, H], context [T, K, H] (conditioned heads only) -> per-head hidden [K, T, H]."""
        return torch.stack([self.head_state(k, hidden, context) for k in range(len(self.heads))])

    def head_state(self, k: int, hidden: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Head k alone: hidden [T, H], context [T, >=k+1, H] embeddings of tokens t+1.. -> [T, H]."""
        if self.fusions is not None:
            if context is None:
                raise ValueError("token-conditioned heads need the context token embeddings")
            hidden = hidden + self.fusions[k](context[:, : k + 1])
        return self.heads[k](hidden)

    def format_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(on-disk name, parameter): `heads.{k}.res.{l}.{weight|bias}`, `heads.{k}.fuse.{j}.weight`."""
        for k, head in enumerate(self.heads):
            for layer_idx, block in enumerate(head):
                yield head_key(k, layer_idx, "weight"), block.linear.weight  # [H, H]
                yield head_key(k, layer_idx, "bias"), block.linear.bias  # [H]
            if self.fusions is not None:
                for j, m in enumerate(self.fusions[k].maps):
                    yield fuse_key(k, j), m.weight  # [H, H]

    def load_from(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the tensors under the on-disk names (format_params) into the modules."""
        for name, param in self.format_params():
            param.data.copy_(tensors[name])

    def format_tensors(self) -> dict[str, torch.Tensor]:
        """The parameters under their on-disk names."""
        return dict(self.format_params())


class NFoxHeads(nn.Module):
    """All heads of one checkpoint, with their vocabulary projection."""

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        self.residual = ResidualStack(
            config.num_heads, config.num_layers, config.hidden_size, config.token_conditioned
        )
        self.lm_heads: nn.ModuleList | None = None
        if not config.shared_lm_head:
            self.lm_heads = nn.ModuleList(
                nn.Linear(config.hidden_size, config.vocab_size, bias=False)
                for _ in range(config.num_heads)
            )
        # [V'] int64: the ids drafting may propose (format.HeadsConfig.draft_vocab_size)
        self.draft_vocab: torch.Tensor | None = None

    def set_draft_vocab(self, ids: torch.Tensor | None) -> None:
        """Restrict drafting to token ids [V'] (None: the full vocabulary); kept on the CPU as int64."""
        self.draft_vocab = None if ids is None else ids.detach().to("cpu", torch.long)
        self.config.draft_vocab_size = None if ids is None else len(ids)

    def forward(
        self, hidden: torch.Tensor, base_lm_head: torch.Tensor | None = None,
        context: torch.Tensor | None = None, vocab: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden [T, H] -> logits [K, T, V] (V = len(vocab) when given).

        `base_lm_head` [V, H] is required when the heads share the base model's
        LM head and ignored otherwise. `context` [T, K, H]: input embeddings of
        tokens t+1..t+K (teacher forcing), required by token-conditioned heads.
        `vocab` [V'] int64 restricts the logits to those token ids (training).
        """
        states = self.residual(hidden, context)  # [K, T, H]
        return torch.stack([self.project(k, s, base_lm_head, vocab) for k, s in enumerate(states)])

    def head_logits(self, k: int, hidden: torch.Tensor, context: torch.Tensor | None = None,
                    base_lm_head: torch.Tensor | None = None) -> torch.Tensor:
        """Head k alone: hidden [T, H], context [T, >=k+1, H] -> logits [T, V]."""
        return self.project(k, self.residual.head_state(k, hidden, context), base_lm_head)

    def project(self, k: int, state: torch.Tensor, base_lm_head: torch.Tensor | None = None,
                vocab: torch.Tensor | None = None) -> torch.Tensor:
        """Head k's vocabulary projection: state [T, H] -> logits [T, V]."""
        if self.lm_heads is None:
            if base_lm_head is None:
                raise ValueError("these heads share the base LM head: pass base_lm_head")
            weight = base_lm_head
        else:
            weight = self.lm_heads[k].weight
        if vocab is not None:
            weight = weight[vocab]
        return state @ weight.T

    def state_dict_for_format(self) -> dict[str, torch.Tensor]:
        """Tensors under the project's on-disk key names."""
        out = self.residual.format_tensors()
        if self.lm_heads is not None:
            for k, proj in enumerate(self.lm_heads):
                out[head_key(k, None, "weight")] = proj.weight
        if self.draft_vocab is not None:
            out[DRAFT_VOCAB_KEY] = self.draft_vocab
        return {name: t.detach().contiguous() for name, t in out.items()}

    def load_format_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors read by `format.read_heads_tensors`."""
        self.residual.load_from(tensors)
        if self.lm_heads is not None:
            for k, proj in enumerate(self.lm_heads):
                proj.weight.data.copy_(tensors[head_key(k, None, "weight")])
        self.draft_vocab = tensors.get(DRAFT_VOCAB_KEY)
