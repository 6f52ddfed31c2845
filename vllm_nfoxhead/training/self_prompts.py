"""Training prompts written by the served model itself (Magpie-style), through vLLM.

Heads generalise to what they were trained on. The template prompts
(prompts.py) all read alike, and no large human-written chat-prompt set ships
in a Python package, so the model is asked to write the *user* turn itself: the
chat template up to the start of a user message (`<|im_start|>user\\n` for
SmolLM2) is sampled at temperature ~1 and stops at the end of that turn. What
comes out is the kind of request the model expects to be asked, in varied
wording; its answers (datagen.py) are then what the heads learn from.

Kept: distinct (normalised) prompts of a few words to a few hundred characters,
in English letters, with no chat-template tokens, no benchmark phrase, and no text of a benchmark
prompt set (every `*bench*.jsonl` under data/prompts is excluded). Each row
records its attempt number, so a resumed run continues the same seeded
sequence instead of repeating it.

CLI (engine creation sits under ``__main__``: vLLM spawns its engine process):

    python -m vllm_nfoxhead.training.self_prompts --model DIR --out data/prompts/self-train.jsonl \\
        --count 5000 [--batch-size 256] [--temperature 1.0] [--seed 0] [--exclude FILE ...]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.training.chat_prompts import load_config, normalise
from vllm_nfoxhead.training.datagen import (append_records, jsonl_objects, repair_tail, require_at_least_one,
                                            run_cli)

REPO = Path(__file__).resolve().parents[2]
BENCH_SETS = REPO / "data" / "prompts"
MARKER = "\u2063NFOXHEAD-USER-TURN\u2063"   # a string no template contains
MIN_WORDS, MAX_CHARS = 4, 400
MIN_ASCII = 0.97   # share of ASCII characters: the served model answers in English
TEMPLATE_TOKEN = re.compile(r"<\|[^|>]*\|>|<s>|</s>|\[INST\]")


def user_turn_prefix(tokenizer: Any) -> str:
    """The chat template's text up to where a user message starts (system turn included)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": MARKER}], tokenize=False)
    if MARKER not in text:
        raise NFoxHeadError("the tokenizer's chat template drops the user message",
                            "use a chat model whose template renders user turns")
    return text[: text.index(MARKER)]


def clean_prompt(text: str, banned: Sequence[str]) -> str | None:
    """The prompt as it will be stored, or None when it is unusable."""
    text = text.strip()
    if len(text.split()) < MIN_WORDS or len(text) > MAX_CHARS or TEMPLATE_TOKEN.search(text):
        return None
    if sum(ch.isprintable() or ch in "\n\t" for ch in text) < len(text):
        return None
    if sum(ch.isascii() for ch in text) < MIN_ASCII * len(text):
        return None
    low = text.lower()
    return None if any(phrase in low for phrase in banned) else text


def prompt_id(text: str) -> str:
    """A stable id from the prompt's text (the same prompt gets the same id in any run)."""
    return "self-" + hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()[:12]


def prompt_texts(paths: Iterable[Path]) -> set[str]:
    """Normalised prompt texts of JSONL prompt files ({"prompt": ...} per line)."""
    texts: set[str] = set()
    for path in paths:
        texts.update(normalise(row["prompt"]) for _, row in jsonl_objects(path))
    return texts


def bench_texts(folder: Path = BENCH_SETS) -> set[str]:
    """Normalised texts of every benchmark prompt set: never used for training."""
    return prompt_texts(sorted(folder.glob("*bench*.jsonl")))


