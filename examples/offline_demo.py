"""Offline generation with NFoxHead speculation vs plain vLLM, side by side.

    python examples/offline_demo.py                  # SmolLM2-135M-Instruct + the heads shipped in heads/
    python examples/offline_demo.py --tiny           # the tiny random test model (plumbing only)
    python examples/offline_demo.py --model BASE --heads HEADS_DIR

Answers the same held-out chat prompts greedily, one request at a time (the
latency case speculation is for), with plain vLLM, NFoxHead's chain and
NFoxHead's tree; prints tokens/s, the speed-up over plain vLLM, vLLM's mean
acceptance length, and whether the answers are identical to plain decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from vllm import LLM, SamplingParams

from vllm_nfoxhead.core.dtype_choice import AUTO_HELP, DTYPE_CHOICES, resolve_dtype

REPO = Path(__file__).resolve().parents[1]
SHIPPED_HEADS = REPO / "heads" / "smollm2-nfoxhead"
CACHE = Path(os.environ.get("VLLM_NFOXHEAD_CACHE", "~/.cache/vllm-nfoxhead")).expanduser()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="base model directory (default: SmolLM2-135M-Instruct, prepared once)")
    p.add_argument("--heads", help=f"NFoxHead heads directory for --model (default: {SHIPPED_HEADS})")
    p.add_argument("--tiny", action="store_true", help="use the tiny random test model and its fitted heads")
    p.add_argument("--tree", default=None,
                   help="tree preset or JSON rank paths (default: the heads' own tree, else mc_sim_16)")
    p.add_argument("--num-prompts", type=int, default=6, help="held-out prompts to answer (default 6)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer at most (default 128)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help=f"engine dtype (float32 rules out rounding differences); {AUTO_HELP}")
    p.add_argument("--kv-cache-gib", type=float, default=0.5, help="KV cache size for the CPU backend (default 0.5)")
    args = p.parse_args()
    args.dtype = resolve_dtype(args.dtype)
    return args


def setup(args: argparse.Namespace) -> tuple[Path, Path, list[Any]]:
    """(model, heads, prompts): raw text for the tiny model, chat conversations otherwise."""
    if args.tiny:
        from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS, build_tiny_assets

        model, heads = build_tiny_assets(CACHE / "tiny")
        return model, heads, SEED_PROMPTS[: args.num_prompts]
    if args.model:
        model, heads = Path(args.model), Path(args.heads or "")
    else:
        from vllm_nfoxhead.models.smollm2 import prepare_smollm2

        model, heads = prepare_smollm2(), Path(args.heads or SHIPPED_HEADS)
    lines = (REPO / "data" / "prompts" / "bench.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines if line.strip()][: args.num_prompts]
    return model, heads, [[{"role": "user", "content": p}] for p in prompts]


def answer_one_by_one(llm: LLM, prompts: list[Any], params: SamplingParams) -> tuple[list[list[int]], float]:
    """Token ids of each answer, and the seconds for all of them (batch 1)."""
    chat = not isinstance(prompts[0], str)

    def gen(batch: list[Any], p: SamplingParams) -> list[Any]:
        return (llm.chat(batch, p, use_tqdm=False) if chat else llm.generate(batch, p, use_tqdm=False))

    gen(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    answers, start = [], time.perf_counter()
    for prompt in prompts:
        answers.append(list(gen([prompt], params)[0].outputs[0].token_ids))
    return answers, time.perf_counter() - start


def acceptance_length(llm: LLM) -> float | None:
    values = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    drafts = values.get("vllm:spec_decode_num_drafts", 0)
    return 1 + values.get("vllm:spec_decode_num_accepted_tokens", 0) / drafts if drafts else None


def run(engine: dict[str, Any], spec: dict[str, Any] | None, prompts: list[Any],
        params: SamplingParams) -> tuple[list[list[int]], float, float | None]:
    llm = LLM(**engine, speculative_config=spec)
    try:
        answers, seconds = answer_one_by_one(llm, prompts, params)
        return answers, seconds, acceptance_length(llm)
    finally:
        llm.llm_engine.engine_core.shutdown()


def main() -> None:
    args = parse_args()
    model, heads, prompts = setup(args)
    from vllm_nfoxhead.core.format import validate_heads_dir

    tree = args.tree or validate_heads_dir(heads).tree or "mc_sim_16"
    engine = dict(model=str(model), dtype=args.dtype, max_model_len=1024, seed=0,
                  kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), disable_log_stats=False)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=args.tiny)
    runs = {
        "plain vLLM": None,
        "NFoxHead chain": {"model": f"nfoxhead:{heads}", "tree": "chain"},
        "NFoxHead tree": {"model": f"nfoxhead:{heads}", "tree": tree},
    }
    results = {name: run(engine, spec, prompts, params) for name, spec in runs.items()}

    want, t_plain, _ = results["plain vLLM"]
    n = sum(map(len, want))
    print(f"\nmodel {model}\nheads {heads}\n{len(prompts)} prompts, {n} tokens, greedy, {args.dtype}, "
          "one request at a time")
    for name, (got, seconds, tau) in results.items():
        same = sum(a == b for a, b in zip(got, want))
        line = f"{name:<16}{sum(map(len, got)) / seconds:8.1f} tok/s"
        if tau is not None:
            line += (f"   speed-up {(sum(map(len, got)) / seconds) / (n / t_plain):.2f}x"
                     f"   mean acceptance length {tau:.2f}   identical answers {same}/{len(want)}")
        print(line)


if __name__ == "__main__":
    main()
