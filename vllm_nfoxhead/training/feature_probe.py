"""CLI: would the draft layer draft better from several of the base's layers than from its last?

    python -m vllm_nfoxhead.training.feature_probe --model DIR --data train.jsonl \
        --eval-data data/distill/smollm2-chat-bench.jsonl --steps 600

EAGLE-3 feeds its draft layer a learned mix of a low, a middle and a high layer
of the base (vLLM's "aux hidden states") instead of the last hidden state alone.
This probe trains two draft layers from the same start, on the same answers and
for the same number of steps, and walks a held-out file with each:

- `final`: the layer as served today, fed the last (post-norm) hidden state;
- `fused`: the same layer fed Linear([norm(h_a), norm(h_b), norm(h_c), final]),
  the projection starting as "final only", so both variants start from the same drafts.

Prints one JSON line per variant (chain / stepped walk and top-1 per depth, on
whole answers and on their first --answer-tokens tokens). A decision aid for
the drafter's design, not a training run: hidden states are recomputed here and
not cached, so keep --train-records small.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from tqdm import tqdm

from vllm_nfoxhead.core.draft_layer import DraftLayer, DraftLayerSpec
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.training.datagen import run_cli
from vllm_nfoxhead.training.draft_layer_train import (
    Crops, LayerTrainConfig, batch_stream, cosine, evaluate_layer, layer_loss,
)
from vllm_nfoxhead.training.train_layer import seen_vocab
from vllm_nfoxhead.training.trainer import (
    Sequences, cut_answers, embed_weight, lm_head_weight, load_base, read_sequences,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.training.feature_probe",
                                description="Draft layer fed the last hidden state vs a learned mix of "
                                            "several layers (EAGLE-3), same data and budget.")
    p.add_argument("--model", required=True, help="base model directory (transformers checkpoint)")
    p.add_argument("--data", required=True, help="datagen JSONL to train both variants on")
    p.add_argument("--eval-data", required=True, help="held-out datagen JSONL to walk")
    p.add_argument("--train-records", type=int, default=1000, help="first N records of --data (default 1000)")
    p.add_argument("--layers", type=int, nargs=3, default=None, metavar="I",
                   help="base layers whose outputs are mixed in (default: EAGLE-3's 2, L/2, L-3 for L layers)")
    p.add_argument("--steps", type=int, default=600, help="training steps per variant (default 600)")
    p.add_argument("--batch-tokens", type=int, default=1024, help="answer tokens per step (default 1024)")
    p.add_argument("--draft-vocab", type=int, default=4096, help="most frequent answer ids drafted (default 4096)")
    p.add_argument("--answer-tokens", type=int, default=128,
                   help="also walk each held-out answer's first N tokens, as a live benchmark (default 128)")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("train_records", "steps", "batch_tokens", "draft_vocab", "answer_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def default_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's choice (vLLM's default aux layers): a low, the middle and a high layer."""
    return 2, num_layers // 2, num_layers - 3


@torch.no_grad()
def layer_states(model: nn.Module, seqs: Sequences, layers: tuple[int, ...], quiet: bool) -> torch.Tensor:
    """[N, (len(layers) + 1) * H] bfloat16: RMS-normed outputs of `layers` (transformers'
    hidden_states[i], the input of layer i, as vLLM's aux layer i) then the final hidden
    state, per token, sequences concatenated."""
    decoder, out = model.get_decoder(), []
    for ids in tqdm(seqs.ids, desc="hidden states", unit="seq", disable=quiet):
        o = decoder(input_ids=torch.tensor([ids]), output_hidden_states=True)
        h = o.last_hidden_state.shape[-1]
        parts = [nn.functional.rms_norm(o.hidden_states[i][0].float(), (h,)) for i in layers]
        out.append(torch.cat(parts + [o.last_hidden_state[0].float()], -1).to(torch.bfloat16))
    return torch.cat(out)


def passthrough_mix(parts: int, hidden: int) -> nn.Linear:
    """Linear(parts * H -> H) that starts by passing the last part (the final state) through."""
    mix = nn.Linear(parts * hidden, hidden, bias=False)
    with torch.no_grad():
        mix.weight.zero_()
        mix.weight[:, (parts - 1) * hidden:] = torch.eye(hidden)
    return mix


