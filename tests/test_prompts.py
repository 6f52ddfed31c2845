"""The shipped prompt sets: counts, distinctness, disjointness, categories, no benchmark text;
the generator reproduces them byte for byte from the data in prompt_pools/."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from vllm_nfoxhead.training import prompts as P
from vllm_nfoxhead.core.errors import NFoxHeadError

DATA = Path(__file__).resolve().parent.parent / "data" / "prompts"
CATEGORIES = {"writing", "coding", "maths", "reasoning", "extraction", "roleplay",
              "knowledge", "summarisation"}
# Independent of the generator's own list: opening words of well-known public
# benchmark questions (MT-Bench, Spec-Bench, AlpacaEval).
BENCHMARK_TEXT = (
    "compose an engaging travel blog post", "draft a professional email seeking",
    "imagine you are writing a blog post comparing", "write a persuasive email to convince",
    "describe a vivid and unique character", "could you write a captivating short story",
    "craft an intriguing opening paragraph", "help me construct a catchy",
    "edit the following paragraph to correct", "embrace the role of", "pretend yourself to be",
    "suppose you are a mathematician and poet", "imagine yourself as a doctor",
    "please take on the role of a relationship coach", "please assume the role of an english",
    "now you are a machine learning engineer", "embody the persona of",
    "suppose you are in a race with a group of people", "parents have complained to the principal",
    "how many integers are in the solution of the inequality",
    "when a number is divided by 10, the remainder is 4",
    "develop a python program that reads all the text files",
    "implement a program to find the common elements in two arrays",
    "write a simple website in html", "the binary tree is full if",
    "extract the following information from the presented texts",
    "given these categories - literature, history, science, and art",
    "evaluate the following movie reviews on a scale of 1 to 5",
    "give three tips for staying healthy", "what are the three primary colors",
)


def _load(name: str) -> list[dict]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def sets() -> tuple[list[dict], list[dict]]:
    return _load("train.jsonl"), _load("bench.jsonl")


def test_counts_and_fields(sets):
    train, bench = sets
    assert len(train) >= 2000 and len(bench) >= 48
    for row in (*train, *bench):
        assert set(row) == {"id", "category", "prompt"}
        assert row["prompt"].strip() and len(row["prompt"]) < 2000


def test_categories_balanced(sets):
    for rows in sets:
        counts = Counter(r["category"] for r in rows)
        assert set(counts) == CATEGORIES
        assert max(counts.values()) - min(counts.values()) <= 1


def test_distinct_and_disjoint(sets):
    train, bench = sets
    for rows in sets:
        assert len({r["id"] for r in rows}) == len(rows)
        assert len({P.normalise(r["prompt"]) for r in rows}) == len(rows)
    assert not {r["id"] for r in train} & {r["id"] for r in bench}
    assert not {P.normalise(r["prompt"]) for r in train} & {P.normalise(r["prompt"]) for r in bench}


def test_varied_not_one_sentence(sets):
    """Prompts are not a handful of sentences with one word swapped."""
    train, _ = sets
    openings = Counter(" ".join(r["prompt"].split()[:4]) for r in train)
    assert len(openings) > 150
    assert openings.most_common(1)[0][1] < 0.05 * len(train)


def test_no_benchmark_text(sets):
    for row in (*sets[0], *sets[1]):
        text = P.normalise(row["prompt"])
        assert not [b for b in BENCHMARK_TEXT + P.FORBIDDEN_PHRASES if b in text], row["id"]


def test_files_match_generator(tmp_path):
    """The committed files are exactly what the seeded generator writes."""
    P.build(tmp_path)
    for name in ("train.jsonl", "bench.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes()


def test_bench_topics_never_in_train():
    """Main-pool items are split, so the two generators never share a topic."""
    for name in ("WRITING_TOPICS", "CODE_TASKS", "PERSONAS", "EXPLAIN", "MATH_TEMPLATES"):
        bench = P.bench_share(P.POOLS[name])
        assert 0 < len(bench) < len(P.POOLS[name])
    train = " ".join(p.prompt for p in P.generate_split("train", 400))
    for topic in P.bench_share(P.POOLS["WRITING_TOPICS"]) | P.bench_share(P.POOLS["PERSONAS"]):
        assert repr(topic).strip("'\"") not in train


def test_check_rejects_overlap_and_benchmark_text():
    a = P.Prompt("train-x-0", "writing", "Write a haiku about tea.")
    b = P.Prompt("bench-x-0", "writing", "write a  haiku about TEA.")
    with pytest.raises(NFoxHeadError, match="both train and bench"):
        P.check_prompt_sets([a], [b])
    bad = P.Prompt("train-x-1", "knowledge", "Explain photosynthesis.")
    with pytest.raises(NFoxHeadError, match="benchmark text"):
        P.check_prompt_sets([bad], [])
    with pytest.raises(NFoxHeadError, match="duplicate prompts"):
        P.check_prompt_sets([a, P.Prompt("train-x-2", "writing", a.prompt)], [])


def test_wide_file_matches_generator_and_is_disjoint(tmp_path, sets):
    """train-wide.jsonl is the seeded generator's output, new against train, disjoint from bench."""
    wide = _load("train-wide.jsonl")
    P.build_wide(tmp_path, len(wide))
    assert (tmp_path / "train-wide.jsonl").read_bytes() == (DATA / "train-wide.jsonl").read_bytes()
    train, bench = sets
    texts = {P.normalise(r["prompt"]) for r in wide}
    assert len(texts) == len(wide) and {r["category"] for r in wide} == CATEGORIES
    assert not texts & {P.normalise(r["prompt"]) for r in train}
    assert not texts & {P.normalise(r["prompt"]) for r in bench}
    for row in wide:
        text = P.normalise(row["prompt"])
        assert not [b for b in BENCHMARK_TEXT + P.FORBIDDEN_PHRASES if b in text], row["id"]


