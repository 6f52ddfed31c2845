"""Builder of the chat prompt sets: human-written, user-style chat messages (not our templates).

The template prompt sets (``prompts.py``) are written in one careful style that real
users do not share. This module turns a human-written chat corpus into a second
benchmark set, ``data/prompts/chat-bench.jsonl``, and a disjoint remainder for
future training, ``data/prompts/chat-train.jsonl``.

The shipped source is the English part of the ``chatterbot-corpus`` package
(BSD-3-Clause; see data/prompts/README.md for version, sha256 and attribution):
YAML files of short dialogs whose first turns are terse messages people type to a
chat bot ("who wrote the hobbit", "can you write a Dockerfile?", "My computer won't
turn on."). The first turn of each dialog is a candidate prompt; the YAML file's
name is its source category. A JSONL file whose lines hold ``prompt`` (or
``instruction``, with an optional short ``context`` appended) and ``category`` is
read as well.

Everything the selection depends on besides the seed (category map, word lists,
length bounds) lives in ``chat_prompts.json`` next to this module, so a different
corpus needs a different JSON file (``--config``), not new code. A candidate is kept
when it is at least ``min_words`` words and at most ``max_chars`` characters long,
reads as a question, a request or a reported problem (it ends with "?", or starts
with a question word, a request word or a problem prefix), does not end on a
dangling word ("Does that make you"), and contains no blocked word (browsing,
current events, images, abuse) and no opening of a public benchmark question
(``benchmark_phrases``: MT-Bench, Spec-Bench, AlpacaEval, Arena-Hard).
Near-duplicates (same words up to case, punctuation and articles) are kept once,
the first in file order.

The bench takes ``count / number of categories`` prompts from every category, drawn
with a seeded RNG from the candidates sorted by id; the train split is everything
else. Ids are ``chat-<category>-<hash of the normalised text>``, so they do not
depend on the seed or the count. A train output never holds a bench id or bench
text: the train split is computed as the complement of the bench partition, any
``--bench-file`` (by default the ``chat-bench.jsonl`` beside ``--out``, when it
exists) is excluded too, and the result is checked before anything is written.

CLI:  python -m vllm_nfoxhead.training.chat_prompts --source PATH_OR_WHEEL
          --out data/prompts/chat-bench.jsonl [--split bench|train] [--count 80] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vllm_nfoxhead.core.errors import NFoxHeadError

CONFIG = Path(__file__).with_name("chat_prompts.json")
SPLITS = ("bench", "train")
SOURCE_FIX = ("pass --source a chatterbot-corpus wheel, sdist or data directory "
              "(pip download --no-deps chatterbot-corpus==1.3.3), or a JSONL file of "
              "{\"prompt\": ..., \"category\": ...} lines")
_ARTICLES = frozenset({"a", "an", "the"})


@dataclass(frozen=True)
class ChatPrompt:
    """One output line: ``{"id": ..., "category": ..., "prompt": ...}``."""

    id: str
    category: str
    prompt: str


@dataclass(frozen=True)
class Config:
    """The selection rules of ``chat_prompts.json`` (see its keys)."""

    language: str
    categories: dict[str, str]
    category_order: tuple[str, ...]
    min_words: int
    max_chars: int
    question_words: frozenset[str]
    request_words: frozenset[str]
    problem_prefixes: tuple[str, ...]
    dangling_end_words: frozenset[str]
    blocked: re.Pattern[str]
    benchmark_phrases: tuple[str, ...]


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------
def load_config(path: Path = CONFIG) -> Config:
    """Read and check a selection-rules JSON file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NFoxHeadError(f"cannot read chat prompt config {path}: {exc}",
                            "pass --config a JSON file like vllm_nfoxhead/training/chat_prompts.json") from None
    keys = {"language", "categories", "category_order", "min_words", "max_chars", "question_words",
            "request_words", "problem_prefixes", "dangling_end_words", "blocked_words", "benchmark_phrases"}
    given = {k for k in raw if not k.startswith("_")}
    if given != keys:
        raise NFoxHeadError(f"chat prompt config {path} has keys {sorted(given)}, expected {sorted(keys)}",
                            "add the missing keys and remove the unknown ones")
    order = tuple(raw["category_order"])
    if set(order) != set(raw["categories"].values()) or len(order) != len(set(order)):
        raise NFoxHeadError(f"chat prompt config {path}: category_order {list(order)} must list every "
                            "output category of 'categories' once", "fix category_order")
    words = sorted((w.lower() for w in raw["blocked_words"]), key=len, reverse=True)
    blocked = re.compile(r"(?<![a-z0-9])(?:" + "|".join(map(re.escape, words)) + r")(?![a-z0-9])")
    return Config(
        language=str(raw["language"]),
        categories={str(k): str(v) for k, v in raw["categories"].items()},
        category_order=order,
        min_words=int(raw["min_words"]),
        max_chars=int(raw["max_chars"]),
        question_words=frozenset(w.lower() for w in raw["question_words"]),
        request_words=frozenset(w.lower() for w in raw["request_words"]),
        problem_prefixes=tuple(p.lower() for p in raw["problem_prefixes"]),
        dangling_end_words=frozenset(w.lower() for w in raw["dangling_end_words"]),
        blocked=blocked,
        benchmark_phrases=tuple(p.lower() for p in raw["benchmark_phrases"]),
    )