class _FinalOnly(nn.Module):
    """The served layer's input: the last H columns (the final hidden state)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[..., -self.hidden:]


def train_variant(fused: bool, crops: Crops, spec: DraftLayerSpec, hidden: int, parts: int, embed: torch.Tensor,
                  lm_rows: torch.Tensor, remap: torch.Tensor, args: argparse.Namespace) -> tuple[DraftLayer, nn.Module]:
    """A passthrough-initialised layer (and mix) trained for --steps steps, seed 0."""
    torch.manual_seed(0)
    layer = DraftLayer(hidden, spec)
    layer.init_as_passthrough()
    mix = passthrough_mix(parts, hidden) if fused else _FinalOnly(hidden)
    params = list(layer.parameters()) + list(mix.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, args.steps, max(1, args.steps // 30)))
    cfg, stream = LayerTrainConfig(), batch_stream(crops, list(range(len(crops))), args.batch_tokens, 0)
    for _ in tqdm(range(args.steps), desc="fused" if fused else "final", unit="step", disable=args.quiet):
        feats, toks, lens = crops.batch(next(stream), torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # the regression still aims at the final hidden states (the last H columns)
            total, _ = layer_loss(layer, mix(feats), toks, lens, embed, lm_rows, remap, cfg,
                                  reg_feats=feats[..., -hidden:])
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return layer, mix


@torch.no_grad()
def walk_variant(layer: DraftLayer, mix: nn.Module, crops: Crops, embed: torch.Tensor, lm_rows: torch.Tensor,
                 vocab: torch.Tensor) -> dict:
    """evaluate_layer's walk with the layer fed mix(feats)."""
    mixed = Crops(mix(crops.feats.float()), crops.tokens, crops.starts)
    m = evaluate_layer(layer, mixed, list(range(len(mixed))), embed, lm_rows, vocab, LayerTrainConfig().depth,
                       torch.device("cpu"))
    return {k: m[k] for k in ("chain_accept", "step_accept", "top1")}


def probe(args: argparse.Namespace) -> list[dict]:
    train = read_sequences(args.data, args.max_len)
    train = Sequences(train.ids[: args.train_records], train.answer_start[: args.train_records], train.source)
    held = read_sequences(args.eval_data, args.max_len)
    model = load_base(args.model, torch.device("cpu"), "bfloat16")
    num_layers = model.config.num_hidden_layers
    layers = tuple(args.layers) if args.layers else default_layers(num_layers)
    if not all(0 <= i <= num_layers for i in layers):
        raise NFoxHeadError(f"--layers {list(layers)} are not layers of this {num_layers}-layer model",
                            f"give three numbers from 0 to {num_layers}")
    lm_head, embed = lm_head_weight(model).detach().float(), embed_weight(model).detach().float()
    hidden = lm_head.shape[1]
    train_states, held_states = (layer_states(model, s, layers, args.quiet) for s in (train, held))
    crops = Crops.build(train, train_states)
    evals = {"whole": Crops.build(held, held_states),
             f"first{args.answer_tokens}": Crops.build(*cut_answers(held, held_states, args.answer_tokens))}
    vocab, remap = seen_vocab(crops, list(range(len(crops))), lm_head.shape[0], args.draft_vocab)
    spec = DraftLayerSpec(num_attention_heads=max(1, hidden // 64), intermediate_size=model.config.intermediate_size)
    reports = []
    for fused in (False, True):
        t0 = time.monotonic()
        layer, mix = train_variant(fused, crops, spec, hidden, len(layers) + 1, embed, lm_head[vocab], remap, args)
        walks = {name: walk_variant(layer, mix, c, embed, lm_head[vocab], vocab) for name, c in evals.items()}
        reports.append({"variant": "fused" if fused else "final", "layers": list(layers) if fused else [],
                        "steps": args.steps, "train_tokens": sum(crops.length(s) for s in range(len(crops))),
                        "seconds": round(time.monotonic() - t0), **walks})
        print(json.dumps(reports[-1]), flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    return run_cli(probe, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
