"""datagen's JSONL and resume logic, without an engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_nfoxhead.training import datagen as D
from vllm_nfoxhead.core.errors import NFoxHeadError


def _record(i: int) -> dict:
    return D.make_record({"id": f"p{i}", "prompt": f"question {i}"}, [1, 2, i], f"answer {i}", [7, i], "stop")


def _write(path: Path, records: list[dict], tail: bytes = b"") -> None:
    with path.open("w") as f:
        D.append_records(f, records)
    with path.open("ab") as f:
        f.write(tail)


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "category": "c", "prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def test_record_fields():
    rec = _record(3)
    assert set(D.RECORD_FIELDS) <= set(rec)
    assert rec["prompt_token_ids"] == [1, 2, 3] and rec["response_token_ids"] == [7, 3]


def test_resume_skips_done_ids(tmp_path):
    rows = D.read_prompts(_prompts(tmp_path / "p.jsonl", 6))
    out = tmp_path / "out.jsonl"
    _write(out, [_record(0), _record(2)])
    done = D.read_done_ids(out)
    assert done == {"p0", "p2"}
    assert [r["id"] for r in D.pending_prompts(rows, done)] == ["p1", "p3", "p4", "p5"]
    assert [r["id"] for r in D.pending_prompts(rows, done, limit=3)] == ["p1"]
    assert D.pending_prompts(rows, {r["id"] for r in rows}) == []


@pytest.mark.parametrize("tail", [b'{"id": "p9", "prom', b'{"id": "p9"', b"{", b'{"id": "p9", "prompt": "x"'])
def test_truncated_last_line_is_dropped(tmp_path, tail):
    out = tmp_path / "out.jsonl"
    _write(out, [_record(0), _record(1)], tail)
    good = out.read_bytes()[: -len(tail)]
    assert D.read_done_ids(out) == {"p0", "p1"}
    assert out.read_bytes() == good  # cut back to the last complete line
    with out.open("a") as f:  # appending afterwards gives clean JSONL
        D.append_records(f, [_record(2)])
    lines = out.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["p0", "p1", "p2"]


def test_invalid_json_last_line_with_newline_is_dropped(tmp_path):
    out = tmp_path / "out.jsonl"
    _write(out, [_record(0)], b'{"id": "p1", "resp\n')
    assert D.read_done_ids(out) == {"p0"}
    assert out.read_text().count("\n") == 1


def test_only_partial_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "p0"')
    assert D.read_done_ids(out) == set()
    assert out.read_bytes() == b""


def test_missing_output_and_empty_output(tmp_path):
    assert D.read_done_ids(tmp_path / "none.jsonl") == set()
    (tmp_path / "empty.jsonl").write_text("")
    assert D.read_done_ids(tmp_path / "empty.jsonl") == set()


def test_damage_before_the_last_line_is_reported(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(_record(0)) + "\nnot json\n" + json.dumps(_record(1)) + "\n")
    with pytest.raises(NFoxHeadError, match=r"out.jsonl line 2 is not valid JSON"):
        D.read_done_ids(out)


def test_duplicate_output_ids_are_reported(tmp_path):
    out = tmp_path / "out.jsonl"
    _write(out, [_record(0), _record(0)])
    with pytest.raises(NFoxHeadError, match="line 2 repeats id 'p0'"):
        D.read_done_ids(out)


def test_foreign_output_file_is_reported(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "p0", "text": "hi"}) + "\n")
    with pytest.raises(NFoxHeadError, match="not a datagen record"):
        D.read_done_ids(out)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n', r"p.jsonl line 2 is not valid JSON"),
        ('{"id": "a", "prompt": "x"}\n[1, 2]\n', r"line 2 is not a JSON object"),
        ('{"id": "a"}\n', r"line 1 lacks a non-empty string prompt"),
        ('{"prompt": "x"}\n', r"line 1 lacks a non-empty string id"),
        ('{"id": 5, "prompt": "x"}\n', r"line 1 lacks a non-empty string id"),
        ('{"id": "a", "prompt": "x"}\n\n{"id": "a", "prompt": "y"}\n', r"line 3 repeats id 'a' \(first on line 1\)"),
        ("\n", r"is empty"),
    ],
)
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(NFoxHeadError, match=message):
        D.read_prompts(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(NFoxHeadError, match="does not exist"):
        D.read_prompts(tmp_path / "nope.jsonl")


def test_shipped_prompt_files_are_valid():
    root = Path(__file__).resolve().parent.parent / "data" / "prompts"
    assert len(D.read_prompts(root / "train.jsonl")) >= 2000
    assert len(D.read_prompts(root / "bench.jsonl")) >= 48


def test_batches_and_chat_ids():
    assert [len(b) for b in D.batches(list(range(10)), 4)] == [4, 4, 2]

    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "<u>" + messages[0]["content"] + "<a>"

        def __call__(self, text, add_special_tokens):
            assert not add_special_tokens
            return {"input_ids": [len(text)]}

    assert D.chat_prompt_ids(Tok(), "hi") == [8]


def test_cli_rejects_bad_numbers():
    with pytest.raises(SystemExit):
        D.parse_args(["--model", "m", "--prompts", "p", "--output", "o", "--batch-size", "0"])
    args = D.parse_args(["--model", "m", "--prompts", "p", "--output", "o"])
    assert (args.max_tokens, args.temperature, args.batch_size, args.gpu_memory_utilization) == (256, 0.0, 64, 0.3)
