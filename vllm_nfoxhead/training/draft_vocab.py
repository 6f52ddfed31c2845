"""python -m vllm_nfoxhead.training.draft_vocab: shrink the draft vocabulary of trained heads.

Token-conditioned heads with a draft vocabulary project each head state onto
those rows of the LM head only. On a CPU that projection is a memory-bound
matrix-vector product per head and step, so its cost follows the number of
rows: SmolLM2's 12,237 seen tokens cost about 1 ms per head on one core, the
4,096 most frequent ones about 0.2 ms, and they still cover about 92% of the
answer tokens of the benchmark prompts. This keeps the N ids most frequent in
the given answers (within the current draft vocabulary) and writes a new heads
directory; weights are unchanged, so no retraining is needed. Ids outside the
new vocabulary can no longer be drafted (verification is unchanged: output
stays lossless).
"""

from __future__ import annotations

import argparse
import collections
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, read_heads_tensors, save_heads, validate_heads_dir
from vllm_nfoxhead.training.trainer import read_sequences


def answer_token_counts(data: Sequence[str | os.PathLike[str]]) -> collections.Counter[int]:
    """How often each token id occurs in the answers of `datagen` JSONL files."""
    counts: collections.Counter[int] = collections.Counter()
    for path in data:
        seqs = read_sequences(path, max_len=1 << 30)
        for ids, start in zip(seqs.ids, seqs.answer_start):
            counts.update(ids[start:])
    return counts


def most_frequent_ids(counts: collections.Counter[int], allowed: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` ids of `allowed` [V'] int64 most frequent in `counts`, sorted [size] int64.

    Ties (and ids never seen) go to the lower id, so the result is deterministic."""
    ranked = sorted(allowed.tolist(), key=lambda t: (-counts.get(t, 0), t))
    return torch.tensor(sorted(ranked[:size]), dtype=torch.int64)


def shrink_draft_vocab(heads: str | os.PathLike[str], data: Sequence[str | os.PathLike[str]], size: int,
                       output: str | os.PathLike[str], force: bool = False) -> Path:
    """Write `heads` to `output` with the `size` most frequent answer ids as its draft vocabulary."""
    config = validate_heads_dir(heads)
    if not config.token_conditioned:
        raise NFoxHeadError(f"{heads} are Medusa heads (conditioning none), which draft from the full vocabulary",
                            "a draft vocabulary applies to token-conditioned heads only")
    current = config.draft_vocab_size or config.vocab_size
    if not 0 < size < current:
        raise NFoxHeadError(f"--size {size} must be between 1 and the current draft vocabulary ({current}) - 1",
                            "pass a smaller --size")
    if Path(output).exists() and not force:
        raise NFoxHeadError(f"{output} already exists", "choose another --output or pass --force")
    counts = answer_token_counts(data)  # before any writing: bad data stops here
    tensors = read_heads_tensors(heads, config)
    allowed = tensors.get(DRAFT_VOCAB_KEY, torch.arange(config.vocab_size))
    ids = most_frequent_ids(counts, allowed, size)
    covered = sum(counts.get(t, 0) for t in ids.tolist()) / max(sum(counts.values()), 1)
    config.draft_vocab_size = size
    config.extra = {**config.extra, "draft_vocab": {"from_size": current, "size": size,
                                                    "answer_coverage": round(covered, 4),
                                                    "data": [str(p) for p in data]}}
    return save_heads(output, config, {**tensors, DRAFT_VOCAB_KEY: ids}, overwrite=force)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.training.draft_vocab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("heads", type=Path, help="token-conditioned heads directory to read")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="datagen JSONL files whose answers rank the token ids (e.g. the training data)")
    p.add_argument("--size", type=int, required=True, help="draft vocabulary size to keep (e.g. 4096)")
    p.add_argument("--output", type=Path, required=True, help="heads directory to write")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        out = shrink_draft_vocab(args.heads, args.data, args.size, args.output, args.force)
    except NFoxHeadError as e:
        raise SystemExit(f"error: {e}") from None
    coverage = validate_heads_dir(out).extra["draft_vocab"]["answer_coverage"]
    print(f"wrote {out}: draft vocabulary {args.size} ids, covering {coverage:.1%} of the answer tokens")


if __name__ == "__main__":
    main()