# --------------------------------------------------------------------------
# Reading a source
# --------------------------------------------------------------------------
def _parse_yaml(text: str, name: str) -> list[str]:
    """First turns of the dialogs of one chatterbot-corpus YAML file."""
    try:
        import yaml
    except ImportError:
        raise NFoxHeadError("reading a chatterbot-corpus YAML source needs PyYAML",
                            "pip install 'vllm-nfoxhead[chat-prompts]'") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NFoxHeadError(f"{name} is not valid YAML ({str(exc).splitlines()[0]})", SOURCE_FIX) from None
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        raise NFoxHeadError(f"{name} has no 'conversations' list", SOURCE_FIX)
    firsts = []
    for dialog in data["conversations"]:
        if isinstance(dialog, list) and dialog and isinstance(dialog[0], (str, int, float)):
            firsts.append(str(dialog[0]))
    return firsts


def _parse_jsonl(text: str, name: str) -> list[tuple[str, str]]:
    """(source category, prompt) of each line of a JSONL source."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise NFoxHeadError(f"{name} line {n} is not JSON", SOURCE_FIX) from None
        text_ = row.get("prompt", row.get("instruction")) if isinstance(row, dict) else None
        if not isinstance(text_, str) or not isinstance(row.get("category"), str):
            raise NFoxHeadError(f"{name} line {n} lacks a string 'prompt' (or 'instruction') and 'category'",
                                SOURCE_FIX)
        context = row.get("context") or ""
        rows.append((row["category"], f"{text_}\n\n{context}" if context else text_))
    return rows


def _yaml_members(names: Iterable[str], language: str) -> list[str]:
    """Archive members that are the English (or other language) chatterbot-corpus YAML files."""
    pattern = re.compile(rf"(^|/)chatterbot_corpus/data/{re.escape(language)}/[^/]+\.ya?ml$")
    return sorted(n for n in names if pattern.search(n))


def read_source(source: Path, language: str = "english") -> list[tuple[str, str]]:
    """(source category, candidate prompt) pairs of a source, in a fixed order.

    ``source`` is a chatterbot-corpus wheel (.whl) or sdist (.tar.gz), a directory
    (the installed ``chatterbot_corpus`` package, its ``data/<language>`` folder, or
    any folder of YAML files), one YAML file, or a JSONL file.
    """
    source = Path(source)
    if not source.exists():
        raise NFoxHeadError(f"chat prompt source {source} does not exist", SOURCE_FIX)
    files: list[tuple[str, str]] = []  # (name, text)
    try:
        if source.is_dir():
            lang_dir = next((d for d in (source / "data" / language,
                                         source / "chatterbot_corpus" / "data" / language, source)
                             if d.is_dir() and any(d.glob("*.yml"))), None)
            paths = sorted(lang_dir.glob("*.y*ml")) if lang_dir else []
            files = [(str(p), p.read_text(encoding="utf-8")) for p in paths]
        elif source.name.endswith(".whl") or zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as zf:
                files = [(m, zf.read(m).decode("utf-8")) for m in _yaml_members(zf.namelist(), language)]
        elif source.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(source) as tf:
                for name in _yaml_members((m.name for m in tf.getmembers() if m.isfile()), language):
                    member = tf.extractfile(name)
                    if member is not None:
                        files.append((name, member.read().decode("utf-8")))
        elif source.suffix in (".yml", ".yaml"):
            files = [(str(source), source.read_text(encoding="utf-8"))]
        elif source.suffix in (".jsonl", ".json"):
            return _parse_jsonl(source.read_text(encoding="utf-8"), str(source))
        else:
            raise NFoxHeadError(f"chat prompt source {source} is neither a wheel, an sdist, a directory, "
                                "a YAML file nor a JSONL file", SOURCE_FIX)
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise NFoxHeadError(f"cannot read chat prompt source {source}: {exc}", SOURCE_FIX) from None
    if not files:
        raise NFoxHeadError(f"chat prompt source {source} holds no chatterbot_corpus/data/{language}/*.yml files",
                            SOURCE_FIX)
    pairs = []
    for name, text in files:
        category = Path(name).name.rsplit(".", 1)[0]
        pairs.extend((category, p) for p in _parse_yaml(text, name))
    return pairs


def default_source() -> Path:
    """The installed chatterbot-corpus package (the ``chat-prompts`` extra), if any."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise NFoxHeadError("no --source given and chatterbot-corpus is not installed",
                            "pip install 'vllm-nfoxhead[chat-prompts]', or " + SOURCE_FIX)
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------
# Filtering and splitting
# --------------------------------------------------------------------------
def clean(text: str) -> str:
    """Whitespace runs made single spaces, paragraph breaks (blank lines) kept."""
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip())


