"""Offline generation with NFoxHead speculation vs plain vLLM, side by side.

    python examples/offline_demo.py                  # SmolLM2-135M-Instruct + the heads shipped in heads/
    python examples/offline_demo.py --dtype float32  # exact arithmetic: answers must be identical
    python examples/offline_demo.py --tiny           # the tiny random test model (plumbing only)
    python examples/offline_demo.py --model BASE --heads HEADS_DIR

Answers the same held-out chat prompts greedily, one request at a time (the
latency case speculation is for), with NFoxHead's chain, NFoxHead's tree and
plain vLLM (each engine started once); prints the machine and dtype, tokens/s,
the speed-up over plain vLLM, vLLM's mean acceptance length, and how many
answers are identical to plain decoding.

Greedy speculation reproduces plain decoding exactly in float32. In bfloat16 a
verification step scores several tokens at once, so its sums round differently
from one-token decoding, and where the top two candidates are nearly tied the
other one can win: the answers then differ from that token on. The demo finds
the first differing token of each such answer and prints how far apart plain
vLLM's top two candidates were there. In float32 any difference is a bug, and
the demo exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_nfoxhead.core.dtype_choice import AUTO_HELP, DTYPE_CHOICES, describe_cpu, explain_dtype

REPO = Path(__file__).resolve().parents[1]
SHIPPED_HEADS = REPO / "heads" / "smollm2-nfoxhead"
CACHE = Path(os.environ.get("VLLM_NFOXHEAD_CACHE", "~/.cache/vllm-nfoxhead")).expanduser()
NEAR_TIE = 0.5  # logprob gap (nats) between plain's token and the other one that bf16 rounding can flip
TOP_K = 5  # plain vLLM's candidates looked at where an answer differs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="base model directory (default: SmolLM2-135M-Instruct, prepared once)")
    p.add_argument("--heads", help=f"NFoxHead heads directory for --model (default: {SHIPPED_HEADS})")
    p.add_argument("--tiny", action="store_true", help="use the tiny random test model and its fitted heads")
    p.add_argument("--tree", default=None,
                   help="tree preset or JSON rank paths (default: the heads' own tree, else mc_sim_16)")
    p.add_argument("--no-chain", action="store_true",
                   help="leave out the NFoxHead chain engine (one engine start-up less, 1-2 min on a small CPU)")
    p.add_argument("--num-prompts", type=int, default=6, help="held-out prompts to answer (default 6)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per answer at most (default 128)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help=f"engine dtype (float32 rules out rounding differences); {AUTO_HELP}")
    p.add_argument("--kv-cache-gib", type=float, default=0.5, help="KV cache size for the CPU backend (default 0.5)")
    p.add_argument("--verbose", action="store_true", help="show vLLM's INFO logs (default: warnings only)")
    return p.parse_args(argv)


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


def describe_machine() -> tuple[str, str]:
    """(device for dtype_choice, one line on the hardware vLLM runs on)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu", f"CPU {describe_cpu()}"
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else current_platform.device_name
    return "cuda", f"GPU {name} (host CPU {describe_cpu()})"


@dataclass
class Run:
    answers: list[list[int]]
    seconds: float  # answering all prompts, one at a time
    startup: float  # starting the engine (torch.compile tracing, mostly)
    tau: float | None  # vLLM's mean acceptance length; None for plain decoding

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.answers)) / self.seconds


def generate(llm: Any, prompts: list[Any], params: Any) -> list[Any]:
    chat = not isinstance(prompts[0], str)
    return llm.chat(prompts, params, use_tqdm=False) if chat else llm.generate(prompts, params, use_tqdm=False)


