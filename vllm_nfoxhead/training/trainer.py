"""Head training on self-distilled answers (core; no vLLM import).

The base model is frozen, and head k only reads the final post-norm hidden state
h_t, so training needs each h_t once: `hidden_states` runs the base model over
every training sequence a single time and caches the result on disk (keyed by a
hash of data, model and max length). Training then works on positions, not
sequences: a step draws a batch of positions t from all sequences and computes

    loss = sum_k decay^k * CE(head_k(h_t), token[t+k+2])

over positions whose target lies in the answer (or anywhere with
`include_prompt`), averaged per head over valid targets. With `distill` > 0
part of each head's loss is the cross-entropy against the base model's own
distribution for token t+k+2, softmax(lm_head(h_{t+k+1})), read from the same
cached states (Medusa-2's self-distillation): the greedy answer gives one token
per position, the distribution also says which other tokens were close. Token-conditioned heads
also read the embeddings of tokens t+1..t+k+1 (teacher forcing: the true tokens).
Shapes: hidden [N, H] (all tokens of all sequences, concatenated), targets
[N, K] (-100 = no target), context [N, K] (token t+1+j, 0 past the end).

`train_vocab="seen"` computes the softmax over the token ids that occur as
targets in the training split only (SmolLM2's answers use 8.6k of 49k ids),
which makes a step about 5x cheaper; heads are still evaluated, and used, over
the full vocabulary (FR-Spec makes the same trade for its draft head).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vllm_nfoxhead.core.dtype_choice import resolve_dtype
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import HeadsConfig, save_heads
from vllm_nfoxhead.core.heads import NFoxHeads
from vllm_nfoxhead.core.lookup import DEFAULT_LOOKUP, lookup_run

IGNORE = -100
TOPK = 10  # accuracies stored for ranks 0..TOPK-1 (what a tree builder reads)
CACHE_VERSION = 1


@dataclass
class TrainConfig:
    """Everything that decides the trained heads (all CLI flags of `train`)."""

    num_heads: int = 4
    num_layers: int = 1
    shared_lm_head: bool = True
    conditioning: str = "tokens"  # "tokens": Hydra-style heads (heads.py); "none": Medusa heads
    epochs: float = 1.0
    lr: float = 1e-3
    decay: float = 0.8
    batch_size: int = 512  # positions per optimiser step
    max_len: int = 1024  # tokens per sequence (prompt + answer), longer ones are cut
    warmup: float = 0.05  # share of steps with linear warm-up
    weight_decay: float = 0.0
    include_prompt: bool = False
    eval_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    base_dtype: str = "auto"  # bf16 where native (as vLLM serves it), else float32: dtype_choice.py
    amp: bool = True  # bf16 autocast for the head matmuls (master weights stay float32)
    train_vocab: str = "seen"  # "seen": softmax over target ids of the training split; "full"
    distill: float = 0.0  # weight of the base model's distribution in each head's loss (0: answer tokens only)


@dataclass
class Sequences:
    """Training sequences: token ids and where each answer starts."""

    ids: list[list[int]]
    answer_start: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Dataset:
    """Flattened positions. hidden [N, H] (cache dtype), targets/context [N, K] int64, seq [N] int64."""

    hidden: torch.Tensor
    targets: torch.Tensor
    seq: torch.Tensor
    context: torch.Tensor | None = None
    # [N] bool: position t >= answer start - 1, where vLLM drafts first (after
    # sampling the answer's first token from the prompt); None: every position
    drafted: torch.Tensor | None = None
    tokens: torch.Tensor | None = None  # [N] int64: the token ids (for the prompt-lookup walk)

    @classmethod
    def build(cls, seqs: Sequences, hidden: torch.Tensor, num_heads: int, include_prompt: bool) -> "Dataset":
        targets, seq = build_targets(seqs, num_heads, include_prompt)
        drafted = torch.cat([torch.arange(len(ids)) >= start - 1 for ids, start in zip(seqs.ids, seqs.answer_start)])
        tokens = torch.tensor([t for ids in seqs.ids for t in ids], dtype=torch.long)
        return cls(hidden, targets, seq, build_context(seqs, num_heads), drafted, tokens)

    def split(self, eval_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices (train, eval) of positions that have a target; split by sequence."""
        n_seq = int(self.seq.max()) + 1 if len(self.seq) else 0
        order = torch.randperm(n_seq, generator=torch.Generator().manual_seed(seed))
        n_eval = max(1, round(n_seq * eval_fraction)) if n_seq > 1 and eval_fraction > 0 else 0
        is_eval = torch.zeros(n_seq, dtype=torch.bool)
        is_eval[order[:n_eval]] = True
        useful = (self.targets != IGNORE).any(dim=1)
        rows = torch.arange(len(self.seq))
        return rows[useful & ~is_eval[self.seq]], rows[useful & is_eval[self.seq]]