def test_wide_topics_are_new_and_never_bench():
    """Wide pools add subjects: none repeats a main-pool item, so none is a bench-share item."""
    for name, wide in P.WIDE_POOLS.items():
        main = P.POOLS[name]
        assert len(set(wide)) == len(wide) >= 30, name
        assert not set(wide) & set(main), name
        shapes = {len(x) if isinstance(x, tuple) else 0 for x in main}
        assert {len(x) if isinstance(x, tuple) else 0 for x in wide} == shapes, name
    wide_text = " ".join(p.prompt for p in P.generate_split("wide", 400))
    for topic in (P.bench_share(P.POOLS["WRITING_TOPICS"]) | P.bench_share(P.POOLS["PERSONAS"])
                  | P.bench_share(P.POOLS["THINGS"])):
        assert topic not in wide_text


def test_wide_prompts_use_wide_topics():
    """Most writing and knowledge subjects of the wide set come from the wide pools."""
    import re

    text = " ".join(r["prompt"] for r in _load("train-wide.jsonl"))
    pools = P.WIDE_POOLS["WRITING_TOPICS"] + P.WIDE_POOLS["THINGS"] + P.WIDE_POOLS["EXPLAIN"]
    used = [t for t in pools if re.search(rf"\b{re.escape(t)}\b", text)]
    assert len(used) > 0.4 * len(pools)


def _edited_pools(tmp_path: Path, file: str, old: str, new: str) -> P.Library:
    """The shipped library with one string of one data file replaced."""
    pools = tmp_path / "prompt_pools"
    shutil.copytree(P.POOL_DIR, pools)
    text = (pools / file).read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    (pools / file).write_text(text.replace(old, new), encoding="utf-8")
    return P.load_library(pools)


@pytest.mark.parametrize(("file", "old", "new"), [
    ("writing.json", '"an old lighthouse"', '"an old windmill"'),            # a main-pool item
    ("maths.json", "{num(2, 8)} hours and", "{num(2, 9)} hours and"),          # a template's draw
    ("wide.json", '"a wheat field before harvest"', '"a barley field"'),      # a wide-pool item
])
def test_any_data_edit_changes_the_sets(tmp_path, file, old, new):
    """The byte-for-byte tests above catch any change to the data: one edited item or draw
    gives different train or wide prompts (so the committed sets must be regenerated)."""
    library = _edited_pools(tmp_path, file, old, new)
    split = "wide" if file == "wide.json" else "train"
    name = "train-wide.jsonl" if split == "wide" else "train.jsonl"
    count = len(_load(name))
    taken = _load("train.jsonl") + _load("bench.jsonl") if split == "wide" else []
    exclude = frozenset(P.normalise(r["prompt"]) for r in taken)
    P.write_jsonl(tmp_path / name, P.generate_split(split, count, exclude=exclude, library=library))
    assert (tmp_path / name).read_bytes() != (DATA / name).read_bytes()


def test_library_rejects_bad_templates(tmp_path):
    """Typos in the data fail with a pointer to the data, not with wrong prompts."""
    library = _edited_pools(tmp_path, "knowledge.json", '"x": "main(THINGS)"', '"x": "main(THINGZ)"')
    with pytest.raises(NFoxHeadError, match="main\\(THINGZ\\) needs a shared pool name"):
        P.generate_split("train", 80, library=library)
    with pytest.raises(NFoxHeadError, match="unknown keys"):
        P.load_library(_edited_pools(tmp_path / "b", "roleplay.json", '"let"', '"lett"'))
