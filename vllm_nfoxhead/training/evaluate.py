"""CLI: the offline acceptance walk of a heads directory (heads or draft layer) on answer files.

    python -m vllm_nfoxhead.training.evaluate --model DIR --heads HEADS_DIR --data a.jsonl [b.jsonl ...]

Prints one JSON line per data file: chain_accept (leading drafts right, per
position), step_accept (tokens per step of a greedy chain walking each answer
as vLLM does: what vLLM's mean acceptance length reports with heads alone) and
top-1 per head or depth. Hidden states come from the training cache.
`--answer-tokens N` walks only each answer's first N tokens: what a live benchmark
generating N tokens per prompt measures (answers of small models often repeat
themselves further on, which drafts predict well, so whole answers read higher).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vllm_nfoxhead.core.draft_layer import DraftLayer, load_layer
from vllm_nfoxhead.core.dtype_choice import DTYPE_CHOICES, resolve_dtype
from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, check_base_compat, read_heads_tensors, validate_heads_dir
from vllm_nfoxhead.core.heads import NFoxHeads
from vllm_nfoxhead.training.draft_layer_train import Crops, evaluate_layer
from vllm_nfoxhead.training.train import default_cache_dir
from vllm_nfoxhead.training.datagen import run_cli
from vllm_nfoxhead.training.trainer import (
    Dataset, cache_key, cached_hidden_states, cut_answers, embed_weight, evaluate, lm_head_weight, load_base,
    read_sequences,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.training.evaluate",
                                description="Offline acceptance walk of heads or a draft layer on answer files.")
    p.add_argument("--model", required=True, help="base model directory (transformers checkpoint)")
    p.add_argument("--heads", required=True, help="heads directory (either architecture)")
    p.add_argument("--data", required=True, nargs="+", help="datagen JSONL file(s), each reported on its own")
    p.add_argument("--max-len", type=int, default=1024, help="tokens per sequence, as in training (default %(default)s)")
    p.add_argument("--answer-tokens", type=int, default=None, metavar="N",
                   help="walk only the first N tokens of each answer, as a benchmark with --max-tokens N sees "
                        "them (default: whole answers)")
    p.add_argument("--base-dtype", choices=DTYPE_CHOICES, default="auto", help="as in training (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="hidden-state cache (as in vllm_nfoxhead.training.train)")
    args = p.parse_args(argv)
    if args.answer_tokens is not None and args.answer_tokens < 1:
        p.error(f"--answer-tokens must be at least 1, got {args.answer_tokens}")
    return args


def walk(args: argparse.Namespace) -> list[dict]:
    config = validate_heads_dir(args.heads)
    dtype = resolve_dtype(args.base_dtype, "cpu")
    model = load_base(args.model, torch.device("cpu"), dtype)
    lm_head, embed = lm_head_weight(model).detach().float(), embed_weight(model).detach().float()
    check_base_compat(config, lm_head.shape[1], lm_head.shape[0], args.model)
    tensors = read_heads_tensors(args.heads, config)
    cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    layers = config.layer_spec.feature_layers if config.is_draft_layer else ()  # states it reads besides the last
    reports = []
    for f in args.data:
        seqs = read_sequences(f, args.max_len)
        file = cache / f"{cache_key(f, args.model, args.max_len, dtype, layers)}.safetensors"
        hidden, _ = cached_hidden_states(lambda: model, seqs, file, layers=layers)
        if args.answer_tokens is not None:
            seqs, hidden = cut_answers(seqs, hidden, args.answer_tokens)
        if config.is_draft_layer:
            layer = DraftLayer(config.hidden_size, config.layer_spec)
            load_layer(layer, {k: v.float() for k, v in tensors.items()})
            vocab = tensors.get(DRAFT_VOCAB_KEY, torch.arange(config.vocab_size))
            crops = Crops.build(seqs, hidden)
            m = evaluate_layer(layer, crops, list(range(len(crops))), embed, lm_head[vocab], vocab,
                               config.num_heads, torch.device("cpu"))
        else:
            heads = NFoxHeads(config).float()
            heads.load_format_tensors(tensors)
            data = Dataset.build(seqs, hidden, config.num_heads, include_prompt=False)
            m = evaluate(heads, data, torch.arange(len(data.seq)), lm_head, 512, torch.device("cpu"),
                         amp=False, embed=embed if config.token_conditioned else None, lookup=0)
        reports.append({"data": f, "answer_tokens": args.answer_tokens, "chain_accept": m["chain_accept"],
                        "step_accept": m["step_accept"], "top1": m["top1"]})
        print(json.dumps(reports[-1]), flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    return run_cli(walk, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