@dataclass
class TrainResult:
    heads: NFoxHeads
    losses: list[float]
    metrics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def read_sequences(path: str | os.PathLike[str], max_len: int) -> Sequences:
    """Records of `datagen` (prompt_token_ids + response_token_ids), cut to `max_len`."""
    from vllm_nfoxhead.training.datagen import jsonl_objects

    path = Path(path)
    if not path.is_file():
        raise NFoxHeadError(f"data file {path} does not exist", "run `python -m vllm_nfoxhead.training.datagen` first")
    ids, starts = [], []
    for lineno, row in jsonl_objects(path):
        prompt, answer = row.get("prompt_token_ids"), row.get("response_token_ids")
        if not _is_id_list(prompt) or not _is_id_list(answer) or not prompt:
            raise NFoxHeadError(
                f"{path} line {lineno} lacks integer lists prompt_token_ids/response_token_ids",
                "use a file written by `python -m vllm_nfoxhead.training.datagen`",
            )
        ids.append((prompt + answer)[:max_len])
        starts.append(len(prompt))
    if not ids:
        raise NFoxHeadError(f"data file {path} holds no records", "generate data with `python -m vllm_nfoxhead.training.datagen`")
    return Sequences(ids, starts, source=str(path))


def cut_answers(seqs: Sequences, hidden: torch.Tensor, n: int) -> tuple[Sequences, torch.Tensor]:
    """Each answer cut to its first `n` tokens, with hidden [N, H] (flattened per sequence, as
    cached) cut alike: what a benchmark generating `n` tokens per prompt walks over."""
    ids, keep, off = [], [], 0
    for seq, a in zip(seqs.ids, seqs.answer_start):
        end = min(len(seq), a + n)
        ids.append(seq[:end])
        keep.append(torch.arange(off, off + end))
        off += len(seq)
    return Sequences(ids, list(seqs.answer_start), source=seqs.source), hidden[torch.cat(keep)]


def join_sequences(parts: Sequence[Sequences]) -> Sequences:
    """Several data files' sequences as one set, in file order (sources joined by '+')."""
    return Sequences([x for p in parts for x in p.ids], [x for p in parts for x in p.answer_start],
                     source="+".join(p.source for p in parts))


def _is_id_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and t >= 0 for t in x)