def normalise(text: str) -> str:
    """Comparison key: lower-case words without punctuation or articles."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("'", "").replace("\u2019", ""))
    return " ".join(w for w in words if w not in _ARTICLES)


def keep(text: str, cfg: Config) -> bool:
    """Whether one candidate is a self-contained question, request or problem report."""
    low = text.lower()
    words = re.findall(r"[a-z0-9']+", low.replace("\u2019", "'"))
    if len(words) < cfg.min_words or len(text) > cfg.max_chars:
        return False
    if words[-1] in cfg.dangling_end_words:
        return False
    if not (text.rstrip().endswith("?") or words[0] in cfg.question_words or words[0] in cfg.request_words
            or low.startswith(cfg.problem_prefixes)):
        return False
    if cfg.blocked.search(low):
        return False
    return not any(phrase in low for phrase in cfg.benchmark_phrases)


def candidates(pairs: Sequence[tuple[str, str]], cfg: Config) -> list[ChatPrompt]:
    """Kept, de-duplicated prompts of mapped categories, with their ids (first occurrence wins)."""
    out: list[ChatPrompt] = []
    seen: dict[str, str] = {}
    for source_category, raw in pairs:
        category = cfg.categories.get(source_category)
        text = clean(raw)
        if category is None or not keep(text, cfg):
            continue
        key = normalise(text)
        if not key or key in seen:
            continue
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        pid = f"chat-{category}-{digest}"
        if pid in seen.values():
            raise NFoxHeadError(f"two different prompts hash to id {pid}", "use a longer id digest")
        seen[key] = pid
        out.append(ChatPrompt(pid, category, text))
    return out


def partition(pool: Sequence[ChatPrompt], count: int, seed: int,
              order: Sequence[str]) -> tuple[list[ChatPrompt], list[ChatPrompt]]:
    """(bench, train): ``count`` prompts spread evenly over the categories, and the rest.

    The bench interleaves the categories (first prompt of each, then the second...),
    so that its first N lines cover them all; the train split is sorted by category
    order, then id.
    """
    cats = [c for c in order if any(p.category == c for p in pool)]
    if not cats:
        raise NFoxHeadError("the chat prompt source gave no prompt of a mapped category",
                            "check --source and the 'categories' map of the config")
    if count < len(cats) or count % len(cats):
        raise NFoxHeadError(f"--count {count} does not split evenly over the {len(cats)} categories {cats}",
                            f"use a multiple of {len(cats)}")
    per = count // len(cats)
    chosen: dict[str, list[ChatPrompt]] = {}
    for cat in cats:
        members = sorted((p for p in pool if p.category == cat), key=lambda p: p.id)
        if len(members) < per:
            raise NFoxHeadError(f"category {cat} has {len(members)} usable prompts, fewer than the {per} "
                                "a balanced bench needs", "lower --count")
        chosen[cat] = random.Random(f"chat-bench:{seed}:{cat}").sample(members, per)
    bench = [chosen[cat][i] for i in range(per) for cat in cats]
    bench_ids = {p.id for p in bench}
    rank = {c: i for i, c in enumerate(order)}
    train = sorted((p for p in pool if p.id not in bench_ids), key=lambda p: (rank[p.category], p.id))
    return bench, train


def read_prompt_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``{"id", "category", "prompt"}`` JSONL file."""
    try:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise NFoxHeadError(f"cannot read prompt file {path}: {exc}",
                            "pass --bench-file a chat-bench.jsonl written by this command") from None


