"""Training and offline evaluation of the draft layer (core.draft_layer; no vLLM import).

Every answer is cut to the positions the proposer sees (the prompt's last
position onward, `crop`) and run through the layer *unrolled*: depth 1 reads
the true entries z_i = Fuse([f_i ; e(x_{i+1})]); depth d >= 2 reads its own
depth d-1 output g in place of f, attends to the true window plus its own
drafted entries of depths 2..d, exactly as drafting at serving time does
(training-time test, as in HASS/EAGLE-3). The token it conditions on is the
true one: a chain only goes on when every earlier draft was right.

    loss = sum_d decay^(d-1) * (CE(lm_head(g_d,i), x_{i+d+1}) + reg * SmoothL1(g_d,i, f_{i+d}))

The same pass, without gradients, is the offline acceptance walk
(`evaluate_layer`): run_i = leading depths whose argmax is right, read by
trainer.step_accept as vLLM walks an answer.

Shapes: B sequences per batch, n positions per cropped sequence (padded to
n_max), m = n_max - 1 entries, H hidden size, V' draft vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vllm_nfoxhead.core.draft_layer import DraftLayer
from vllm_nfoxhead.training.trainer import IGNORE, TOPK, Sequences, step_accept


@dataclass
class Crops:
    """Answers from the last prompt position on: feats [N_c, P * H] (bf16: the layer's input
    parts, the final state last; P = 1 without feature layers), tokens [N_c] int64, starts
    [S+1] offsets of each cropped sequence in the flat tensors."""

    feats: torch.Tensor
    tokens: torch.Tensor
    starts: list[int]

    @staticmethod
    def rows(seqs: Sequences) -> int:
        """Rows `build` keeps of `seqs`: each answer and the prompt position before it."""
        return sum(len(ids) - max(a - 1, 0) for ids, a in zip(seqs.ids, seqs.answer_start))

    @classmethod
    def build(cls, seqs: Sequences, hidden: torch.Tensor, out: torch.Tensor | None = None) -> "Crops":
        """Crops of `seqs` from their hidden states [sum len, P * H]. With `out` ([rows(seqs),
        P * H]) the feats are written into it and no second copy is made (a caller fills one
        tensor file by file: several GB of states per file with feature layers)."""
        out = hidden.new_empty(cls.rows(seqs), hidden.shape[1]) if out is None else out
        tokens, starts, off = [], [0], 0
        for ids, a in zip(seqs.ids, seqs.answer_start):
            lo = max(a - 1, 0)
            start, end = starts[-1], starts[-1] + len(ids) - lo
            out[start:end] = hidden[off + lo: off + len(ids)]
            tokens.append(torch.tensor(ids[lo:], dtype=torch.long))
            starts.append(end)
            off += len(ids)
        return cls(out, torch.cat(tokens), starts)

    @classmethod
    def join(cls, parts: list["Crops"], feats: torch.Tensor | None = None) -> "Crops":
        """Several files' crops as one (sequences in order). `feats`: the parts' feats already
        stacked in one tensor (built with `out=`), so they are not copied again."""
        starts, off = [0], 0
        for c in parts:
            starts.extend(off + s for s in c.starts[1:])
            off += c.starts[-1]
        feats = torch.cat([c.feats for c in parts]) if feats is None else feats
        return cls(feats, torch.cat([c.tokens for c in parts]), starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def first(self, n: int) -> "Crops":
        """Each answer cut to its first `n` tokens (a crop holds the position before the
        answer, then the answer): what a live benchmark generating `n` tokens walks over."""
        keep = [torch.arange(lo, min(hi, lo + n + 1)) for lo, hi in zip(self.starts, self.starts[1:])]
        starts = [0]
        for k in keep:
            starts.append(starts[-1] + len(k))
        index = torch.cat(keep)
        return Crops(self.feats[index], self.tokens[index], starts)

    def length(self, s: int) -> int:
        return self.starts[s + 1] - self.starts[s]

    def batch(self, index: list[int], device: torch.device,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded feats [B, n_max, H] (dtype), tokens [B, n_max] int64, lengths [B] int64."""
        n_max = max(self.length(s) for s in index)
        f = torch.zeros(len(index), n_max, self.feats.shape[1], dtype=dtype)
        x = torch.zeros(len(index), n_max, dtype=torch.long)
        for r, s in enumerate(index):
            lo, hi = self.starts[s], self.starts[s + 1]
            f[r, : hi - lo] = self.feats[lo:hi].to(dtype)
            x[r, : hi - lo] = self.tokens[lo:hi]
        lens = torch.tensor([self.length(s) for s in index])
        return f.to(device), x.to(device), lens.to(device)