def build_targets(seqs: Sequences, num_heads: int, include_prompt: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """targets [N, K]: token t+k+2 of the same sequence, or IGNORE; seq [N]: sequence index."""
    rows, seq_index = [], []
    for s, (ids, start) in enumerate(zip(seqs.ids, seqs.answer_start)):
        tok = torch.tensor(ids, dtype=torch.long)
        t = torch.arange(len(ids))
        tgt = torch.full((len(ids), num_heads), IGNORE, dtype=torch.long)
        for k in range(num_heads):
            pos = t + k + 2  # the token head k predicts from position t
            ok = (pos < len(ids)) & ((pos >= start) | include_prompt)
            tgt[ok, k] = tok[pos[ok]]
        rows.append(tgt)
        seq_index.append(torch.full((len(ids),), s, dtype=torch.long))
    return torch.cat(rows), torch.cat(seq_index)


def build_context(seqs: Sequences, num_heads: int) -> torch.Tensor:
    """context [N, K]: token t+1+j of the same sequence (0 past its end)."""
    return torch.cat([context_tokens(torch.tensor(ids, dtype=torch.long), num_heads) for ids in seqs.ids])


def context_tokens(tokens: torch.Tensor, num_heads: int) -> torch.Tensor:
    """tokens [T] -> context [T, K]: token t+1+j (0 past the end), what conditioned heads read."""
    padded = torch.cat([tokens, tokens.new_zeros(num_heads)])
    return torch.stack([padded[1 + j: 1 + j + len(tokens)] for j in range(num_heads)], dim=1)


def cache_key(data_file: str | os.PathLike[str], model_dir: str | os.PathLike[str], max_len: int, dtype: str,
              layers: Sequence[int] = ()) -> str:
    """Hash of what the hidden states depend on: data bytes, model config and weights, length,
    dtype, and the layers whose states are stored beside the final one."""
    tag = f"v{CACHE_VERSION}|{max_len}|{dtype}" + (f"|layers{list(layers)}" if layers else "")
    h = hashlib.sha256(tag.encode())
    h.update(Path(data_file).read_bytes())
    model_dir = Path(model_dir)
    for f in sorted(model_dir.iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------
# Base model and hidden states
# --------------------------------------------------------------------------
def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NFoxHeadError("--device cuda but no CUDA device is available", "use --device cpu or auto")
    return torch.device(device)


def load_base(model_dir: str | os.PathLike[str], device: torch.device, dtype: str = "auto") -> nn.Module:
    """The frozen base model (transformers), in eval mode; dtype "auto" as in dtype_choice."""
    from transformers import AutoModelForCausalLM

    if not (Path(model_dir) / "config.json").is_file():
        raise NFoxHeadError(f"{model_dir} is not a model directory (no config.json)", "pass --model DIR of a transformers checkpoint")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, resolve_dtype(dtype, device.type)))
    return model.to(device).eval().requires_grad_(False)


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The base vocabulary projection [V, H] (tied to the embeddings in SmolLM2)."""
    return model.get_output_embeddings().weight


def embed_weight(model: nn.Module) -> torch.Tensor:
    """The base input embeddings [V, H] (what token-conditioned heads read)."""
    return model.get_input_embeddings().weight


@torch.inference_mode()
def hidden_states(
    model: nn.Module, seqs: Sequences, batch_tokens: int = 4096, progress: Callable | None = None,
    layers: Sequence[int] = (),
) -> torch.Tensor:
    """Final post-norm hidden states of every token: [N, H] bfloat16 on CPU, sequences concatenated.
    With `layers`, [N, (len(layers) + 1) * H]: the residual stream after each of those
    layers (transformers' hidden_states[i], vLLM's aux hidden state i), then the final state.

    Sequences are run length-sorted in batches of about `batch_tokens` tokens
    (right padding, attention mask), so little compute goes to padding.
    """
    device = next(model.parameters()).device
    decoder = model.get_decoder()  # returns post-norm states as last_hidden_state
    order = sorted(range(len(seqs)), key=lambda i: len(seqs.ids[i]))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for batch in _token_batches(order, seqs, batch_tokens):
        width = max(len(seqs.ids[i]) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, : len(seqs.ids[i])] = torch.tensor(seqs.ids[i])
            mask[r, : len(seqs.ids[i])] = 1
        o = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=bool(layers))
        states = torch.cat([*(o.hidden_states[i] for i in layers), o.last_hidden_state], dim=-1)  # [b, w, P * H]
        for r, i in enumerate(batch):
            out[i] = states[r, : len(seqs.ids[i])].to("cpu", torch.bfloat16)
        if progress:
            progress(sum(len(seqs.ids[i]) for i in batch))
    return torch.cat(out)  # type: ignore[arg-type]


def _token_batches(order: Sequence[int], seqs: Sequences, batch_tokens: int) -> list[list[int]]:
    batches, cur, width = [], [], 0
    for i in order:
        w = max(width, len(seqs.ids[i]))
        if cur and w * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, w = [], len(seqs.ids[i])
        cur.append(i)
        width = w
    return batches + ([cur] if cur else [])


def cached_hidden_states(
    model_loader: Callable[[], nn.Module], seqs: Sequences, cache_file: Path,
    progress: Callable | None = None, layers: Sequence[int] = (),
) -> tuple[torch.Tensor, bool]:
    """Hidden states [N, H] (or [N, P * H] with `layers`, as `hidden_states`) from
    `cache_file`, or computed once and written there (bf16).

    Returns (hidden, was_cached). Stored in bfloat16: half the disk and memory,
    and well inside what head training can resolve.
    """
    n = sum(len(x) for x in seqs.ids)
    if cache_file.is_file():
        hidden = load_file(str(cache_file))["hidden"]
        if hidden.shape[0] == n:
            return hidden, True
    hidden = hidden_states(model_loader(), seqs, progress=progress, layers=layers).to(torch.bfloat16)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    save_file({"hidden": hidden.contiguous()}, str(tmp))
    os.replace(tmp, cache_file)
    return hidden, False


# --------------------------------------------------------------------------
# Loss, schedule, metrics
# --------------------------------------------------------------------------
def head_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [K, B, V], targets [B, K] -> per-head mean CE [K] (0 for a head with no target)."""
    k, b, v = logits.shape
    ce = nn.functional.cross_entropy(
        logits.float().reshape(k * b, v), targets.T.reshape(k * b), ignore_index=IGNORE, reduction="none"
    ).view(k, b)
    return _mean_over_valid(ce, targets)


