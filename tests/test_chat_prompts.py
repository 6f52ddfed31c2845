"""The human-written chat prompt sets and their builder (fast: no engine, no network)."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.training import chat_prompts as C

DATA = Path(__file__).resolve().parent.parent / "data" / "prompts"
CFG = C.load_config()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def bench() -> list[dict]:
    return _rows(DATA / "chat-bench.jsonl")


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return _rows(DATA / "chat-train.jsonl")


# --------------------------------------------------------------------------
# The committed files
# --------------------------------------------------------------------------
def test_bench_rows_are_valid_and_balanced(bench):
    assert len(bench) == 80
    for row in bench:
        assert set(row) == {"id", "category", "prompt"}
        assert row["id"].startswith(f"chat-{row['category']}-")
        assert row["prompt"] == row["prompt"].strip() and C.keep(row["prompt"], CFG), row
    counts = Counter(r["category"] for r in bench)
    assert set(counts) == set(CFG.category_order) and len(set(counts.values())) == 1, counts
    # Interleaved: every window of one line per category covers all categories.
    n = len(counts)
    assert all(len({r["category"] for r in bench[i:i + n]}) == n for i in range(0, len(bench), n))


def test_ids_and_texts_unique(bench, train):
    rows = bench + train
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({C.normalise(r["prompt"]) for r in rows}) == len(rows)


def test_train_split_is_disjoint_from_the_bench(bench, train):
    assert len(train) >= 200
    assert {r["id"] for r in bench}.isdisjoint(r["id"] for r in train)
    assert {C.normalise(r["prompt"]) for r in bench}.isdisjoint(C.normalise(r["prompt"]) for r in train)
    assert set(Counter(r["category"] for r in train)) == set(CFG.category_order)


def test_disjoint_from_the_template_sets(bench, train):
    template = [p for p in sorted(DATA.glob("*.jsonl")) if not p.name.startswith("chat-")]
    assert {p.name for p in template} >= {"train.jsonl", "bench.jsonl"}
    texts, ids = set(), set()
    for path in template:
        for row in _rows(path):
            texts.add(C.normalise(row["prompt"]))
            ids.add(row["id"])
    for row in bench + train:
        assert row["id"] not in ids and C.normalise(row["prompt"]) not in texts, row


def test_no_benchmark_text(bench, train):
    for row in bench + train:
        low = row["prompt"].lower()
        assert not any(phrase in low for phrase in CFG.benchmark_phrases), row


# --------------------------------------------------------------------------
# The builder on small synthetic sources
# --------------------------------------------------------------------------
SOURCE_ROWS = {  # source category (a file name of chatterbot-corpus) -> prompts
    "trivia": [f"Which river flows through city number {i}?" for i in range(6)],
    "science": [f"what is branch {i} of physics" for i in range(6)],
    "coding": [f"can you write sorting algorithm {i} in Python?" for i in range(6)],
    "ai": [f"Do you like game number {i}?" for i in range(6)],
}
NOISE = [("trivia", "Hi"), ("ai", "Does that make you"), ("science", "What is the weather today?"),
         ("coding", "Show me a picture of a cat?"), ("unmapped", "What is this category about?"),
         ("trivia", "which river flows through CITY number 0")]  # a near-duplicate


def _jsonl_source(tmp_path: Path) -> Path:
    path = tmp_path / "source.jsonl"
    lines = [{"category": c, "prompt": p} for c, ps in SOURCE_ROWS.items() for p in ps]
    lines += [{"category": c, "prompt": p} for c, p in NOISE]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def _wheel_source(tmp_path: Path) -> Path:
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "chatterbot_corpus-0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for cat, prompts in SOURCE_ROWS.items():
            doc = {"categories": [cat], "conversations": [[p, "an answer"] for p in prompts]}
            zf.writestr(f"chatterbot_corpus/data/english/{cat}.yml", yaml.safe_dump(doc))
        zf.writestr("chatterbot_corpus/data/french/trivia.yml", yaml.safe_dump(
            {"conversations": [["Quelle est la capitale de la France ?", "Paris"]]}))
    return path


def test_filters():
    assert C.keep("who wrote the hobbit", CFG)
    assert C.keep("My computer won't turn on.", CFG)
    assert C.keep("can you write a Dockerfile?", CFG)
    for text in ("Hi", "you are a coward", "Does that make you", "What is the weather today?",
                 "Show me a picture of a cat?", "Compose an engaging travel blog post about Peru?",
                 "x" * 400 + "?"):
        assert not C.keep(text, CFG), text


def test_builder_is_deterministic_and_splits_are_disjoint(tmp_path):
    source = _jsonl_source(tmp_path)
    bench = C.build(source, "bench", count=8)
    assert bench == C.build(source, "bench", count=8)
    assert Counter(p.category for p in bench) == {c: 2 for c in CFG.category_order}
    train = C.build(source, "train", count=8)
    assert train == C.build(source, "train", count=8)
    assert {p.id for p in bench}.isdisjoint(p.id for p in train)
    # Together they are every usable prompt: 24 real ones; the noise is filtered or de-duplicated.
    assert sorted(p.prompt for p in bench + train) == sorted(p for ps in SOURCE_ROWS.values() for p in ps)
    # Ids depend on the text only: another seed picks another bench with the same ids for the same prompts.
    other = C.build(source, "bench", count=8, seed=1)
    ids = {p.prompt: p.id for p in bench + train}
    assert all(ids[p.prompt] == p.id for p in other)


def test_cli_on_a_wheel_writes_bench_then_train(tmp_path, capsys):
    source = _wheel_source(tmp_path)
    out = tmp_path / "out"
    args = ["--source", str(source), "--count", "8"]
    assert C.main([*args, "--out", str(out / "chat-bench.jsonl")]) == 0
    first = (out / "chat-bench.jsonl").read_bytes()
    assert C.main([*args, "--out", str(out / "chat-bench.jsonl")]) == 0
    assert (out / "chat-bench.jsonl").read_bytes() == first
    assert C.main([*args, "--split", "train", "--out", str(out / "chat-train.jsonl")]) == 0
    bench, train = _rows(out / "chat-bench.jsonl"), _rows(out / "chat-train.jsonl")
    assert len(bench) == 8 and len(train) == 16
    assert {r["id"] for r in bench}.isdisjoint(r["id"] for r in train)
    assert all(set(r) == {"id", "category", "prompt"} for r in bench + train)
    assert "Quelle" not in json.dumps(train)  # English files only
    assert "wrote 16 train prompts" in capsys.readouterr().out


def test_train_split_also_excludes_the_bench_file_beside_it(tmp_path):
    source = _jsonl_source(tmp_path)
    train = C.build(source, "train", count=8)
    # A bench file made otherwise (another seed, an older build) that holds a would-be train prompt.
    stray = {"id": "chat-trivia-0000000000", "category": "trivia", "prompt": train[0].prompt.upper()}
    (tmp_path / "chat-bench.jsonl").write_text(json.dumps(stray) + "\n")
    assert C.main(["--source", str(source), "--count", "8", "--split", "train",
                   "--out", str(tmp_path / "chat-train.jsonl")]) == 0
    got = _rows(tmp_path / "chat-train.jsonl")
    assert len(got) == len(train) - 1 and all(C.normalise(r["prompt"]) != C.normalise(stray["prompt"]) for r in got)


def test_jsonl_instruction_with_context(tmp_path):
    path = tmp_path / "dolly-style.jsonl"
    path.write_text(json.dumps({"category": "trivia", "instruction": "Which  river is named here?",
                                "context": "The Seine\nflows   through Paris."}) + "\n")
    (pair,) = C.read_source(path)
    assert pair == ("trivia", "Which  river is named here?\n\nThe Seine\nflows   through Paris.")
    assert C.clean(pair[1]) == "Which river is named here?\n\nThe Seine flows through Paris."


def test_check_disjoint_catches_a_leak():
    row = C.ChatPrompt("chat-tech-0123456789", "tech", "can you write a heap?")
    with pytest.raises(NFoxHeadError, match="train prompt"):
        C.check_disjoint([row], [row])


# --------------------------------------------------------------------------
# Bad input: one clear line
# --------------------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.startswith("NFoxHead: ") and "Fix: " in text
    return text


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "missing.whl", "does not exist"),
    (lambda d: (d / "bad.whl").write_bytes(b"not a zip") and d / "bad.whl", "cannot read"),
    (lambda d: (d / "bad.jsonl").write_text('{"prompt": "ok?", "category": "ai"}\nnot json\n') and d / "bad.jsonl",
     "line 2 is not JSON"),
    (lambda d: (d / "odd.txt").write_text("hello") and d / "odd.txt", "neither a wheel"),
    (lambda d: d, "holds no chatterbot_corpus/data/english"),
])
def test_bad_source_is_one_clear_error(tmp_path, make, says):
    with pytest.raises(NFoxHeadError) as exc:
        C.build(make(tmp_path))
    assert says in _one_line(exc)


def test_empty_wheel_and_uneven_count(tmp_path):
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("chatterbot_corpus/__init__.py", "")
    with pytest.raises(NFoxHeadError) as exc:
        C.build(empty)
    assert "holds no" in _one_line(exc)
    with pytest.raises(NFoxHeadError) as exc:
        C.build(_jsonl_source(tmp_path), count=6)
    assert "multiple of 4" in _one_line(exc)


def test_cli_bad_source_prints_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        C.main(["--source", str(tmp_path / "nope.whl"), "--out", str(tmp_path / "x.jsonl")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: NFoxHead: ") and "does not exist" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_refuses_train_over_the_bench(tmp_path, capsys):
    source = _jsonl_source(tmp_path)
    with pytest.raises(SystemExit):
        C.main(["--source", str(source), "--count", "8", "--split", "train",
                "--bench-file", str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "b.jsonl")])
    assert "is the bench file" in capsys.readouterr().err
