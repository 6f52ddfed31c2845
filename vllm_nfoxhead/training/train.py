"""CLI: train NFoxHead heads on self-distilled answers.

    python -m vllm_nfoxhead.training.train --model DIR --data distill.jsonl [more.jsonl ...] --output HEADS_DIR \
        [--num-heads 4] [--num-layers 1] [--shared-lm-head | --own-lm-head] [--epochs 1] \
        [--lr 1e-3] [--decay 0.8] [--batch-size 512] [--max-len 1024] [--device auto] [--seed 0] \
        [--conditioning tokens|none] [--train-vocab seen|full] [--distill 0.5] [--eval-data other.jsonl]

Steps: read the data, get the base model's hidden states (computed once, cached
under --cache-dir), train (training.train_heads), evaluate on a held-out 5% of
the sequences (and on --eval-data, answers to other prompts), write the heads
directory with the metrics in config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import fields
from pathlib import Path

import torch

from vllm_nfoxhead.core.dtype_choice import AUTO_HELP, DTYPE_CHOICES, fast_dtype, resolve_dtype
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import check_base_compat, validate_heads_dir
from vllm_nfoxhead.models.smollm2 import CACHE_ENV
from vllm_nfoxhead.training.datagen import run_cli
from vllm_nfoxhead.training.trainer import (
    Dataset, TrainConfig, cache_key, cached_hidden_states, data_summary, embed_weight, evaluate,
    join_sequences, Sequences, lm_head_weight, load_base, metrics_json, pick_device, read_sequences, save_trained,
    seed_everything, train_heads,
)


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-nfoxhead"
    return Path(root).expanduser() / "hidden-states"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="base model directory (transformers checkpoint)")
    p.add_argument("--data", required=True, nargs="+",
                   help="one or more JSONL files from `python -m vllm_nfoxhead.training.datagen`, trained on together "
                        "(hidden states are cached per file, so adding a file reuses the others' cache)")
    p.add_argument("--output", required=True, help="heads directory to write")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--num-heads", type=int, default=d.num_heads, help="heads to train; head k predicts token t+k+2 (default %(default)s)")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help="residual blocks per head")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shared-lm-head", dest="shared_lm_head", action="store_true", default=True,
                   help="heads reuse the base LM head (default; small, fast on CPU)")
    g.add_argument("--own-lm-head", dest="shared_lm_head", action="store_false",
                   help="each head gets its own vocabulary projection, initialised from the base LM head")
    p.add_argument("--conditioning", choices=("tokens", "none"), default=d.conditioning,
                   help="tokens: each head also reads the embeddings of the tokens before its target "
                        "(Hydra-style, drafted head by head; much better later heads); none: Medusa heads, "
                        "which vLLM's own Medusa can also run (default %(default)s)")
    p.add_argument("--train-vocab", choices=("seen", "full"), default=d.train_vocab,
                   help="seen: softmax over the token ids that occur as targets in the training data "
                        "(about 5x faster on SmolLM2; heads still predict over the full vocabulary); "
                        "full: the whole vocabulary (default %(default)s)")
    p.add_argument("--distill", type=float, default=d.distill,
                   help="weight in [0, 1] of the base model's own next-token distribution in each head's loss "
                        "(computed from the cached hidden states; 0: the answer's tokens only, 1: the "
                        "distribution only; default %(default)s)")
    p.add_argument("--eval-data", default=None,
                   help="a second datagen JSONL (answers to other prompts) to report accuracies on; "
                        "the held-out split shares the training prompts' families, this does not")
    p.add_argument("--epochs", type=float, default=d.epochs, help="passes over the answer positions (may be fractional)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--decay", type=float, default=d.decay, help="loss weight of head k is decay^k")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="positions per optimiser step")
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens per sequence (prompt + answer)")
    p.add_argument("--warmup", type=float, default=d.warmup, help="share of steps for linear warm-up")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--include-prompt", action="store_true", help="also train on targets inside the prompt")
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction, help="held-out share of sequences")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: CUDA when available (default %(default)s)")
    p.add_argument("--base-dtype", choices=DTYPE_CHOICES, default=d.base_dtype,
                   help="dtype of the frozen base model when computing hidden states; use what vLLM will "
                        f"serve in. {AUTO_HELP}")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="run the head matmuls in float32 instead of bf16 autocast (autocast is used only "
                        "where bf16 is native: see --base-dtype)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for initialisation, shuffling and the held-out split (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help=f"hidden-state cache (default $ {CACHE_ENV}/hidden-states or ~/.cache/vllm-nfoxhead/hidden-states)".replace("$ ", "$"))
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("num_heads", "num_layers", "batch_size", "max_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.epochs > 0 or not 0 <= args.eval_fraction < 1:
        p.error("--epochs must be > 0 and --eval-fraction in [0, 1)")
    if not 0 <= args.distill <= 1:
        p.error("--distill must be in [0, 1]")
    return args


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def run(args: argparse.Namespace) -> Path:
    """The whole recipe; returns the heads directory."""
    from tqdm import tqdm

    out = Path(args.output)
    if out.exists() and not args.force:
        raise NFoxHeadError(f"{out} already exists", "choose another --output or pass --force")
    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    cfg = dataclasses.replace(cfg, base_dtype=resolve_dtype(cfg.base_dtype, device.type),
                              amp=cfg.amp and fast_dtype(device.type) == "bfloat16")
    parts = [read_sequences(f, cfg.max_len) for f in args.data]
    seqs = join_sequences(parts)
    eval_seqs = read_sequences(args.eval_data, cfg.max_len) if args.eval_data else None
    info = data_summary(seqs)
    say(f"{info['sequences']} sequences, {info['tokens']} tokens ({info['answer_tokens']} in answers); device {device}")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    model = load_base(args.model, device, cfg.base_dtype)
    lm_head = lm_head_weight(model).detach()  # [V, H]
    for s in (*parts, eval_seqs):
        if s is not None:
            check_data_fits(s, lm_head.shape[0], args.model)
    t0, c0 = time.monotonic(), time.process_time()
    hidden = []  # one [N_i, H] bf16 tensor per data file
    with tqdm(total=info["tokens"], desc="hidden states", unit="tok", disable=args.quiet) as bar:
        for f, part in zip(args.data, parts):
            file = cache / f"{cache_key(f, args.model, cfg.max_len, cfg.base_dtype)}.safetensors"
            h, cached = cached_hidden_states(lambda: model, part, file, bar.update)
            if cached:
                bar.update(h.shape[0])
            hidden.append(h)
            say(f"hidden states of {f} {'read from' if cached else 'written to'} {file}")
    hidden = torch.cat(hidden)
    say(f"hidden states ready in {time.monotonic() - t0:.0f} s (CPU {time.process_time() - c0:.0f} s)")
    embed = embed_weight(model).detach() if cfg.conditioning == "tokens" else None  # [V, H]
    eval_data = _eval_dataset(args, cfg, eval_seqs, model, cache) if eval_seqs else None
    data = Dataset.build(seqs, hidden, cfg.num_heads, cfg.include_prompt)
    t0, c0 = time.monotonic(), time.process_time()
    result = train_heads(cfg, data, lm_head, base_model=str(args.model), device=device,
                         progress=not args.quiet, embed=embed)
    result.metrics["train_seconds"] = round(time.monotonic() - t0, 1)
    say(f"trained {result.metrics['steps']} steps in {result.metrics['train_seconds']:.0f} s "
        f"(CPU {time.process_time() - c0:.0f} s); eval {metrics_json(result.metrics)}")
    if eval_data is not None:
        rows = torch.arange(len(eval_data.seq))
        m = evaluate(result.heads.to(device), eval_data, rows, lm_head.to(device, torch.float32),
                     cfg.batch_size, device, cfg.amp, None if embed is None else embed.to(device, torch.float32))
        result.heads.cpu()
        result.metrics["eval_data"] = {"file": str(args.eval_data), **m}
        say(f"on {args.eval_data}: {metrics_json(m)}")
    path = save_trained(out, result, cfg, overwrite=args.force)
    check_base_compat(validate_heads_dir(path), model.config.hidden_size, lm_head.shape[0], str(args.model))
    say(f"wrote {path}")
    return path


def _eval_dataset(args: argparse.Namespace, cfg: TrainConfig, seqs: Sequences, model: torch.nn.Module,
                  cache: Path) -> Dataset:
    """Hidden states and targets of --eval-data (cached like the training data)."""
    key = cache_key(args.eval_data, args.model, cfg.max_len, cfg.base_dtype)
    hidden, _ = cached_hidden_states(lambda: model, seqs, cache / f"{key}.safetensors")
    return Dataset.build(seqs, hidden, cfg.num_heads, cfg.include_prompt)


def check_data_fits(seqs: Sequences, vocab_size: int, model_dir: str) -> None:
    """Token ids beyond the model's vocabulary mean the data came from another model."""
    top = max(max(x) for x in seqs.ids)
    if top >= vocab_size:
        raise NFoxHeadError(
            f"{seqs.source} holds token id {top} but {model_dir} has only {vocab_size} tokens",
            "generate the data with the same --model you train for",
        )


def say(message: str) -> None:
    print(f"[train] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