def soft_head_losses(logits: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits, teacher [K, B, V], targets [B, K] -> per-head mean CE against softmax(teacher) [K].

    Rows whose hard target is IGNORE do not count (their teacher row is arbitrary).
    """
    log_q = torch.log_softmax(logits.float(), dim=-1)
    p = torch.softmax(teacher.float(), dim=-1)
    return _mean_over_valid(-(p * log_q).sum(-1), targets)


def _mean_over_valid(ce: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ce [K, B], targets [B, K] -> per-head mean of ce over rows with a target [K] (0 if none)."""
    valid = (targets.T != IGNORE).float()
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def teacher_logits(data: "Dataset", rows: torch.Tensor, num_heads: int, weight: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """The base model's logits for head k's target at each row: [K, B, V'] = h[t+k+1] @ weight.T.

    weight [V', H] is the (possibly vocabulary-restricted) base LM head. Where the
    target is valid, t+k+1 lies in the same sequence; elsewhere the index is
    clamped and the row is masked by the loss.
    """
    shift = torch.arange(1, num_heads + 1).unsqueeze(1)  # [K, 1]
    idx = (rows.unsqueeze(0) + shift).clamp(max=len(data.hidden) - 1)  # [K, B]
    h = data.hidden[idx].to(device, weight.dtype)  # [K, B, H]
    return h @ weight.T


def weighted_loss(per_head: torch.Tensor, decay: float) -> torch.Tensor:
    """sum_k decay^k * loss_k."""
    weights = decay ** torch.arange(len(per_head), dtype=per_head.dtype, device=per_head.device)
    return (weights * per_head).sum()


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier: linear warm-up over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int = TOPK) -> tuple[torch.Tensor, torch.Tensor]:
    """hits [K, k]: targets at rank exactly r per head; counts [K]: valid targets per head."""
    ranks = logits.topk(k, dim=-1).indices  # [K, B, k]
    tgt = targets.T.unsqueeze(-1)  # [K, B, 1]
    valid = tgt.squeeze(-1) != IGNORE
    hit = (ranks == tgt) & valid.unsqueeze(-1)
    return hit.sum(1).double(), valid.sum(1).double()


def _forward(heads: NFoxHeads, data: Dataset, rows: torch.Tensor, device: torch.device,
             lm_head: torch.Tensor, embed: torch.Tensor | None, vocab: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [K, B, V] of positions `rows` (V = len(vocab) when given)."""
    h = data.hidden[rows].to(device, torch.float32)  # [B, H]
    context = None
    if heads.config.token_conditioned:
        if embed is None or data.context is None:
            raise ValueError("token-conditioned heads need `embed` and Dataset.context")
        context = embed[data.context[rows].to(device)]  # [B, K, H]
    return heads(h, None if heads.lm_heads is not None else lm_head, context=context, vocab=vocab)


@torch.no_grad()
def evaluate(
    heads: NFoxHeads, data: Dataset, rows: torch.Tensor, lm_head: torch.Tensor, batch_size: int,
    device: torch.device, amp: bool = False, embed: torch.Tensor | None = None, lookup: int = DEFAULT_LOOKUP,
) -> dict[str, Any]:
    """Per-head accuracies on `rows` for r < TOPK, over the full vocabulary.

    topk_accuracy[k][r] = P(target among head k's top r+1) (cumulative);
    rank_accuracy[k][r] = P(target is exactly head k's rank-r token) (what
    `python -m vllm_nfoxhead.tools.tree_builder --accuracies` reads without --cumulative);
    chain_accept = 1 + E[number of leading heads whose top-1 is right], over
    positions where every head has a target (teacher forced: every position counts);
    step_accept = tokens per step of a greedy chain that walks each answer as vLLM
    does (a step starts where the previous one's accepted run ended), which is
    what vLLM reports. It is lower because easy stretches take few steps.
    step_accept_lookup: the same walk where a step whose last tokens occurred
    before drafts the prompt-lookup continuation (up to `lookup` tokens) instead,
    as the plugin's default does; absent when the dataset has no token ids.
    """
    heads.eval()
    hits = torch.zeros(heads.config.num_heads, TOPK, dtype=torch.float64)
    counts = torch.zeros(heads.config.num_heads, dtype=torch.float64)
    loss_sum = torch.zeros(heads.config.num_heads, dtype=torch.float64)
    chain_sum, chain_n = 0.0, 0
    runs = []  # per chunk: [B] leading heads right, positions in `rows` order
    for chunk in rows.split(batch_size):
        tgt = data.targets[chunk].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = _forward(heads, data, chunk, device, lm_head, embed)
        n_hits, n = topk_hits(logits, tgt)
        hits += n_hits.cpu()
        counts += n.cpu()
        loss_sum += (head_losses(logits, tgt).double() * n).cpu()
        full = (tgt != IGNORE).all(dim=1)  # [B]
        top1 = logits.argmax(-1) == tgt.T  # [K, B]
        chain_sum += top1[:, full].float().cumprod(0).sum().item()
        chain_n += int(full.sum())
        runs.append((top1 & (tgt.T != IGNORE)).long().cumprod(0).sum(0).cpu())
    acc = (hits.cumsum(1) / counts.clamp(min=1).unsqueeze(1)).tolist()
    heads.train()
    run = torch.cat(runs) if runs else torch.zeros(0, dtype=torch.long)
    walks = {"step_accept": round(_walk(data, rows, run), 4)}
    if data.tokens is not None and lookup > 0:
        walks["step_accept_lookup"] = round(_walk_with_lookup(data, rows, run, lookup), 4)
    return {
        "eval_positions": int(counts[0].item()),
        "chain_accept": round(1 + chain_sum / max(chain_n, 1), 4),
        **walks,
        "top1": [round(a[0], 4) for a in acc],
        "top5": [round(a[4], 4) for a in acc],
        "topk_accuracy": [[round(x, 4) for x in a] for a in acc],
        "rank_accuracy": [[round(x, 4) for x in r] for r in (hits / counts.clamp(min=1).unsqueeze(1)).tolist()],
        "eval_loss": [round(x, 4) for x in (loss_sum / counts.clamp(min=1)).tolist()],
    }


def _walk(data: Dataset, rows: torch.Tensor, run: torch.Tensor) -> float:
    """step_accept over `rows`, each answer walked from where vLLM drafts first."""
    keep = data.drafted[rows] if data.drafted is not None else torch.ones(len(rows), dtype=torch.bool)
    return step_accept(data.seq[rows][keep], run[keep])


def _walk_with_lookup(data: Dataset, rows: torch.Tensor, run: torch.Tensor, max_tokens: int) -> float:
    """step_accept_lookup: the walk where rows with a lookup match take the copied run instead of `run`."""
    copied = lookup_runs(data, rows, max_tokens)
    return _walk(data, rows, torch.where(copied >= 0, copied, run))


def lookup_runs(data: Dataset, rows: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """[len(rows)] int64: tokens a prompt-lookup draft at each row would get accepted, -1 where
    the row's last tokens never occurred before (lookup.lookup_run on the row's own sequence)."""
    assert data.tokens is not None
    n_seq = int(data.seq.max()) + 1 if len(data.seq) else 0
    first = torch.searchsorted(data.seq, torch.arange(n_seq + 1)).tolist()  # sequence s: rows first[s]..first[s+1]-1
    tokens = data.tokens.numpy()
    out = []
    for row, s in zip(rows.tolist(), data.seq[rows].tolist()):
        out.append(lookup_run(tokens[first[s]: first[s + 1]], row - first[s], max_tokens))
    return torch.tensor(out, dtype=torch.long)


def step_accept(seq: torch.Tensor, run: torch.Tensor) -> float:
    """Tokens per step of a greedy chain walking each sequence: seq [N] sequence index and
    run [N] accepted drafts at each position, positions in order within a sequence.
    A step at position t yields run[t] + 1 tokens and the next step starts at t + run[t] + 1."""
    steps = tokens = 0
    bounds = torch.nonzero(torch.diff(seq, prepend=seq[:1] - 1)).flatten().tolist() + [len(seq)]
    runs = run.tolist()
    for lo, hi in zip(bounds, bounds[1:]):
        t = lo
        while t < hi:
            steps += 1
            tokens += 1 + runs[t]
            t += 1 + runs[t]
    return tokens / max(steps, 1)


# --------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------
def new_heads(cfg: TrainConfig, hidden_size: int, lm_head: torch.Tensor, base_model: str) -> NFoxHeads:
    """Fresh heads; own projections start as copies of the base LM head."""
    dtype = "bfloat16" if cfg.shared_lm_head else "float32"
    hc = HeadsConfig(
        num_heads=cfg.num_heads, num_layers=cfg.num_layers, hidden_size=hidden_size,
        vocab_size=lm_head.shape[0], shared_lm_head=cfg.shared_lm_head, base_model=base_model, dtype=dtype,
        conditioning=cfg.conditioning,
    )
    heads = NFoxHeads(hc)
    if heads.lm_heads is not None:
        for proj in heads.lm_heads:
            proj.weight.data.copy_(lm_head.float())
    return heads


def train_heads(
    cfg: TrainConfig, data: Dataset, lm_head: torch.Tensor, base_model: str = "",
    device: torch.device | None = None, progress: bool = True, embed: torch.Tensor | None = None,
) -> TrainResult:
    """AdamW + warm-up/cosine over shuffled positions; returns heads (float32) and metrics.

    embed [V, H]: the base model's input embeddings (token-conditioned heads only).
    """
    from tqdm import tqdm

    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    lm_head = lm_head.detach().to(device, torch.float32)
    if embed is not None:
        embed = embed.detach().to(device, torch.float32)
    heads = new_heads(cfg, data.hidden.shape[1], lm_head, base_model).to(device).train()
    train_rows, eval_rows = data.split(cfg.eval_fraction, cfg.seed)
    if len(train_rows) == 0:
        raise NFoxHeadError("no training positions with a target", "give longer answers or fewer heads")
    vocab, targets = training_vocab(cfg.train_vocab, data.targets, train_rows, lm_head.shape[0])
    vocab = None if vocab is None else vocab.to(device)
    teacher_weight = lm_head if vocab is None else lm_head[vocab]  # [V', H]: the frozen base LM head's rows
    # A shared LM head is frozen: cut its rows once, not per step and head.
    train_lm_head, step_vocab = (teacher_weight, None) if heads.lm_heads is None else (lm_head, vocab)
    steps = max(1, math.ceil(cfg.epochs * len(train_rows) / cfg.batch_size))
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, round(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, warm))
    gen = torch.Generator().manual_seed(cfg.seed)
    order = _position_stream(train_rows, cfg.batch_size, gen)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="train", unit="step", disable=not progress)
    for _ in bar:
        rows = next(order)
        tgt = targets[rows].to(device)  # [B, K], ids into `vocab` when restricted
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = _forward(heads, data, rows, device, train_lm_head, embed, step_vocab)  # [K, B, V'], bf16 under amp
            if cfg.distill > 0:
                with torch.no_grad():
                    teacher = teacher_logits(data, rows, cfg.num_heads, teacher_weight, device)  # [K, B, V']
        per_head = head_losses(logits, tgt)  # float32
        if cfg.distill > 0:
            per_head = (1 - cfg.distill) * per_head + cfg.distill * soft_head_losses(logits, teacher, tgt)
        loss = weighted_loss(per_head, cfg.decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc1=_acc1_text(logits, tgt))
    heads.set_draft_vocab(vocab)  # drafting proposes what training could predict
    metrics = {"steps": steps, "train_positions": len(train_rows), "final_train_loss": round(losses[-1], 4),
               "train_vocab_size": lm_head.shape[0] if vocab is None else len(vocab)}
    if len(eval_rows):
        metrics.update(evaluate(heads, data, eval_rows, lm_head, cfg.batch_size, device, cfg.amp, embed))
    return TrainResult(heads.cpu(), losses, metrics)


def training_vocab(mode: str, targets: torch.Tensor, train_rows: torch.Tensor,
                   vocab_size: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(vocab [V'] int64 or None, targets [N, K] remapped into it) for `train_vocab` mode."""
    if mode == "full":
        return None, targets
    if mode != "seen":
        raise NFoxHeadError(f"unknown train_vocab {mode!r}", "use 'seen' or 'full'")
    seen = targets[train_rows]
    vocab = torch.unique(seen[seen != IGNORE])  # sorted ids [V']
    remap = torch.full((vocab_size,), IGNORE, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    # Targets outside the vocab (only in held-out rows) become IGNORE; eval uses `data.targets`.
    return vocab, torch.where(targets == IGNORE, targets, remap[targets.clamp(min=0)])


def _position_stream(rows: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Endless batches of row indices, reshuffled every pass."""
    while True:
        perm = rows[torch.randperm(len(rows), generator=gen)]
        for i in range(0, len(perm) - batch_size + 1 if len(perm) >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def _acc1_text(logits: torch.Tensor, tgt: torch.Tensor) -> str:
    with torch.no_grad():
        hits, n = topk_hits(logits, tgt, 1)
    return "/".join(f"{h:.2f}" for h in (hits[:, 0] / n.clamp(min=1)).tolist())


def save_trained(path: Path, result: TrainResult, cfg: TrainConfig, overwrite: bool) -> Path:
    """Write the heads with format.save_heads; metrics and settings go to config `extra`."""
    hc = result.heads.config
    settings = {k: v for k, v in vars(cfg).items() if k != "device"}
    hc.extra = {"training": settings, **result.metrics}
    return save_heads(path, hc, result.heads.state_dict_for_format(), overwrite=overwrite)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def data_summary(seqs: Sequences) -> dict[str, int]:
    answers = sum(len(x) - s for x, s in zip(seqs.ids, seqs.answer_start))
    return {"sequences": len(seqs), "tokens": sum(len(x) for x in seqs.ids), "answer_tokens": answers}


def metrics_json(metrics: dict[str, Any]) -> str:
    keys = ("top1", "top5", "chain_accept", "step_accept", "step_accept_lookup", "eval_loss")
    return json.dumps({k: metrics[k] for k in keys if k in metrics})
