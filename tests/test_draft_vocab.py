"""Shrinking a draft vocabulary: frequency ranking, unchanged weights, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from vllm_nfoxhead.training.draft_vocab import main, most_frequent_ids, shrink_draft_vocab
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, HeadsConfig, read_heads_tensors, save_heads, validate_heads_dir
from vllm_nfoxhead.core.heads import NFoxHeads

VOCAB = 40


def write_conditioned_heads(path, draft_ids: list[int] | None, conditioning: str = "tokens"):
    config = HeadsConfig(num_heads=2, num_layers=1, hidden_size=16, vocab_size=VOCAB, shared_lm_head=True,
                         conditioning=conditioning)
    torch.manual_seed(0)
    heads = NFoxHeads(config)
    if draft_ids is not None:
        heads.set_draft_vocab(torch.tensor(draft_ids))
    save_heads(path, config, heads.state_dict_for_format())
    return path


def write_data(path, answers: list[list[int]]):
    path.write_text("".join(json.dumps({"id": str(i), "prompt": "p", "response": "r", "prompt_token_ids": [1, 2, 3],
                                        "response_token_ids": a}) + "\n" for i, a in enumerate(answers)))
    return path


def test_most_frequent_ids_ranks_within_allowed_and_breaks_ties_by_id():
    counts = {5: 3, 7: 9, 9: 3, 30: 100}  # 30 is not allowed
    got = most_frequent_ids(counts, torch.tensor([2, 5, 7, 9, 11]), 3)
    assert got.tolist() == [5, 7, 9]
    assert most_frequent_ids(counts, torch.tensor([2, 5, 7, 9, 11]), 2).tolist() == [5, 7]  # 5 beats 9 on id
    assert got.dtype == torch.int64


def test_shrink_keeps_weights_and_writes_frequent_ids(tmp_path):
    src = write_conditioned_heads(tmp_path / "heads", [3, 4, 5, 6, 7, 8])
    # Prompt tokens (1, 2, 3) must not count: 3 is frequent only in prompts.
    data = write_data(tmp_path / "d.jsonl", [[8, 8, 8, 5], [5, 6, 20, 20, 20]])
    out = shrink_draft_vocab(src, [data], 3, tmp_path / "small")
    config = validate_heads_dir(out)
    assert config.draft_vocab_size == 3
    new, old = read_heads_tensors(out, config), read_heads_tensors(src, validate_heads_dir(src))
    assert new[DRAFT_VOCAB_KEY].tolist() == [5, 6, 8]  # 20 is outside the old draft vocabulary
    assert all(torch.equal(new[k], old[k]) for k in old if k != DRAFT_VOCAB_KEY)
    info = config.extra["draft_vocab"]
    assert info["from_size"] == 6 and info["answer_coverage"] == pytest.approx(6 / 9, abs=1e-4)


def test_cli_prints_coverage(tmp_path, capsys):
    src = write_conditioned_heads(tmp_path / "heads", None)  # full vocabulary: any id may be kept
    data = write_data(tmp_path / "d.jsonl", [[20, 20, 21]])
    main([str(src), "--data", str(data), "--size", "2", "--output", str(tmp_path / "out")])
    assert "covering 100.0%" in capsys.readouterr().out
    assert read_heads_tensors(tmp_path / "out", validate_heads_dir(tmp_path / "out"))[DRAFT_VOCAB_KEY].tolist() == [20, 21]


@pytest.mark.parametrize("case", ["medusa", "too_big", "exists", "bad_data"])
def test_bad_input_is_refused_before_writing(tmp_path, case):
    src = write_conditioned_heads(tmp_path / "heads", [3, 4, 5, 6],
                                  conditioning="none" if case == "medusa" else "tokens")
    data = write_data(tmp_path / "d.jsonl", [[3, 4]])
    out = tmp_path / "out"
    if case == "exists":
        out.mkdir()
    if case == "bad_data":
        data.write_text("not json\n")
    expected = {"medusa": "Medusa heads", "too_big": "must be between", "exists": "already exists",
                "bad_data": "d.jsonl"}[case]
    with pytest.raises(NFoxHeadError, match=expected):
        shrink_draft_vocab(src, [data], 4 if case == "too_big" else 2, out)
    assert not out.exists() or (case == "exists" and not any(out.iterdir()))
