"""Model-written training prompts: what is kept, ids, resume, benchmark exclusion (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.training import self_prompts as S
from vllm_nfoxhead.training.chat_prompts import normalise

BANNED = ("compose an engaging travel blog post",)


def test_clean_prompt_keeps_requests_and_drops_junk():
    assert S.clean_prompt("  How do I sort a list in Python?\n", BANNED) == "How do I sort a list in Python?"
    for junk in ("Hi there", "x" * 500 + " a b c", "What is <|im_end|> for?", "Tell me\x00 about it now", "Benadav khayrat Allah, بنابيد- وباحث إلى ، معني بن",
                 "Please compose an engaging travel blog post about Hawaii"):
        assert S.clean_prompt(junk, BANNED) is None, junk


def test_ids_follow_the_text_not_the_run():
    assert S.prompt_id("How do I sort a list?") == S.prompt_id("how do I sort a list")
    assert S.prompt_id("How do I sort a list?") != S.prompt_id("How do I sort a dict?")


def test_new_rows_skip_seen_excluded_and_repeats():
    seen = {normalise("What is a prime number?")}
    excluded = {normalise("Name three rivers in Europe.")}
    rows = S.new_rows([(0, "What is a prime number?"), (1, "Name three rivers in Europe."),
                       (2, "How do volcanoes form on Earth?"), (3, "how do volcanoes form on earth"),
                       (4, "ok")], seen, excluded, BANNED)
    assert [(r["attempt"], r["prompt"]) for r in rows] == [(2, "How do volcanoes form on Earth?")]
    assert normalise("How do volcanoes form on Earth?") in seen


def test_resume_continues_after_the_last_attempt(tmp_path: Path):
    out = tmp_path / "self.jsonl"
    rows = [{"id": "self-a", "category": "self", "prompt": "How do magnets work at all?", "attempt": 7},
            {"id": "self-b", "category": "self", "prompt": "Why is the sky blue today?", "attempt": 3}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "self-c", "pro')  # crash mid-line
    seen, attempt = S.read_existing(out)
    assert attempt == 8 and seen == {normalise(r["prompt"]) for r in rows}
    assert out.read_text().endswith("\n")  # the partial line was cut off


def test_every_benchmark_set_is_excluded(tmp_path: Path):
    (tmp_path / "bench.jsonl").write_text(json.dumps({"id": "b", "prompt": "Write a poem about tea."}) + "\n")
    (tmp_path / "chat-bench.jsonl").write_text(json.dumps({"id": "c", "prompt": "Who wrote Hamlet?"}) + "\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "t", "prompt": "Explain rain."}) + "\n")
    assert S.bench_texts(tmp_path) == {normalise("Write a poem about tea."), normalise("Who wrote Hamlet?")}
    assert len(S.bench_texts()) >= 160  # the shipped template and chat benchmark sets


def test_exclude_files_are_read_and_checked(tmp_path: Path):
    first = tmp_path / "self-train.jsonl"
    first.write_text(json.dumps({"id": "s", "prompt": "How do magnets work at all?"}) + "\n")
    assert S.prompt_texts(S.check_exclude_files([str(first)])) == {normalise("How do magnets work at all?")}
    with pytest.raises(NFoxHeadError, match="--exclude file .*missing.jsonl does not exist"):
        S.check_exclude_files([str(first), str(tmp_path / "missing.jsonl")])


class _Template:
    def __init__(self, template: str) -> None:
        self.template = template

    def apply_chat_template(self, messages, tokenize=False):
        return self.template.format(messages[0]["content"])


def test_user_turn_prefix():
    tok = _Template("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n")
    assert S.user_turn_prefix(tok) == "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\n"
    with pytest.raises(NFoxHeadError, match="drops the user message"):
        S.user_turn_prefix(_Template("<s>system only</s>"))


@pytest.mark.parametrize("name", ["self-train.jsonl", "self-train-2.jsonl", "self-train-3.jsonl", "self-train-4.jsonl"])
def test_committed_set_is_clean(name: str):
    """data/prompts/self-train*.jsonl: unique, kept by the rules, no benchmark text."""
    rows = [row for _, row in S.jsonl_objects(S.BENCH_SETS / name)]
    assert len(rows) >= 1000
    assert len({r["id"] for r in rows}) == len(rows) == len({normalise(r["prompt"]) for r in rows})
    bench = S.bench_texts()
    for r in rows:
        assert S.clean_prompt(r["prompt"], S.load_config().benchmark_phrases) == r["prompt"], r
        assert normalise(r["prompt"]) not in bench and r["id"] == S.prompt_id(r["prompt"]), r


def test_later_sets_repeat_no_prompt_of_the_earlier_ones():
    """self-train-2.jsonl was written with --exclude self-train.jsonl, self-train-3.jsonl with
    --exclude of both, self-train-4.jsonl with --exclude of all three."""
    first, second, third, fourth = (S.prompt_texts([S.BENCH_SETS / f"self-train{n}.jsonl"])
                                    for n in ("", "-2", "-3", "-4"))
    assert not first & second and not (first | second) & third and not (first | second | third) & fourth