def check_exclude_files(paths: Sequence[str]) -> list[Path]:
    """--exclude files as paths; one clear error for a missing one (before any engine starts)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise NFoxHeadError(f"--exclude file {missing[0]} does not exist",
                            "pass existing prompt JSONL files (for example data/prompts/self-train.jsonl)")
    return [Path(p) for p in paths]


def read_existing(path: Path) -> tuple[set[str], int]:
    """(normalised texts already written, next attempt number) of a resumed output."""
    if not path.exists():
        return set(), 0
    repair_tail(path)
    seen, attempts = set(), 0
    for _, row in jsonl_objects(path):
        seen.add(normalise(row["prompt"]))
        attempts = max(attempts, int(row.get("attempt", -1)) + 1)
    return seen, attempts


def new_rows(texts: Iterable[tuple[int, str]], seen: set[str], excluded: set[str],
             banned: Sequence[str]) -> list[dict[str, Any]]:
    """Rows for the usable, unseen (attempt, raw text) pairs; `seen` is updated."""
    rows = []
    for attempt, raw in texts:
        text = clean_prompt(raw, banned)
        key = normalise(text) if text else ""
        if text and key not in seen and key not in excluded:
            seen.add(key)
            rows.append({"id": prompt_id(text), "category": "self", "prompt": text, "attempt": attempt})
    return rows


# --------------------------------------------------------------------------
# Engine run
# --------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Sample user turns until `--count` distinct prompts are in the output."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    out = Path(args.out)
    others = prompt_texts(check_exclude_files(args.exclude))
    seen, attempt = read_existing(out)
    bench, banned = bench_texts(), load_config().benchmark_phrases
    excluded = bench | others
    print(f"[self_prompts] {len(seen)} prompts already in {out}; {len(bench)} benchmark texts "
          f"and {len(others)} texts of --exclude files excluded", flush=True)
    if len(seen) >= args.count:
        return 0
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prefix_ids = tokenizer(user_turn_prefix(tokenizer), add_special_tokens=False)["input_ids"]
    llm, make_params = _engine(args, tokenizer, len(prefix_ids))
    out.parent.mkdir(parents=True, exist_ok=True)
    start, kept_at_start, first_attempt = time.monotonic(), len(seen), attempt
    with out.open("a", encoding="utf-8") as f, tqdm(total=args.count, initial=len(seen), desc="prompts") as bar:
        while len(seen) < args.count:
            attempts = range(attempt, attempt + args.batch_size)
            outputs = llm.generate([{"prompt_token_ids": prefix_ids}] * len(attempts),
                                   [make_params(a) for a in attempts], use_tqdm=False)
            rows = new_rows(zip(attempts, (o.outputs[0].text for o in outputs)), seen, excluded, banned)
            append_records(f, rows[: max(0, args.count - bar.n)])
            bar.update(min(len(rows), args.count - bar.n))
            attempt += args.batch_size
            bar.set_postfix(kept=f"{(len(seen) - kept_at_start) / (attempt or 1):.0%}")
        written = bar.n - kept_at_start
    print(f"[self_prompts] {written} new prompts from {attempt - first_attempt} attempts in {time.monotonic() - start:.0f} s",
          flush=True)
    return 0


def _engine(args: argparse.Namespace, tokenizer: Any, prefix_len: int):
    """The engine and a function giving each attempt its own seeded sampling parameters.

    The token budget holds every prefix of a batch at once: vLLM rewinds a seeded
    request's generator after a partial prefill, which its CPU build cannot do
    ("CPU Generator does not use offset"), so no prefill may be split.
    """
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, seed=args.seed, max_model_len=1024, dtype=args.dtype,
              gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.batch_size,
              max_num_batched_tokens=max(2048, args.batch_size * (prefix_len + 1)))
    stop = [t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(t, int) and t >= 0]

    def make_params(attempt: int) -> Any:
        return SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                              stop_token_ids=stop, seed=args.seed * 1_000_003 + attempt)

    return llm, make_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.training.self_prompts",
        description="Have the base model write user prompts (Magpie-style) for self-distillation. Resumable.")
    p.add_argument("--model", required=True, help="base chat model directory (its chat template is used)")
    p.add_argument("--out", required=True, help="output JSONL {id, category, prompt, attempt}; resumed if it exists")
    p.add_argument("--count", type=int, required=True, help="distinct prompts wanted in the output")
    p.add_argument("--batch-size", type=int, default=256, help="user turns sampled per engine call (default 256)")
    p.add_argument("--max-tokens", type=int, default=96, help="longest user turn in tokens (default 96)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--dtype", default="auto", help="engine dtype (default auto)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                   help="share of memory for the KV cache (the CPU build sizes it from this; default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled sequence (default 0)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                   help="prompt JSONL files whose prompts are not kept again (e.g. an earlier set, "
                        "when writing a second one with another --seed)")
    args = p.parse_args(argv)
    require_at_least_one(p, args, ("count", "batch_size", "max_tokens"))
    return args


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
