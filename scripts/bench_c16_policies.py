"""Plain vLLM against the load tuner and a fixed "no drafts at 16 requests" policy, at 16 requests.

    python scripts/bench_c16_policies.py --heads heads/smollm2-nfoxhead --out c16.json

A diagnostic for the load policy (docs/benchmarks.md, 2026-12-05), not a product benchmark:
the bench tool's interleaved runner alternates three engines over the 80 chat prompts:
- plain vLLM;
- `static`: the cost model alone, given the AVX512-BF16 CPU's cost table up to 17 scored
  tokens and a prohibitive price from 25 on, so it drafts only below about 12 requests
  (what a perfect tuner would settle on at 16 requests on that CPU);
- `auto`: the plugin's default (tuner on, prompt lookup 8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vllm_nfoxhead.core.load_policy import CPU_DEFAULT_COST

PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts" / "chat-bench.jsonl"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", required=True, help="NFoxHead heads directory for SmolLM2-135M-Instruct")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the result rows")
    p.add_argument("--num-prompts", type=int, default=80, help="first N chat benchmark prompts (default 80)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from vllm import SamplingParams

    from vllm_nfoxhead.models.smollm2 import prepare_smollm2
    from vllm_nfoxhead.tools.bench.__main__ import load_prompts, tokenize
    from vllm_nfoxhead.tools.bench.methods import Method
    from vllm_nfoxhead.tools.bench.report import rows, table
    from vllm_nfoxhead.tools.bench.runner import run_interleaved

    model = prepare_smollm2()
    heads = f"nfoxhead:{args.heads}"
    no_drafts_at_16 = {str(n): (c if n <= 16 else 1000.0) for n, c in CPU_DEFAULT_COST.items()}
    methods = [Method("plain", None),
               Method("static", {"model": heads, "tree": "chain", "load_policy": "static",
                                 "cost_table": no_drafts_at_16, "lookup": 0}),
               Method("auto", {"model": heads, "tree": "chain", "load_policy": "auto", "lookup": 8})]
    engine = dict(model=str(model), dtype="auto", seed=0, max_model_len=1024, kv_cache_memory_bytes=2**30,
                  disable_log_stats=False)
    prompts = tokenize(model, load_prompts(PROMPTS, args.num_prompts), True)
    report = rows(run_interleaved(methods, engine, prompts, SamplingParams(temperature=0, max_tokens=128), [16]),
                  methods)
    print(table(report))
    args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
