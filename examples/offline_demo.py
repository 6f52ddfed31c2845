"""Offline generation with NFoxHead speculation vs plain vLLM, side by side.

    python examples/offline_demo.py                      # the embedded tiny model
    python examples/offline_demo.py --model BASE --heads HEADS_DIR

Runs the same greedy requests through a plain engine and an NFoxHead engine
(one after the other), then prints tokens/s, the speed-up, vLLM's mean
acceptance length, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vllm import LLM, SamplingParams

DEFAULT_CACHE = Path(os.environ.get("VLLM_NFOXHEAD_CACHE", "~/.cache/vllm-nfoxhead")).expanduser()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="base model directory (default: the tiny test model, built on first use)")
    p.add_argument("--heads", help="NFoxHead heads directory for --model")
    p.add_argument("--num-speculative-tokens", type=int, default=None,
                   help="tokens drafted per step (default: one per head)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens generated per prompt (default: 48 for the tiny model, 128 otherwise)")
    p.add_argument("--batch", type=int, default=1,
                   help="concurrent requests (default 1: the latency case speculation is for)")
    p.add_argument("--dtype", default="float32", help="engine dtype (float32 makes outputs exactly comparable)")
    p.add_argument("--kv-cache-gib", type=float, default=0.25, help="KV cache size for the CPU backend")
    return p.parse_args()


def run(llm: LLM, prompts: list[str], params: SamplingParams, batch: int) -> tuple[list[list[int]], float]:
    """Generate in groups of `batch` concurrent requests; return token ids and seconds."""
    llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    out: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs = llm.generate(prompts[i : i + batch], params, use_tqdm=False)
        out += [list(o.outputs[0].token_ids) for o in outs]
    return out, time.perf_counter() - start


def acceptance_length(llm: LLM) -> float:
    values = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    drafts = values.get("vllm:spec_decode_num_drafts", 0)
    accepted = values.get("vllm:spec_decode_num_accepted_tokens", 0)
    return 1 + accepted / drafts if drafts else 1.0


def main() -> None:
    args = parse_args()
    if args.model is None:
        from vllm_nfoxhead.tiny_model import SEED_PROMPTS, build_tiny_assets

        model, heads = build_tiny_assets(DEFAULT_CACHE / "tiny")
        prompts, max_tokens = SEED_PROMPTS, args.max_tokens or 48
    else:
        model, heads = Path(args.model), Path(args.heads)
        prompts = ["Write a short poem about the sea.", "Explain what a hash table is.",
                   "List three uses of copper.", "How do I reverse a list in Python?"]
        max_tokens = args.max_tokens or 128
    engine = dict(model=str(model), dtype=args.dtype, max_model_len=1024, seed=0,
                  kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), disable_log_stats=False)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)

    plain = LLM(**engine)
    want, t_plain = run(plain, prompts, params, args.batch)
    plain.llm_engine.engine_core.shutdown()
    del plain

    spec = {"model": f"nfoxhead:{heads}"}
    if args.num_speculative_tokens:
        spec["num_speculative_tokens"] = args.num_speculative_tokens
    nfox = LLM(**engine, speculative_config=spec)
    got, t_nfox = run(nfox, prompts, params, args.batch)
    tau = acceptance_length(nfox)
    nfox.llm_engine.engine_core.shutdown()

    n = sum(len(t) for t in want)
    print(f"\nmodel {model}\nheads {heads}\n{len(prompts)} prompts, {n} tokens, greedy, "
          f"{args.batch} request(s) at a time")
    print(f"plain vLLM      {n / t_plain:8.1f} tok/s")
    print(f"NFoxHead chain  {n / t_nfox:8.1f} tok/s   speed-up {t_plain / t_nfox:.2f}x   "
          f"mean acceptance length {tau:.2f}")
    print(f"outputs identical to plain decoding: {got == want}")


if __name__ == "__main__":
    main()
