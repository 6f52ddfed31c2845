"""Which drafted tree nodes the target model accepts, and the token emitted after them.

Inputs shared by every mode (B requests, N nodes, V vocab, D = max depth):
  buffers       TreeBuffers of the tree (tree.py), on the device of the tensors.
  draft_tokens  [B, N] int   tokens of the nodes (TreeDrafter.draft). -1 marks a
                disabled node: it and its descendants are never accepted.
  target        [B, N+1, V]  target model output per verification row: row 0 =
                at the root (predicts depth-1 tokens), row i+1 = after node i.

Modes:
  accept_greedy    target argmax; emits exactly what plain greedy decoding emits.
  accept_sampling  exact tree sampling; LOSSLESS: the emitted tokens have the same
                   distribution as plain sampling from `target` probabilities.
  accept_typical   Medusa's typical acceptance (fast mode); LOSSY, opt-in: it
                   over-emits drafted tokens and its bonus token is the argmax.

Every mode returns an Acceptance. Padded slots of paths are never accepted:
acceptance works on real nodes (via the ancestor matrix), never on padded
token ids, so token 0 is as acceptable as any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vllm_nfoxhead.core.tree import TreeBuffers

Generators = torch.Generator | Sequence[torch.Generator | None] | None
RowProbs = Callable[[torch.Tensor], torch.Tensor]  # rows [B] int64 (0 = root) -> probs [B, V]


@dataclass(frozen=True)
class Acceptance:
    """Per-request result of verifying one tree (all int64, on the input device)."""

    accepted_nodes: torch.Tensor  # [B, D] node indices root->last accepted, -1 padded
    num_accepted: torch.Tensor    # [B] a = number of accepted nodes, 0..D
    bonus_token: torch.Tensor     # [B] token emitted after the last accepted node
    last_row: torch.Tensor        # [B] verification row of the last accepted node (0 = root):
    #                               its hidden state feeds the heads for the next step
    tokens: torch.Tensor          # [B, D+1] emitted tokens: a accepted draft tokens, then
    #                               the bonus token, then -1 padding (a+1 valid per request)


def accept_greedy(buffers: TreeBuffers, draft_tokens: torch.Tensor,
                  target_logits: torch.Tensor) -> Acceptance:
    """Longest path whose every token equals the target argmax at its parent; bonus = argmax.

    target_logits [B, N+1, V] (logits or probabilities: only the argmax is used).
    Siblings carry distinct tokens, so the accepted path is unique; were two paths
    equally long (duplicate sibling tokens) the first in buffer order wins.
    """
    return accept_greedy_ids(buffers, draft_tokens, target_logits.argmax(dim=-1))


def accept_greedy_ids(buffers: TreeBuffers, draft_tokens: torch.Tensor, argmax: torch.Tensor) -> Acceptance:
    """accept_greedy from the target's argmax token per row, argmax [B, N+1] int64.

    For callers that take the argmax over the whole step's logits at once and
    never gather vocabulary-sized rows per request.
    """
    drafts, argmax = draft_tokens.long(), argmax.long()
    match = (drafts == argmax[:, buffers.parent + 1]) & (drafts >= 0)  # [B, N]
    best = _deepest_accepted(buffers, match)                       # [B]
    bonus = argmax.gather(1, (best + 1)[:, None]).squeeze(1)       # [B]
    return _result(buffers, drafts, best, bonus)


def accept_typical(buffers: TreeBuffers, draft_tokens: torch.Tensor, target_probs: torch.Tensor,
                   threshold: float = 0.09, alpha: float = 0.3) -> Acceptance:
    """Medusa typical acceptance (NOT lossless): accept node if p(token) > min(threshold, alpha*exp(-H)).

    target_probs [B, N+1, V]: probabilities after the caller's temperature.
    p is the probability of the node's token under its parent's row and H that
    row's entropy (nats). Longest accepted path wins; ties go to the larger sum of
    log p over the accepted tokens, then to buffer order. Bonus = argmax of the
    last accepted row (Medusa's fast mode), so even the bonus is not a sample.
    """
    drafts = draft_tokens.long()
    rows = buffers.parent + 1                                       # [N]
    p_tok = _probs_of(target_probs, rows, drafts)                   # [B, N]
    entropy = torch.special.entr(target_probs.float()).sum(-1)      # [B, N+1]
    limit = torch.clamp(alpha * torch.exp(-entropy), max=threshold)  # [B, N+1]
    match = (p_tok > limit[:, rows]) & (drafts >= 0)                # [B, N]
    logp = torch.where(match, torch.log(p_tok.clamp(min=1e-30)), 0.0)
    path_logp = _along_paths(buffers, logp, 0.0).sum(-1)            # [B, N]
    best = _deepest_accepted(buffers, match, tiebreak=path_logp)
    argmax = target_probs.argmax(dim=-1)                            # [B, N+1]
    bonus = argmax.gather(1, (best + 1)[:, None]).squeeze(1)
    return _result(buffers, drafts, best, bonus)


def accept_sampling(buffers: TreeBuffers, draft_tokens: torch.Tensor, target_probs: torch.Tensor | RowProbs,
                    generator: Generators = None) -> Acceptance:
    """Exact, lossless tree sampling.

    Walk from the root: sample x ~ target_probs[row of current node]; if a child
    of the current node carries x, move into it and repeat, else stop and emit x
    as the bonus token. Every emitted token is a sample of the target at its true
    prefix, so the output distribution equals plain sampling.

    target_probs [B, N+1, V]: probabilities after the caller's temperature /
    top-k / top-p (rows need not be normalised; zero entries are never drawn);
    or a function rows [B] -> [B, V] giving them for one row per request, so a
    caller computes only the D+1 rows the walk visits instead of all N+1.
    generator: None (global RNG), one torch.Generator for the batch, or one per
    request (None entries use the global RNG). Each request consumes exactly D+1
    uniforms (float64) from its generator per call, so per-request seeds reproduce.
    With one-hot probabilities at the argmax this is exactly accept_greedy.
    """
    drafts = draft_tokens.long()
    bsz, d = drafts.shape[0], buffers.max_depth
    u = _uniforms(bsz, d + 1, generator, drafts.device)             # [B, D+1] float64
    batch = torch.arange(bsz, device=drafts.device)
    probs_at = target_probs if callable(target_probs) else (lambda rows: target_probs[batch, rows])
    cur = torch.full((bsz,), -1, dtype=torch.long, device=drafts.device)  # current node, -1 = root
    bonus = torch.full_like(cur, -1)
    active = torch.ones(bsz, dtype=torch.bool, device=drafts.device)
    for step in range(d + 1):
        x = _sample_rows(probs_at(cur + 1), u[:, step])             # [B]
        child = _child_with_token(buffers, drafts, cur, x)         # [B], -1 = none
        stop = active & (child < 0)
        bonus = torch.where(stop, x, bonus)
        cur = torch.where(active & ~stop, child, cur)
        active = active & ~stop
    return _result(buffers, drafts, cur, bonus)


def accept(mode: str, buffers: TreeBuffers, draft_tokens: torch.Tensor, target: torch.Tensor,
           **options: Any) -> Acceptance:
    """Dispatch by mode name: "greedy" (logits), "sampling" (probs, generator=), "typical" (probs)."""
    modes = {"greedy": accept_greedy, "sampling": accept_sampling, "typical": accept_typical}
    if mode not in modes:
        raise ValueError(f"unknown acceptance mode {mode!r}; use one of {sorted(modes)}")
    return modes[mode](buffers, draft_tokens, target, **options)


def _deepest_accepted(buffers: TreeBuffers, match: torch.Tensor,
                      tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """match [B, N] bool (node's own token accepted) -> best node [B] int64, -1 = none.

    A node is on an accepted path when it and all its ancestors match. The deepest
    wins; ties: larger `tiebreak` [B, N] float, then the lowest node index.
    """
    ok = _along_paths(buffers, match, True).all(dim=-1)             # [B, N]
    depth = torch.where(ok, buffers.depth, 0)                       # [B, N]
    best_depth = depth.max(dim=1, keepdim=True).values              # [B, 1]
    cand = ok & (depth == best_depth)
    if tiebreak is not None:
        score = torch.where(cand, tiebreak, float("-inf"))
        cand = cand & (score == score.max(dim=1, keepdim=True).values)
    best = cand.to(torch.int8).argmax(dim=1)                       # first True
    return torch.where(best_depth.squeeze(1) > 0, best, -1)


def _along_paths(buffers: TreeBuffers, values: torch.Tensor, pad: float | bool) -> torch.Tensor:
    """values [B, N] -> [B, N, D]: the values of each node's ancestors-and-self, `pad` past its depth."""
    padded = torch.cat([values, torch.full_like(values[:, :1], pad)], dim=1)  # [B, N+1]
    return padded[:, buffers.node_paths]                            # index -1 = the pad column


def _result(buffers: TreeBuffers, drafts: torch.Tensor, best: torch.Tensor,
            bonus: torch.Tensor) -> Acceptance:
    """Assemble an Acceptance from best node [B] (-1 = none) and bonus token [B]."""
    path = buffers.node_paths[best.clamp(min=0)]                    # [B, D]
    path = torch.where((best >= 0)[:, None], path, -1)
    num = (path >= 0).sum(dim=1)                                    # [B]
    toks = torch.where(path >= 0, drafts.gather(1, path.clamp(min=0)), -1)
    toks = torch.cat([toks, torch.full_like(toks[:, :1], -1)], dim=1)  # [B, D+1]
    toks.scatter_(1, num[:, None], bonus[:, None])
    return Acceptance(accepted_nodes=path, num_accepted=num, bonus_token=bonus,
                      last_row=best + 1, tokens=toks)


def _probs_of(probs: torch.Tensor, rows: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """probs [B, R, V], rows [N], drafts [B, N] -> probs[b, rows[n], drafts[b, n]] [B, N] float32."""
    batch = torch.arange(probs.shape[0], device=probs.device)[:, None]
    return probs[batch, rows[None, :], drafts.clamp(min=0)].float()


def _uniforms(bsz: int, n: int, generator: Generators, device: torch.device) -> torch.Tensor:
    """[bsz, n] float64 uniforms in [0, 1), one row per request from its own generator if given.

    Each generator draws on its own device (a CUDA generator cannot fill a CPU
    tensor, nor the reverse); the uniforms then join `device`.
    """
    if generator is None:
        return torch.rand(bsz, n, dtype=torch.float64, device=device)
    if isinstance(generator, torch.Generator):
        return torch.rand(bsz, n, dtype=torch.float64, device=generator.device, generator=generator).to(device)
    if len(generator) != bsz:
        raise ValueError(f"got {len(generator)} generators for {bsz} requests")
    return torch.stack([
        torch.rand(n, dtype=torch.float64, device=device) if g is None else
        torch.rand(n, dtype=torch.float64, device=g.device, generator=g).to(device)
        for g in generator])


def _sample_rows(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: probs [B, V] (unnormalised ok), u [B] float64 -> tokens [B] int64."""
    cdf = probs.double().cumsum(dim=-1)                             # [B, V]
    target = (u * cdf[:, -1])[:, None]                              # [B, 1]
    x = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return x.clamp(max=probs.shape[-1] - 1)


def _child_with_token(buffers: TreeBuffers, drafts: torch.Tensor, cur: torch.Tensor,
                      x: torch.Tensor) -> torch.Tensor:
    """First child of node cur [B] (-1 = root) whose draft token is x [B]; -1 if none. -> [B]."""
    kids = buffers.children[cur + 1]                                # [B, k]
    toks = drafts.gather(1, kids.clamp(min=0))                      # [B, k]
    hit = (kids >= 0) & (toks >= 0) & (toks == x[:, None])
    first = hit.to(torch.int8).argmax(dim=1)
    return torch.where(hit.any(dim=1), kids.gather(1, first[:, None]).squeeze(1), -1)
