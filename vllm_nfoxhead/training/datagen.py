"""Self-distillation data: the base model answers every prompt through vLLM.

Heads are trained on the base model's *own* answers (Medusa's self-distillation),
so what they learn to predict is what the model will actually generate when
served. Each prompt goes through the tokenizer's chat template; the record keeps
the exact prompt and response token ids, so training needs no re-tokenisation.

Resumable: records are appended (and flushed) per batch; on restart, ids already
in the output are skipped. A crash while writing can leave a partial last line;
it is detected and cut off before appending, so the file stays valid JSONL with
no duplicates and nothing lost.

CLI (engine creation sits under ``__main__``: vLLM spawns its engine process):

    python -m vllm_nfoxhead.training.datagen --model DIR --prompts data/prompts/train.jsonl \
        --output data/distill.jsonl [--max-tokens 256] [--temperature 0] \
        [--batch-size 64] [--limit N] [--gpu-memory-utilization 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from vllm_nfoxhead.core.errors import NFoxHeadError

PROMPT_FIELDS = ("id", "prompt")
RECORD_FIELDS = ("id", "prompt", "response", "prompt_token_ids", "response_token_ids")


# --------------------------------------------------------------------------
# JSONL input and resume logic (pure functions, no engine)
# --------------------------------------------------------------------------
def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSONL file, in order; a one-line
    NFoxHeadError at the first line that is not a JSON object."""
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            yield lineno, _parse_line(line, path, lineno)


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    """One JSONL line as a JSON object, or a one-line NFoxHeadError naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise NFoxHeadError(
            f"{path} line {lineno} is not valid JSON ({exc.msg})",
            "write one JSON object per line",
        ) from exc
    if not isinstance(row, dict):
        raise NFoxHeadError(f"{path} line {lineno} is not a JSON object", "write one JSON object per line")
    return row


def read_prompts(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a prompt file: each a JSON object with a unique string `id` and a `prompt`."""
    path = Path(path)
    if not path.is_file():
        raise NFoxHeadError(f"prompt file {path} does not exist", "pass a JSONL file, e.g. data/prompts/train.jsonl")
    rows, seen = [], {}
    for lineno, row in jsonl_objects(path):
        missing = [k for k in PROMPT_FIELDS if not isinstance(row.get(k), str) or not row[k]]
        if missing:
            raise NFoxHeadError(
                f"{path} line {lineno} lacks a non-empty string {', '.join(missing)}",
                'give every line {"id": "...", "prompt": "..."}',
            )
        if row["id"] in seen:
            raise NFoxHeadError(
                f"{path} line {lineno} repeats id {row['id']!r} (first on line {seen[row['id']]})",
                "give every prompt a unique id",
            )
        seen[row["id"]] = lineno
        rows.append(row)
    if not rows:
        raise NFoxHeadError(f"prompt file {path} is empty", "add prompts, one JSON object per line")
    return rows


def repair_tail(path: Path) -> int:
    """Cut a partial last line (crash while appending) off `path`; return bytes removed.

    Only the last line may be partial: it lacks the final newline or is not valid
    JSON. Damage anywhere else is not a crash artefact and is reported instead.
    """
    data = path.read_bytes()
    if not data:
        return 0
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1  # 0 if there is no complete line at all
    else:
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            keep = start
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    return len(data) - keep


def read_done_ids(path: str | os.PathLike[str]) -> set[str]:
    """Ids already answered in an output file (after repairing a partial last line)."""
    path = Path(path)
    if not path.exists():
        return set()
    removed = repair_tail(path)
    if removed:
        print(f"[datagen] dropped a partial last line ({removed} bytes) from {path}", flush=True)
    done: set[str] = set()
    for lineno, row in jsonl_objects(path):
        if not isinstance(row.get("id"), str) or not all(k in row for k in RECORD_FIELDS):
            raise NFoxHeadError(
                f"{path} line {lineno} is not a datagen record (needs {', '.join(RECORD_FIELDS)})",
                "choose a new --output file",
            )
        if row["id"] in done:
            raise NFoxHeadError(
                f"{path} line {lineno} repeats id {row['id']!r}",
                "remove the duplicate line or choose a new --output file",
            )
        done.add(row["id"])
    return done


def pending_prompts(
    rows: Sequence[dict[str, Any]], done: set[str], limit: int | None = None
) -> list[dict[str, Any]]:
    """Rows still to answer among the first `limit` rows (all rows if None)."""
    return [r for r in rows[:limit] if r["id"] not in done]


def batches(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def make_record(
    row: dict[str, Any], prompt_ids: list[int], response: str, response_ids: Iterable[int],
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": row["id"], "prompt": row["prompt"], "response": response,
        "prompt_token_ids": list(prompt_ids), "response_token_ids": list(response_ids),
        "finish_reason": finish_reason,
    }


def append_records(f: TextIO, records: Iterable[dict[str, Any]]) -> None:
    """Append whole lines and push them to disk, so a crash loses at most one batch."""
    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a one-turn chat with the generation prompt (the model's own template)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------
# Engine run
# --------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Answer every pending prompt with vLLM and append the records."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    rows = read_prompts(args.prompts)
    out = Path(args.output)
    done = read_done_ids(out)
    todo = pending_prompts(rows, done, args.limit)
    print(f"[datagen] {len(rows)} prompts, {len(done)} already in {out}, {len(todo)} to answer", flush=True)
    if not todo:
        return 0
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    llm, params = _engine(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    start, tokens = time.monotonic(), 0
    with out.open("a", encoding="utf-8") as f, tqdm(total=len(todo), desc="answers", unit="prompt") as bar:
        for batch in batches(todo, args.batch_size):
            records = _answer(llm, params, tokenizer, batch)
            append_records(f, records)
            tokens += sum(len(r["response_token_ids"]) for r in records)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / (time.monotonic() - start):.0f}")
    secs = time.monotonic() - start
    print(f"[datagen] {len(todo)} answers, {tokens} tokens in {secs:.0f} s ({tokens / secs:.1f} tokens/s)", flush=True)
    return 0


def _engine(args: argparse.Namespace):
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.model, seed=args.seed, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.batch_size,
    )
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    return llm, params


def _answer(llm: Any, params: Any, tokenizer: Any, batch: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [chat_prompt_ids(tokenizer, r["prompt"]) for r in batch]
    outputs = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
    return [
        make_record(r, x, o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason)
        for r, x, o in zip(batch, ids, outputs)
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.training.datagen",
        description="Answer prompts with the base model through vLLM (self-distillation data). Resumable.",
    )
    parser.add_argument("--model", required=True, help="base model directory (e.g. from python -m vllm_nfoxhead.models.smollm2)")
    parser.add_argument("--prompts", required=True, help="prompt JSONL: {id, prompt[, category]} per line")
    parser.add_argument("--output", required=True, help="output JSONL; appended to and resumed if it exists")
    parser.add_argument("--max-tokens", type=int, default=256, help="max answer length in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per engine call and per write (default 64)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N prompts of the file")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                        help="share of memory for the KV cache (the CPU build sizes it from this; default 0.3)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="engine context length (default 2048)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    require_at_least_one(parser, args, ("max_tokens", "batch_size", "limit"))
    return args


def require_at_least_one(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """argparse's one-line error for any of these (set) integer flags below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def run_cli(run_fn: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run a command; bad input ends it with its one NFoxHead line. Exit status: what
    `run_fn` returns when it is an int, else 0."""
    try:
        result = run_fn(args)
    except NFoxHeadError as exc:
        raise SystemExit(f"error: {exc}") from None
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
