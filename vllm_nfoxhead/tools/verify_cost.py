"""Measure what verifying N drafted tokens costs on this machine, relative to one plain step.

A tree of N nodes makes the model score N+1 tokens per step. On a GPU that is
nearly free up to a large N; on a small CPU it is not (here 64 tokens cost
about 2.3 plain steps), so the best tree size depends on the hardware. This
writes the cost table that `python -m vllm_nfoxhead.tools.tree_builder --cost-table`
turns into a tree size.

    python -m vllm_nfoxhead.tools.verify_cost --model DIR --out cost.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from vllm_nfoxhead.core.dtype_choice import AUTO_HELP, DTYPE_CHOICES, resolve_dtype

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64)


@torch.inference_mode()
def measure_cost(model_dir: str | Path, sizes: tuple[int, ...] = DEFAULT_SIZES, context: int = 300,
                 repeats: int = 5, dtype: str = "bfloat16") -> dict[int, float]:
    """{N: median time to score N+1 new tokens after `context` cached ones / time for 1 token}."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (1, context), generator=gen)
    cache = model(prefix, use_cache=True).past_key_values

    def seconds(n_tokens: int) -> float:
        times = []
        for _ in range(repeats):
            past = copy.deepcopy(cache)
            ids = torch.randint(0, vocab, (1, n_tokens), generator=gen)
            start = time.perf_counter()
            model(ids, past_key_values=past, use_cache=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    seconds(1)  # warm-up
    base = seconds(1)
    return {n: round(seconds(n + 1) / base, 4) for n in tqdm(sizes, desc="verification cost", unit="size")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.tools.verify_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="base model directory (transformers checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="cost table JSON to write ({\"N\": cost})")
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="draft sizes N to time (N+1 tokens scored each; default %(default)s)")
    p.add_argument("--context", type=int, default=300, help="cached context length (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timings per size; the median is kept (default %(default)s)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help=f"model dtype, as served; {AUTO_HELP}")
    args = p.parse_args(argv)
    costs = measure_cost(args.model, tuple(args.sizes), args.context, args.repeats,
                         resolve_dtype(args.dtype))
    args.out.write_text(json.dumps({str(n): c for n, c in costs.items()}, indent=2) + "\n")
    for n, c in costs.items():
        print(f"N={n:<4} {c:.2f} plain steps")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