def check_disjoint(bench: Sequence[ChatPrompt | dict[str, Any]], train: Sequence[ChatPrompt]) -> None:
    """Raise NFoxHeadError if a train prompt shares an id or (normalised) text with the bench."""
    def fields(p: ChatPrompt | dict[str, Any]) -> tuple[str, str]:
        return (p.id, p.prompt) if isinstance(p, ChatPrompt) else (str(p.get("id")), str(p.get("prompt")))

    ids = {fields(p)[0] for p in bench}
    texts = {normalise(fields(p)[1]) for p in bench}
    leaked = [p.id for p in train if p.id in ids or normalise(p.prompt) in texts]
    if leaked:
        raise NFoxHeadError(f"{len(leaked)} train prompt(s) are bench prompts, e.g. {leaked[0]}",
                            "never train on the bench: rebuild the train split from the same source and config")


def build(source: Path, split: str = "bench", count: int = 80, seed: int = 0, config: Path = CONFIG,
          bench_file: Path | None = None) -> list[ChatPrompt]:
    """The prompts of one split (``bench`` or ``train``) of ``source``.

    For ``train``, the prompts of ``bench_file`` (ids and texts) are excluded as well
    as the bench partition itself, and the result is checked to share nothing with
    either.
    """
    if split not in SPLITS:
        raise NFoxHeadError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    cfg = load_config(config)
    pool = candidates(read_source(source, cfg.language), cfg)
    bench, train = partition(pool, count, seed, cfg.category_order)
    check_disjoint(bench, train)
    if split == "bench":
        return bench
    if bench_file is not None:
        shipped = read_prompt_file(bench_file)
        ids = {str(r.get("id")) for r in shipped}
        texts = {normalise(str(r.get("prompt"))) for r in shipped}
        train = [p for p in train if p.id not in ids and normalise(p.prompt) not in texts]
        check_disjoint(shipped, train)
    return train


def write(rows: Sequence[ChatPrompt], out: Path) -> None:
    """Write ``rows`` as JSONL (one ``{"id", "category", "prompt"}`` object per line)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (of nothing for a directory)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "(directory)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.training.chat_prompts",
        description="Write a balanced bench (or the disjoint train remainder) of human-written chat "
                    "prompts from the chatterbot-corpus package or a JSONL file (deterministic).",
    )
    parser.add_argument("--source", default=None,
                        help="chatterbot-corpus wheel (.whl), sdist (.tar.gz) or data directory, a YAML file, "
                             "or a JSONL file of {\"prompt\", \"category\"} lines (default: the installed "
                             "chatterbot-corpus package)")
    parser.add_argument("--out", default="data/prompts/chat-bench.jsonl", help="output JSONL file")
    parser.add_argument("--split", choices=SPLITS, default="bench",
                        help="bench: the balanced sample; train: every other usable prompt (never a bench one)")
    parser.add_argument("--count", type=int, default=80,
                        help="bench size, a multiple of the number of categories (the train split excludes "
                             "the bench of this size)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the shipped files use 0)")
    parser.add_argument("--config", default=str(CONFIG),
                        help="selection rules JSON: category map, word lists, length bounds")
    parser.add_argument("--bench-file", default=None,
                        help="with --split train: a bench file whose ids and prompts are excluded too "
                             "(default: chat-bench.jsonl beside --out, when it exists)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        source = Path(args.source) if args.source else default_source()
        bench_file = Path(args.bench_file) if args.bench_file else None
        if args.split == "train":
            if bench_file is None and (out.parent / "chat-bench.jsonl").is_file():
                bench_file = out.parent / "chat-bench.jsonl"
            if bench_file is not None and bench_file.resolve() == out.resolve():
                raise NFoxHeadError(f"--out {out} is the bench file", "write the train split to another file")
        rows = build(source, args.split, args.count, args.seed, Path(args.config), bench_file)
        write(rows, out)
    except NFoxHeadError as exc:
        parser.exit(2, f"error: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"error: NFoxHead: cannot write {out}: {exc}. Fix: choose a writable --out\n")
    per_cat: dict[str, int] = {}
    for r in rows:
        per_cat[r.category] = per_cat.get(r.category, 0) + 1
    counts = ", ".join(f"{c} {n}" for c, n in per_cat.items())
    print(f"wrote {len(rows)} {args.split} prompts ({counts}) to {out}; source {source} sha256 {sha256_of(source)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
