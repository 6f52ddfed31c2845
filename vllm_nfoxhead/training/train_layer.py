"""CLI: train a draft layer (core/draft_layer.py) on self-distilled answers.

    python -m vllm_nfoxhead.training.train_layer --model DIR --data a.jsonl [b.jsonl ...] --output DIR \
        [--eval-data bench.jsonl ...] [--depth 4] [--window 64] [--epochs 1] [--time-limit 90]

Same data and hidden-state cache as `vllm_nfoxhead.training.train`. Training
stops after --epochs or --time-limit minutes, whichever is first; a
checkpoint (<output>.ckpt.pt) is written every few minutes and a rerun of the
same command resumes from it. The output is a heads directory (format
version 2, architecture "draft_layer") with the held-out offline walk of
every --eval-data file in config.json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from vllm_nfoxhead.core.draft_layer import DraftLayer, DraftLayerSpec, layer_tensors, load_layer
from vllm_nfoxhead.core.dtype_choice import AUTO_HELP, DTYPE_CHOICES, resolve_dtype
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import (
    DRAFT_VOCAB_KEY, LAYER_FORMAT_VERSION, HeadsConfig, read_heads_tensors, save_heads, validate_heads_dir,
)
from vllm_nfoxhead.training.draft_layer_train import (
    Crops, LayerTrainConfig, batch_stream, cosine, evaluate_layer, layer_loss,
)
from vllm_nfoxhead.training.train import check_data_fits, default_cache_dir, say
from vllm_nfoxhead.training.datagen import run_cli
from vllm_nfoxhead.training.draft_vocab import most_frequent_ids
from vllm_nfoxhead.training.trainer import (
    IGNORE, cache_key, cached_hidden_states, embed_weight, lm_head_weight, load_base,
    read_sequences, seed_everything,
)

CHECKPOINT_MINUTES = 5.0
REPLAN_AT = (20, 100, 300, 600)  # steps after the (re)start at which the time budget is re-checked


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d, s = LayerTrainConfig(), DraftLayerSpec()
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.training.train_layer",
                                description="Train an EAGLE-style draft layer for a base model.")
    p.add_argument("--model", required=True, help="base model directory (transformers checkpoint)")
    p.add_argument("--data", required=True, nargs="+", help="datagen JSONL file(s) to train on")
    p.add_argument("--eval-data", nargs="*", default=[], help="datagen JSONL file(s) to report the offline walk on")
    p.add_argument("--eval-answer-tokens", type=int, default=128, metavar="N",
                   help="also walk each --eval-data answer's first N tokens, what a live benchmark generating N "
                        "tokens measures (reported as 'FILE@firstN'; default %(default)s)")
    p.add_argument("--output", required=True, help="heads directory to write")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    p.add_argument("--depth", type=int, default=d.depth, help="drafted tokens trained (unrolled depths; default %(default)s)")
    p.add_argument("--window", type=int, default=None,
                   help=f"true positions a request keeps (default {s.window}, or --init-from's)")
    p.add_argument("--intermediate-size", type=int, default=None, help="MLP width (default: the base model's)")
    p.add_argument("--feature-layers", type=int, nargs="+", default=None, metavar="I",
                   help="also feed the layer the base's residual stream after these layers, mixed with "
                        "the final state (EAGLE-3; e.g. 2 15 27 for a 30-layer base; served through vLLM's "
                        "aux hidden states). With --init-from a layer without them, the mix starts as "
                        "'final only' (default: --init-from's, else none)")
    p.add_argument("--init", choices=("random", "passthrough"), default="passthrough",
                   help="random: small random weights (EAGLE); passthrough: start as g = norm(f), "
                        "residual branches at zero (default %(default)s)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="start from this draft layer's weights, shape and draft vocabulary (a further "
                        "schedule on the same or new data, e.g. in a later session) instead of --init")
    p.add_argument("--epochs", type=float, default=d.epochs, help="passes over the training answers (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=90.0, help="minutes of training at most (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="answer tokens per step (default %(default)s)")
    p.add_argument("--reg", type=float, default=d.reg, help="weight of the feature regression (default %(default)s)")
    p.add_argument("--decay", type=float, default=d.decay, help="loss weight of depth d is decay^(d-1)")
    p.add_argument("--draft-vocab", type=int, default=None,
                   help="draft only the N ids most frequent in the training answers (e.g. 4096): the "
                        "projection, most of a training step and of drafting on a CPU, shrinks with it "
                        "(default: every id the answers use)")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per sequence (prompt + answer)")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="held-out share of training sequences")
    p.add_argument("--base-dtype", choices=DTYPE_CHOICES, default="auto", help=AUTO_HELP)
    p.add_argument("--seed", type=int, default=d.seed, help="seed for initialisation, order and split")
    p.add_argument("--cache-dir", default=None, help="hidden-state cache (as in vllm_nfoxhead.training.train)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.draft_vocab is not None and args.draft_vocab < 1:
        p.error("--draft-vocab must be at least 1")
    if args.init_from and (args.draft_vocab is not None or args.intermediate_size is not None):
        p.error("--init-from keeps that layer's shape and draft vocabulary: drop --draft-vocab and --intermediate-size")
    for flag in ("depth", "window", "batch_tokens", "eval_answer_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.epochs <= 0 or args.time_limit <= 0:
        p.error("--epochs and --time-limit must be positive")
    return args


def load_crops(args: argparse.Namespace, files: list[str], model: torch.nn.Module, dtype: str,
               cache: Path, vocab_size: int, layers: tuple[int, ...]) -> Crops:
    """Answers of `files` with their cached hidden states (and those of `layers`, the layer's
    feature layers), cropped to what the proposer sees; one file's states in memory at a time."""
    from tqdm import tqdm

    parts = [read_sequences(f, args.max_len) for f in files]
    for part in parts:
        check_data_fits(part, vocab_size, args.model)
    sizes = [Crops.rows(p) for p in parts]
    feats: torch.Tensor | None = None  # [sum sizes, P * H] bf16, filled file by file
    crops, off = [], 0
    with tqdm(total=sum(len(x) for p in parts for x in p.ids), desc="hidden states", unit="tok",
              disable=args.quiet) as bar:
        for f, part, n in zip(files, parts, sizes):
            file = cache / f"{cache_key(f, args.model, args.max_len, dtype, layers)}.safetensors"
            h, cached = cached_hidden_states(lambda: model, part, file, bar.update, layers)
            if cached:
                bar.update(h.shape[0])
            say(f"hidden states of {f} {'read from' if cached else 'written to'} {file}")
            if feats is None:
                feats = disk_backed(cache / f"crops-{os.getpid()}.bin", sum(sizes), h.shape[1])
            crops.append(Crops.build(part, h, out=feats[off: off + n]))
            off += n
            del h
    return Crops.join(crops, feats)


