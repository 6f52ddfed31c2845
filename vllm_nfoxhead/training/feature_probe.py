"""CLI: would the draft layer draft better from several of the base's layers than from its last?

    python -m vllm_nfoxhead.training.feature_probe --model DIR --data train.jsonl \
        --eval-data data/distill/smollm2-chat-bench.jsonl --steps 600

EAGLE-3 feeds its draft layer a learned mix of a low, a middle and a high layer
of the base (vLLM's "aux hidden states") instead of the last hidden state alone.
This probe trains two draft layers from the same start, on the same answers and
for the same number of steps, and walks a held-out file with each:

- `final`: the layer as served today, fed the last (post-norm) hidden state;
- `fused`: the same layer with feature layers a, b, c (core/draft_layer.py), fed
  Mix([norm(h_a), norm(h_b), norm(h_c), final]), the mix starting as "final
  only", so both variants start from the same drafts.

Prints one JSON line per variant (chain / stepped walk and top-1 per depth, on
whole answers and on their first --answer-tokens tokens). A decision aid for
the drafter's design, not a training run: hidden states are recomputed here and
not cached, so keep --train-records small.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from tqdm import tqdm

from vllm_nfoxhead.core.draft_layer import DraftLayer, DraftLayerSpec
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.training.datagen import run_cli
from vllm_nfoxhead.training.draft_layer_train import (
    Crops, LayerTrainConfig, batch_stream, cosine, evaluate_layer, layer_loss,
)
from vllm_nfoxhead.training.train_layer import seen_vocab
from vllm_nfoxhead.training.trainer import (
    Sequences, cut_answers, embed_weight, hidden_states, lm_head_weight, load_base, read_sequences,
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


def train_variant(layers: tuple[int, ...], crops: Crops, spec: DraftLayerSpec, hidden: int, embed: torch.Tensor,
                  lm_rows: torch.Tensor, remap: torch.Tensor, args: argparse.Namespace) -> DraftLayer:
    """A passthrough-initialised layer fed `layers` (its mix starting as "final only"),
    trained for --steps steps, seed 0."""
    torch.manual_seed(0)
    layer = DraftLayer(hidden, dataclasses.replace(spec, feature_layers=layers))
    layer.init_as_passthrough()
    opt = torch.optim.AdamW(layer.parameters(), lr=5e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, args.steps, max(1, args.steps // 30)))
    cfg, stream = LayerTrainConfig(), batch_stream(crops, list(range(len(crops))), args.batch_tokens, 0)
    for _ in tqdm(range(args.steps), desc="fused" if layers else "final", unit="step", disable=args.quiet):
        feats, toks, lens = crops.batch(next(stream), torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, _ = layer_loss(layer, feats, toks, lens, embed, lm_rows, remap, cfg)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
        opt.step()
        sched.step()
    return layer


def final_only(crops: Crops, hidden: int) -> Crops:
    """The same crops with the final state alone (the last H columns)."""
    return Crops(crops.feats[:, -hidden:], crops.tokens, crops.starts)


@torch.no_grad()
def walk(layer: DraftLayer, crops: Crops, embed: torch.Tensor, lm_rows: torch.Tensor, vocab: torch.Tensor) -> dict:
    """evaluate_layer's walk over every crop: chain / stepped acceptance and top-1 per depth."""
    m = evaluate_layer(layer, crops, list(range(len(crops))), embed, lm_rows, vocab, LayerTrainConfig().depth,
                       torch.device("cpu"))
    return {k: m[k] for k in ("chain_accept", "step_accept", "top1")}


def probe(args: argparse.Namespace) -> list[dict]:
    train = read_sequences(args.data, args.max_len)
    train = Sequences(train.ids[: args.train_records], train.answer_start[: args.train_records], train.source)
    held = read_sequences(args.eval_data, args.max_len)
    model = load_base(args.model, torch.device("cpu"), "bfloat16")
    num_layers = model.config.num_hidden_layers
    layers = tuple(args.layers) if args.layers else default_layers(num_layers)
    if list(layers) != sorted(set(layers)) or not all(0 <= i <= num_layers for i in layers):
        raise NFoxHeadError(f"--layers {list(layers)} are not ascending layers of this {num_layers}-layer model",
                            f"give three ascending numbers from 0 to {num_layers}")
    lm_head, embed = lm_head_weight(model).detach().float(), embed_weight(model).detach().float()
    hidden = lm_head.shape[1]
    with tqdm(total=sum(len(x) for s in (train, held) for x in s.ids), desc="hidden states", unit="tok",
              disable=args.quiet) as bar:
        train_states, held_states = (hidden_states(model, s, progress=bar.update, layers=layers) for s in (train, held))
    crops = Crops.build(train, train_states)
    evals = {"whole": Crops.build(held, held_states),
             f"first{args.answer_tokens}": Crops.build(*cut_answers(held, held_states, args.answer_tokens))}
    vocab, remap = seen_vocab(crops, list(range(len(crops))), lm_head.shape[0], args.draft_vocab)
    spec = DraftLayerSpec(num_attention_heads=max(1, hidden // 64), intermediate_size=model.config.intermediate_size)
    reports = []
    for fused in (False, True):
        t0 = time.monotonic()
        variant_layers = layers if fused else ()
        train_crops = crops if fused else final_only(crops, hidden)
        layer = train_variant(variant_layers, train_crops, spec, hidden, embed, lm_head[vocab], remap, args)
        walks = {name: walk(layer, c if fused else final_only(c, hidden), embed, lm_head[vocab], vocab)
                 for name, c in evals.items()}
        reports.append({"variant": "fused" if fused else "final", "layers": list(variant_layers),
                        "steps": args.steps, "train_tokens": sum(crops.length(s) for s in range(len(crops))),
                        "seconds": round(time.monotonic() - t0), **walks})
        print(json.dumps(reports[-1]), flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    return run_cli(probe, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
