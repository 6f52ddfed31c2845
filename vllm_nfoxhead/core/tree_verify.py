"""Tree verification for a batch of requests, on the device of the target's logits.

The acceptance rules (acceptance.py) decide one tree per request; this module
turns a step's raw target logits into their inputs without leaving the device:
greedy requests take the argmax of every tree row at once, sampled requests get
their target distribution (temperature, top-k, top-p) for all their rows in one
vectorised pass, and each request draws its uniforms from its own generator on
its own device. Only the small results (emitted token ids, accepted node
indices) ever need to reach the host, never a vocabulary-sized row.

Shapes (B requests sharing one tree of N nodes and depth D, V vocabulary):
  draft_tokens  [B, N]     int64, -1 marks a node not drafted this step
  logits        [B, N+1, V] float, row 0 at the root, row i+1 after node i
  temperature   [B]        float; below GREEDY_EPS the request is greedy
  top_k, top_p  [B]        int64 / float, or None when no request uses them

Imports no vLLM, so the same code is checked on CPU in CI and on a GPU by
scripts/gpu_check.sh; the vLLM adapter passes vLLM's own top-k/top-p op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vllm_nfoxhead.core.acceptance import Acceptance, accept_greedy, accept_sampling, accept_typical
from vllm_nfoxhead.core.tree import TreeBuffers

GREEDY_EPS = 1e-5  # vLLM's threshold below which a temperature means greedy

# (logits [R, V], top_k [R] | None, top_p [R] | None) -> masked logits [R, V]
TopKTopP = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    """Mask logits [R, V] outside each row's top-k and top-p set with -inf (new tensor).

    Same rule as vLLM's PyTorch path (apply_top_k_top_p_pytorch): top-k keeps
    values >= the k-th largest (ties kept); top-p then drops the smallest tokens
    whose cumulative probability stays <= 1 - p, always keeping the largest.
    k >= V or p = 1 leaves a row unchanged.
    """
    if k is None and p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=False)     # [R, V] ascending
    if k is not None:
        kth = (logits.shape[-1] - k.long().clamp(min=1, max=logits.shape[-1]))[:, None]  # [R, 1]
        sorted_logits = sorted_logits.masked_fill(sorted_logits < sorted_logits.gather(1, kth), float("-inf"))
    if p is not None:
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)           # [R, V]
        drop = cum <= (1 - p.to(cum.dtype))[:, None]
        drop[:, -1] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def target_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor | None,
                 top_p: torch.Tensor | None, mask: TopKTopP = top_k_top_p) -> torch.Tensor:
    """Sampling distribution per row: softmax(mask(logits / t)) -> [R, V] float32.

    logits [R, V]; temperature [R] (> 0); top_k / top_p [R] or None. Every
    per-row tensor is a real (not expanded) tensor on the logits' device: vLLM's
    CUDA top-k/top-p kernel reads one value per row.
    """
    scaled = logits.float() / temperature.float()[:, None]
    return mask(scaled, top_k, top_p).softmax(dim=-1)


def verify_trees(buffers: TreeBuffers, draft_tokens: torch.Tensor, logits: torch.Tensor,
                 temperature: torch.Tensor, top_k: torch.Tensor | None = None,
                 top_p: torch.Tensor | None = None,
                 generators: Sequence[torch.Generator | None] | None = None, mode: str = "exact",
                 posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
                 mask: TopKTopP = top_k_top_p) -> Acceptance:
    """Accept each request's longest verified path: greedy rows by argmax, sampled rows
    by exact tree sampling (lossless) or, with mode "typical", Medusa's lossy rule.

    generators: one per request (None = the device's global RNG), used only by
    sampled requests. Returns an Acceptance over all B requests, on logits' device.
    """
    if mode not in ("exact", "typical"):
        raise ValueError(f"unknown acceptance mode {mode!r}; use 'exact' or 'typical'")
    greedy = (temperature < GREEDY_EPS).tolist()  # B booleans: the only host read before the walk
    greedy_rows = [i for i, g in enumerate(greedy) if g]
    sampled_rows = [i for i, g in enumerate(greedy) if not g]
    parts: list[tuple[list[int], Acceptance]] = []
    if greedy_rows:
        index = _index(greedy_rows, logits.device)
        parts.append((greedy_rows, accept_greedy(buffers, draft_tokens.index_select(0, index),
                                                 logits.index_select(0, index))))
    if sampled_rows:
        parts.append((sampled_rows, _accept_sampled(
            buffers, draft_tokens, logits, temperature, top_k, top_p, generators, mode,
            posterior_threshold, posterior_alpha, mask, sampled_rows)))
    return parts[0][1] if len(parts) == 1 else _merge(parts, len(greedy))


def _accept_sampled(buffers: TreeBuffers, draft_tokens: torch.Tensor, logits: torch.Tensor,
                    temperature: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
                    generators: Sequence[torch.Generator | None] | None, mode: str,
                    threshold: float, alpha: float, mask: TopKTopP, rows: list[int]) -> Acceptance:
    """The sampled requests `rows`. Exact sampling computes target distributions only
    for the rows its walk visits (D+1 per request, one batched pass per depth);
    typical acceptance needs every row's entropy, so it computes all N+1."""
    index = _index(rows, logits.device)
    sub = logits.index_select(0, index)                              # [S, N+1, V]
    drafts = draft_tokens.index_select(0, index)
    t, k, p = (None if x is None else x.index_select(0, index) for x in (temperature, top_k, top_p))
    if mode == "typical":
        s, r, v = sub.shape
        per_row = [None if x is None else x.repeat_interleave(r) for x in (t, k, p)]  # [S*(N+1)]
        probs = target_probs(sub.reshape(s * r, v), *per_row, mask).view(s, r, v)
        return accept_typical(buffers, drafts, probs, threshold=threshold, alpha=alpha)
    batch = torch.arange(sub.shape[0], device=sub.device)

    def probs_at(at: torch.Tensor) -> torch.Tensor:  # at [S] row per request -> [S, V]
        return target_probs(sub[batch, at], t, k, p, mask)

    gens = [generators[i] for i in rows] if generators is not None else None
    return accept_sampling(buffers, drafts, probs_at, generator=gens)


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _merge(parts: list[tuple[list[int], Acceptance]], batch: int) -> Acceptance:
    """Scatter per-subset Acceptances back into one over the whole batch, in request order."""
    first = parts[0][1]
    fields = {}
    for name in ("accepted_nodes", "num_accepted", "bonus_token", "last_row", "tokens"):
        like = getattr(first, name)
        merged = like.new_empty((batch, *like.shape[1:]))
        for rows, result in parts:
            merged.index_copy_(0, _index(rows, like.device), getattr(result, name))
        fields[name] = merged
    return Acceptance(**fields)