def answer_one_by_one(llm: Any, prompts: list[Any], params: Any) -> tuple[list[list[int]], float]:
    """Token ids of each answer, and the seconds for all of them (batch 1)."""
    from vllm import SamplingParams

    generate(llm, prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    answers, start = [], time.perf_counter()
    for prompt in prompts:
        answers.append(list(generate(llm, [prompt], params)[0].outputs[0].token_ids))
    return answers, time.perf_counter() - start


def acceptance_length(llm: Any) -> float | None:
    values = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    drafts = values.get("vllm:spec_decode_num_drafts", 0)
    return 1 + values.get("vllm:spec_decode_num_accepted_tokens", 0) / drafts if drafts else None


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where a and b differ (or where the shorter one ends); None if equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class Divergence:
    """Where a speculative answer leaves plain vLLM's, and plain's margin over its token there."""

    run: str
    prompt: int
    token: int  # index of the first differing token
    gap: float | None  # plain's logprob of its token minus of the speculative one (None: unknown)
    gap_at_least: bool = False  # the speculative token was not in plain's top TOP_K: gap is a lower bound


def margins(llm: Any, prompts: list[Any], want: list[list[int]], runs: dict[str, Run]) -> list[Divergence]:
    """For each speculative answer that differs from plain's, plain's top-K logprobs at the first
    differing token (asked again after the timing, so the timed run computed no logprobs)."""
    from vllm import SamplingParams

    found = []
    for name, run in runs.items():
        for i, (got, ref) in enumerate(zip(run.answers, want)):
            k = first_difference(got, ref)
            if k is not None:
                found.append(Divergence(name, i, k, None))
    for d in found:
        got, ref = runs[d.run].answers[d.prompt], want[d.prompt]
        if d.token >= len(got) or d.token >= len(ref):
            continue  # one answer stopped there (end of text): no pair of tokens to compare
        params = SamplingParams(temperature=0, max_tokens=d.token + 1, logprobs=TOP_K, ignore_eos=True)
        out = generate(llm, [prompts[d.prompt]], params)[0].outputs[0]
        if list(out.token_ids) != ref[: d.token + 1]:
            continue  # plain did not repeat its own answer this time (bf16 again): margin unknown
        top = out.logprobs[d.token]
        mine, theirs = ref[d.token], got[d.token]
        if theirs in top:
            d.gap = top[mine].logprob - top[theirs].logprob
        else:
            d.gap, d.gap_at_least = top[mine].logprob - min(lp.logprob for lp in top.values()), True
    return found


def format_gap(d: Divergence) -> str:
    return "unknown" if d.gap is None else (">" if d.gap_at_least else "") + f"{d.gap:.3f}"


def rerun_command(dtype: str) -> str:
    """This very command line with --dtype DTYPE, as the user would type it from here."""
    def short(path: str) -> str:
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel

    argv, keep, skip = sys.argv[1:], [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--dtype":
            skip = True
        elif not a.startswith("--dtype="):
            keep.append(a)
    return shlex.join([short(sys.executable), short(sys.argv[0]), *keep, "--dtype", dtype])


def verdict(dtype: str, n: int, runs: dict[str, Run], divergences: list[Divergence]) -> tuple[str, bool]:
    """(one line on differing answers, whether it is a problem); ('', False) when all are identical."""
    if not divergences:
        return "", False
    counts = ", ".join(f"{name} {sum(d.run == name for d in divergences)}/{n}" for name in runs)
    where = "; ".join(f"{d.run} #{d.prompt + 1} at token {d.token} (gap {format_gap(d)})" for d in divergences)
    if dtype != "float32":
        near = all(d.gap is not None and not d.gap_at_least and d.gap <= NEAR_TIE for d in divergences)
        if near:
            return (f"Differing answers ({counts}) each start at a token where plain vLLM's top two candidates "
                    f"were within {max(d.gap for d in divergences):.3f} logprob: {dtype} rounding of near-tied "
                    f"logits (a verification step scores several tokens at once and rounds differently), not "
                    f"a speculation error; exact equality: {rerun_command('float32')}"), False
        return (f"Differing answers ({counts}; first differing token and plain's logprob gap to the "
                f"speculative token: {where}): likely {dtype} rounding, but not every gap is a near tie "
                f"(<= {NEAR_TIE}), so check exact equality: {rerun_command('float32')}"), False
    return (f"PROBLEM: in float32 speculation must reproduce plain vLLM's greedy answers, but answers differ "
            f"({counts}; {where}). This is a bug: please report it with this output."), True


def main() -> int:
    args = parse_args()
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM, SamplingParams

    from vllm_nfoxhead.core.format import validate_heads_dir

    t_all = time.perf_counter()
    device, machine = describe_machine()
    dtype_line = explain_dtype(args.dtype, device)
    dtype = dtype_line.split()[0]
    model, heads, prompts = setup(args)
    tree = args.tree or validate_heads_dir(heads).tree or "mc_sim_16"
    header = [
        f"model    {model}",
        f"heads    {heads} (tree {tree})",
        f"machine  {machine}",
        f"dtype    {dtype_line}",
    ]
    print("\n".join(header), flush=True)

    engine = dict(model=str(model), dtype=dtype, max_model_len=1024, seed=0,
                  kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), disable_log_stats=False)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=args.tiny)
    specs = {"NFoxHead chain": {"model": f"nfoxhead:{heads}", "tree": "chain"},
             "NFoxHead tree": {"model": f"nfoxhead:{heads}", "tree": tree}}
    if args.no_chain:
        del specs["NFoxHead chain"]
    # Plain vLLM last: its engine then also looks up its margins where the answers differ.
    runs: dict[str, Run] = {}
    for name, spec in [*specs.items(), ("plain vLLM", None)]:
        print(f"[{time.perf_counter() - t_all:5.0f} s] {name}: starting the engine "
              "(torch.compile tracing: 1-2 min on a small CPU)...", flush=True)
        t0 = time.perf_counter()
        llm = LLM(**engine, speculative_config=spec)
        startup = time.perf_counter() - t0
        try:
            print(f"[{time.perf_counter() - t_all:5.0f} s] {name}: answering {len(prompts)} prompts, one at a "
                  "time...", flush=True)
            answers, seconds = answer_one_by_one(llm, prompts, params)
            runs[name] = Run(answers, seconds, startup, acceptance_length(llm) if spec else None)
            if spec is None:
                want = answers
                divergences = margins(llm, prompts, want, {k: runs[k] for k in specs})
        finally:
            llm.llm_engine.engine_core.shutdown()

    plain = runs["plain vLLM"]
    n = sum(map(len, want))
    line, problem = verdict(dtype, len(prompts), {k: runs[k] for k in specs}, divergences)
    startups = sum(r.startup for r in runs.values())
    total = time.perf_counter() - t_all
    print("\n" + "\n".join(header))
    print(f"{len(prompts)} prompts, {n} tokens, greedy, {dtype}, one request at a time")
    for name in ["plain vLLM", *specs]:
        run = runs[name]
        row = f"{name:<16}{run.tokens_per_s:8.1f} tok/s"
        if name != "plain vLLM":
            same = sum(a == b for a, b in zip(run.answers, want))
            tau = "n/a" if run.tau is None else f"{run.tau:.2f}"
            row += (f"   speed-up {run.tokens_per_s / plain.tokens_per_s:.2f}x"
                    f"   mean acceptance length {tau}   identical answers {same}/{len(want)}")
        print(row)
    if line:
        print(line)
    print(f"took {total / 60:.1f} min: {len(runs)} engine start-ups {startups:.0f} s, "
          f"answering {sum(r.seconds for r in runs.values()):.0f} s")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