def unrolled(layer: DraftLayer, feats: torch.Tensor, tokens: torch.Tensor, embed: torch.Tensor,
             depth: int) -> list[torch.Tensor]:
    """g of every depth: feats [B, n, P * H] (the layer's input parts), tokens [B, n] ->
    depth d: [B, m, H], m = n - 1.

    Row i of depth d stands in for f_{i+d}. Padding rows compute garbage that
    the losses mask.
    """
    b, n, _ = feats.shape
    m, w = n - 1, layer.spec.window
    x = torch.cat([tokens, tokens.new_zeros(b, depth)], dim=1)  # [B, n + depth]
    pos = torch.arange(m, device=feats.device)  # [m]
    z = layer.entry(layer.features(feats[:, :-1]), embed[x[:, 1: 1 + m]])  # [B, m, H]
    keys, values = layer.keys_values(z, pos)  # [B, m, nh, hd]
    i, j = pos.view(-1, 1), pos.view(1, -1)
    outs, extra_k, extra_v = [], [], []
    g = None
    for d in range(1, depth + 1):
        if d > 1:
            z = layer.entry(g, embed[x[:, d: d + m]])  # query at position i + d - 1
            k_d, v_d = layer.keys_values(z, pos + d - 1)
            extra_k.append(k_d)
            extra_v.append(v_d)
        q = layer.query(z, pos + d - 1)  # [B, m, nh, hd]
        visible = (j <= i) & (i + d - 1 - j < w)  # [m, m] true keys in the window
        scores = torch.einsum("bihd,bjhd->bhij", q.float(), keys.float()).masked_fill(~visible, float("-inf"))
        if extra_k:
            own = torch.stack([(q.float() * k.float()).sum(-1) for k in extra_k], dim=-1)  # [B, m, nh, d-1]
            scores = torch.cat([scores, own.permute(0, 2, 1, 3)], dim=-1)  # [B, nh, m, m + d - 1]
        probs = scores.softmax(-1)
        out = torch.einsum("bhij,bjhd->bihd", probs[..., :m], values.float())
        for e, v in enumerate(extra_v):
            out = out + probs[..., m + e].permute(0, 2, 1).unsqueeze(-1) * v.float()
        g = layer.finish(z, out.to(z.dtype))
        outs.append(g)
    return outs