def disk_backed(file: Path, rows: int, width: int) -> torch.Tensor:
    """A zeroed [rows, width] bf16 tensor in a memory-mapped scratch file (unlinked at once: it
    vanishes with the process). With feature layers the crops of every file outgrow RAM (about
    16 GB for 3.4 M answer tokens of SmolLM2 on a 23 GB machine, which killed a run); pages of
    a file mapping can be dropped and read back, anonymous memory cannot."""
    file.parent.mkdir(parents=True, exist_ok=True)
    t = torch.from_file(str(file), shared=True, size=rows * width, dtype=torch.bfloat16)
    file.unlink()
    return t.view(rows, width)


def split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(n * fraction)) if fraction > 0 and n > 1 else 0
    return sorted(order[k:]), sorted(order[:k])


def seen_vocab(crops: Crops, rows: list[int], vocab_size: int,
               size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab [V'] sorted ids drafted tokens may take, remap [V] id -> column or IGNORE).

    V' is every id the answers of `rows` draft, or the `size` most frequent of them
    (ties to the lower id); targets outside it are ignored by the token loss."""
    targets = torch.cat([crops.tokens[crops.starts[s] + 2: crops.starts[s + 1]] for s in rows])
    seen, counts = torch.unique(targets, return_counts=True)  # sorted ids [V'], [V']
    if size is not None and size < len(seen):
        seen = most_frequent_ids(collections.Counter(dict(zip(seen.tolist(), counts.tolist()))), seen, size)
    return seen, vocab_remap(seen, vocab_size)


def vocab_remap(vocab: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """remap [V] int64: token id -> its column in the draft vocabulary `vocab` [V'], or IGNORE."""
    remap = torch.full((vocab_size,), IGNORE, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    return remap


def train(args: argparse.Namespace) -> Path:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise NFoxHeadError(f"{out} already exists", "choose another --output or pass --force")
    for f in [*args.data, *args.eval_data]:
        if not Path(f).is_file():
            raise NFoxHeadError(f"data file {f} does not exist", "run `python -m vllm_nfoxhead.training.datagen` first")
    start = read_start(args.init_from, args.model) if args.init_from else None  # before loading anything
    layers = feature_layers(args, start)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    dtype = resolve_dtype(args.base_dtype, "cpu")
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    model = load_base(args.model, torch.device("cpu"), dtype)
    lm_head = lm_head_weight(model).detach().float()  # [V, H]
    embed = embed_weight(model).detach().float()  # [V, H]
    hidden_size, vocab_size = lm_head.shape[1], lm_head.shape[0]
    crops = load_crops(args, args.data, model, dtype, cache, vocab_size, layers)
    evals = {f: load_crops(args, [f], model, dtype, cache, vocab_size, layers) for f in args.eval_data}
    del model
    train_rows, held_out = split(len(crops), args.eval_fraction, args.seed)
    layer, vocab, remap = starting_layer(args, start, crops, train_rows, hidden_size, vocab_size, layers)
    spec = layer.spec
    cfg = LayerTrainConfig(depth=args.depth, epochs=args.epochs, lr=args.lr, batch_tokens=args.batch_tokens,
                           decay=args.decay, reg=args.reg, seed=args.seed)
    lm_rows = lm_head[vocab]  # [V', H]
    metrics = fit(layer, crops, train_rows, embed, lm_rows, remap, cfg, args, out)
    reports = {}
    if held_out:
        reports["held_out"] = evaluate_layer(layer, crops, held_out, embed, lm_rows, vocab, cfg.depth,
                                             torch.device("cpu"))
    for f, whole in evals.items():
        for name, c in ((f, whole), (f"{f}@first{args.eval_answer_tokens}", whole.first(args.eval_answer_tokens))):
            reports[name] = evaluate_layer(layer, c, list(range(len(c))), embed, lm_rows, vocab, cfg.depth,
                                           torch.device("cpu"))
    for name, r in reports.items():
        say(f"offline walk on {name}: chain {r['chain_accept']}, steps {r['step_accept']}, top-1 {r['top1']}")
    hc = HeadsConfig(num_heads=cfg.depth, num_layers=1, hidden_size=hidden_size, vocab_size=vocab_size,
                     shared_lm_head=True, base_model=str(args.model), dtype="bfloat16", conditioning="tokens",
                     draft_vocab_size=len(vocab), format_version=LAYER_FORMAT_VERSION,
                     architecture="draft_layer", draft_layer=spec.to_dict(),
                     extra={"training": {**dataclasses.asdict(cfg), "data": args.data, "window": spec.window,
                                         "init": args.init_from or args.init, "draft_vocab": args.draft_vocab},
                            **metrics, "offline_walk": reports,
                            # per-depth rank accuracies: what the load policy and tree builder read
                            "rank_accuracy": next(iter(reports.values()), {}).get("rank_accuracy")})
    tensors = {**layer_tensors(layer), DRAFT_VOCAB_KEY: vocab}
    path = save_heads(out, hc, tensors, overwrite=args.force)
    _checkpoint_file(out).unlink(missing_ok=True)
    say(f"wrote {path}")
    return path


def read_start(heads_dir: str, model_dir: str) -> tuple[HeadsConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a draft layer to start from (--init-from), checked against
    the base model's config.json before anything is loaded."""
    config = validate_heads_dir(heads_dir)
    if not config.is_draft_layer:
        raise NFoxHeadError(f"--init-from {heads_dir} holds heads, not a draft layer",
                            "pass a directory written by train_layer")
    base = _base_config(model_dir)
    want = (base.get("hidden_size"), base.get("vocab_size"))
    if (config.hidden_size, config.vocab_size) != want:
        raise NFoxHeadError(f"--init-from {heads_dir} was trained for hidden size {config.hidden_size} and "
                            f"vocabulary {config.vocab_size}, not {want[0]} and {want[1]} as {model_dir}",
                            "pass a draft layer trained for --model")
    return config, read_heads_tensors(heads_dir, config)


def feature_layers(args: argparse.Namespace, start: tuple[HeadsConfig, dict[str, torch.Tensor]] | None
                   ) -> tuple[int, ...]:
    """The layer's feature layers: --feature-layers, or --init-from's; checked against the base
    model's depth and --init-from's own before anything is loaded."""
    own = start[0].layer_spec.feature_layers if start else ()
    layers = tuple(args.feature_layers) if args.feature_layers is not None else own
    if own and layers != own:
        raise NFoxHeadError(f"--feature-layers {list(layers)} differ from --init-from's {list(own)}",
                            "drop --feature-layers to continue that layer")
    depth = int(_base_config(args.model).get("num_hidden_layers", 0))
    if list(layers) != sorted(set(layers)) or not all(0 <= i <= depth for i in layers):
        raise NFoxHeadError(f"--feature-layers {list(layers)} are not ascending layers of this {depth}-layer model",
                            f"give layer numbers from 0 to {depth}, e.g. 2 {depth // 2} {depth - 3}")
    return layers


def starting_layer(args: argparse.Namespace, start: tuple[HeadsConfig, dict[str, torch.Tensor]] | None,
                   crops: Crops, train_rows: list[int], hidden_size: int, vocab_size: int,
                   layers: tuple[int, ...] = ()) -> tuple[DraftLayer, torch.Tensor, torch.Tensor]:
    """(layer, draft vocabulary [V'], remap [V]): --init-from's layer and vocabulary, or a new
    layer (--init) over the training answers' vocabulary (--draft-vocab); fed `layers`."""
    if start is not None:
        config, tensors = start
        spec = dataclasses.replace(config.layer_spec, window=args.window or config.layer_spec.window,
                                   feature_layers=layers)
        layer = DraftLayer(hidden_size, spec)
        load_layer(layer, {k: v.float() for k, v in tensors.items() if v.is_floating_point()},
                   keep_mix=not config.layer_spec.feature_layers)
        vocab = tensors.get(DRAFT_VOCAB_KEY, torch.arange(vocab_size))
        return layer, vocab, vocab_remap(vocab, vocab_size)
    vocab, remap = seen_vocab(crops, train_rows, vocab_size, args.draft_vocab)
    spec = DraftLayerSpec(num_attention_heads=max(1, hidden_size // 64),
                          intermediate_size=args.intermediate_size or _base_intermediate(args.model, hidden_size),
                          window=args.window or DraftLayerSpec.window, feature_layers=layers)
    layer = DraftLayer(hidden_size, spec)
    if args.init == "passthrough":
        layer.init_as_passthrough()
    return layer, vocab, remap


def _base_config(model_dir: str) -> dict[str, Any]:
    """The base model's config.json."""
    return json.loads((Path(model_dir) / "config.json").read_text())


def _base_intermediate(model_dir: str, hidden_size: int) -> int:
    return int(_base_config(model_dir).get("intermediate_size", 4 * hidden_size))


def _checkpoint_file(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt.pt")


def fit(layer: DraftLayer, crops: Crops, rows: list[int], embed: torch.Tensor, lm_rows: torch.Tensor,
        remap: torch.Tensor, cfg: LayerTrainConfig, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """AdamW with warm-up and cosine decay, checkpointed; stops at the epoch or time budget."""
    from tqdm import tqdm

    tokens = sum(crops.length(s) for s in rows)
    epoch_steps = max(1, math.ceil(cfg.epochs * tokens / cfg.batch_tokens))
    plan = {"steps": epoch_steps}
    opt = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=0.0)
    # The schedule anneals over plan["steps"], which the time limit may shorten (fit_to_time).
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine(s, plan["steps"], max(1, round(cfg.warmup * plan["steps"]))))
    start, spent, ckpt = 0, 0.0, _checkpoint_file(out)
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        layer.load_state_dict(state["layer"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        start, spent, plan = state["step"], state["seconds"], state["plan"]
        say(f"resuming from {ckpt} at step {start} of {plan['steps']}")
    stream = batch_stream(crops, rows, cfg.batch_tokens, cfg.seed, start)
    t0, saved, loss = time.monotonic() - spent, time.monotonic(), float("nan")
    bar = tqdm(total=plan["steps"], initial=start, desc="train", unit="step", disable=args.quiet)
    step = start
    while step < plan["steps"]:
        if time.monotonic() - t0 > args.time_limit * 60 * 1.1:
            say(f"--time-limit passed by 10% at step {step}: stopping before the schedule's end")
            break
        feats, toks, lens = crops.batch(next(stream), torch.device("cpu"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, accs = layer_loss(layer, feats, toks, lens, embed, lm_rows, remap, cfg)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
        opt.step()
        sched.step()
        step, loss = step + 1, total.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", acc="/".join(f"{a:.2f}" for a in accs))
        if step - start in REPLAN_AT:
            fit_to_time(plan, step, time.monotonic() - t0, args.time_limit * 60, epoch_steps, bar)
        if time.monotonic() - saved > CHECKPOINT_MINUTES * 60:
            _save_checkpoint(ckpt, layer, opt, sched, step, time.monotonic() - t0, plan)
            saved = time.monotonic()
    bar.close()
    return {"steps": step, "epochs_done": round(step * cfg.batch_tokens / tokens, 3), "train_tokens": tokens, "final_loss": round(loss, 4),
            "train_seconds": round(time.monotonic() - t0, 1)}


def fit_to_time(plan: dict[str, int], step: int, seconds: float, limit: float, epoch_steps: int,
                bar: Any) -> None:
    """Set the schedule's length so that it ends (annealed) within the time limit, from the
    pace so far (never past --epochs). Re-planned a few times (REPLAN_AT): a machine
    busy at the start must not cut a run that later goes faster."""
    affordable = min(epoch_steps, max(step + 1, int(step * limit / max(seconds, 1e-9))))
    if affordable != plan["steps"]:
        say(f"--time-limit: the schedule ends at step {affordable} of {epoch_steps} for --epochs")
        plan["steps"] = affordable
        bar.total = affordable


def _save_checkpoint(path: Path, layer: DraftLayer, opt: Any, sched: Any,
                     step: int, seconds: float, plan: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)  # --output's folder may not exist yet
    torch.save({"layer": layer.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "step": step, "seconds": seconds, "plan": plan}, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    return run_cli(train, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