def depth_targets(tokens: torch.Tensor, lens: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, m] = x_{i+d+1} or IGNORE, valid [B, m] bool) for depth d."""
    b, n = tokens.shape
    m = n - 1
    i = torch.arange(m, device=tokens.device)
    valid = (i.view(1, -1) + d + 1) < lens.view(-1, 1)
    x = torch.cat([tokens, tokens.new_zeros(b, d + 1)], dim=1)[:, d + 1: d + 1 + m]
    return torch.where(valid, x, torch.full_like(x, IGNORE)), valid


@dataclass
class LayerTrainConfig:
    depth: int = 4
    epochs: float = 1.0
    lr: float = 5e-4
    batch_tokens: int = 4096
    warmup: float = 0.03
    decay: float = 0.8
    reg: float = 1.0
    seed: int = 0


def layer_loss(layer: DraftLayer, feats: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor,
               embed: torch.Tensor, lm_rows: torch.Tensor, remap: torch.Tensor,
               cfg: LayerTrainConfig) -> tuple[torch.Tensor, list[float]]:
    """Summed loss and per-depth top-1 accuracy (over the draft vocabulary). The feature
    regression aims depth d at the final hidden state d positions ahead (the last H
    columns of feats [B, n, P * H]), which its output g stands in for."""
    reg_feats = feats[..., -layer.fuse.weight.shape[0]:]  # [B, n, H]
    total, accs = feats.new_zeros(()), []
    for d, g in enumerate(unrolled(layer, feats, tokens, embed, cfg.depth), start=1):
        tgt, valid = depth_targets(tokens, lens, d)
        if not bool(valid.any()):
            accs.append(float("nan"))
            continue
        rows = g[valid]  # [P, H]
        logits = rows @ lm_rows.T  # [P, V']
        t = remap[tgt[valid]]
        ce = nn.functional.cross_entropy(logits.float(), t, ignore_index=IGNORE)
        feat_t = torch.cat([reg_feats[:, d:], reg_feats.new_zeros(reg_feats.shape[0], d, reg_feats.shape[2])],
                           dim=1)[:, : g.shape[1]]
        reg = nn.functional.smooth_l1_loss(rows.float(), feat_t[valid])
        total = total + cfg.decay ** (d - 1) * (ce + cfg.reg * reg)
        accs.append(float((logits.argmax(-1) == t).float().mean()))
    return total, accs


def length_batches(crops: Crops, order: list[int], batch_tokens: int) -> list[list[int]]:
    """Sequences grouped by similar length so that B * n_max stays near `batch_tokens`."""
    by_len = sorted(order, key=crops.length)
    batches, cur = [], []
    for s in by_len:
        if cur and (len(cur) + 1) * crops.length(s) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(s)
    return batches + ([cur] if cur else [])


def batch_stream(crops: Crops, rows: list[int], batch_tokens: int, seed: int,
                 start: int = 0) -> Iterator[list[int]]:
    """Endless length-grouped batches, from step `start` on: pass p visits every batch once
    in an order drawn from (seed, p) alone, so a run resumed at step s sees what the
    uninterrupted run saw from step s."""
    batches = length_batches(crops, rows, batch_tokens)
    step = start
    while True:
        p, k = divmod(step, len(batches))
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1_000_003 + p)).tolist()
        for j in order[k:]:
            yield batches[j]
        step = (p + 1) * len(batches)


@torch.no_grad()
def evaluate_layer(layer: DraftLayer, crops: Crops, rows: list[int], embed: torch.Tensor,
                   lm_rows: torch.Tensor, vocab: torch.Tensor, depth: int, device: torch.device,
                   batch_tokens: int = 8192) -> dict[str, Any]:
    """Offline walk over sequences `rows`: chain_accept and step_accept (vLLM's walk), and per
    depth top-1 and rank_accuracy[d][r] = P(target is the rank-r draft), with every earlier
    token the true one (teacher-forced, as a draft whose earlier tokens were accepted sees it;
    what the load policy and the tree builder read, as for heads)."""
    layer.eval()
    hits = torch.zeros(depth, TOPK)
    counts = torch.zeros(depth)
    seq_ids, runs = [], []
    for index in length_batches(crops, rows, batch_tokens):
        feats, tokens, lens = crops.batch(index, device, next(layer.parameters()).dtype)
        right = []
        for d, g in enumerate(unrolled(layer, feats, tokens, embed, depth), start=1):
            tgt, valid = depth_targets(tokens, lens, d)
            top = vocab[(g @ lm_rows.T).topk(min(TOPK, len(vocab)), dim=-1).indices]  # [B, m, k] token ids
            at_rank = (top == tgt.unsqueeze(-1)) & valid.unsqueeze(-1)
            hits[d - 1, : top.shape[-1]] += at_rank.sum((0, 1)).float().cpu()
            counts[d - 1] += valid.sum().item()
            right.append(at_rank[..., 0])
        run = torch.stack(right).long().cumprod(0).sum(0)  # [B, m] leading depths right
        for r, s in enumerate(index):
            n_pos = max(crops.length(s) - 2, 0)  # positions with a next-but-one token
            seq_ids.append(torch.full((n_pos,), s))
            runs.append(run[r, :n_pos].cpu())
    layer.train()
    seq, run = torch.cat(seq_ids), torch.cat(runs)
    order = torch.argsort(seq, stable=True)
    rank = hits / counts.clamp(min=1).unsqueeze(1)
    return {"positions": len(run), "top1": [round(float(r[0]), 4) for r in rank],
            "rank_accuracy": [[round(float(x), 4) for x in r] for r in rank],
            "chain_accept": round(1 + float(run.float().mean()), 4),
            "step_accept": round(step_accept(seq[order], run[order]), 4)}


def cosine(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
