"""Head training on a tiny random Llama (hidden 32): loss, targets, loop, output, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vllm_nfoxhead.training import trainer as T
from vllm_nfoxhead.core.format import load_heads_config, validate_heads_dir
from vllm_nfoxhead.training.train import main as train_main

VOCAB = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: a second thread only adds spin-waiting (100x slower on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def _records(n: int = 40, prompt_len: int = 8, answer_len: int = 32) -> list[dict]:
    """Answers count upwards (mod VOCAB): token t+k+2 is a function of token t, so learnable."""
    gen = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        prompt = torch.randint(2, VOCAB, (prompt_len,), generator=gen).tolist()
        start = int(torch.randint(2, VOCAB, (1,), generator=gen))
        answer = [2 + (start + j) % (VOCAB - 2) for j in range(answer_len)]
        rows.append({"id": f"r{i}", "prompt": "p", "response": "r",
                     "prompt_token_ids": prompt, "response_token_ids": answer})
    return rows


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "distill.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return path


def test_targets_hand_checked():
    seqs = T.Sequences(ids=[[10, 11, 12, 13, 14]], answer_start=[3])
    targets, seq = T.build_targets(seqs, num_heads=2, include_prompt=False)
    x = T.IGNORE
    # head 0 at t predicts token t+2 (kept if t+2 >= 3); head 1 predicts t+3.
    assert targets.tolist() == [[x, 13], [13, 14], [14, x], [x, x], [x, x]]
    assert seq.tolist() == [0] * 5
    with_prompt, _ = T.build_targets(seqs, num_heads=2, include_prompt=True)
    assert with_prompt[:, 0].tolist() == [12, 13, 14, x, x]


def test_loss_hand_checked():
    """Two heads, two positions, vocabulary 3; one target ignored."""
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
                           [[3.0, 0.0, 1.0], [0.5, 0.5, 2.0]]])  # [K=2, B=2, V=3]
    targets = torch.tensor([[1, T.IGNORE], [0, 2]])  # [B, K]
    lse = lambda xs: math.log(sum(math.exp(v) for v in xs))  # noqa: E731
    head0 = ((lse([1, 2, 0]) - 2.0) + (lse([0, 0, 0]) - 0.0)) / 2
    head1 = (lse([0.5, 0.5, 2]) - 2.0) / 1
    per_head = T.head_losses(logits, targets)
    assert per_head.tolist() == pytest.approx([head0, head1], rel=1e-6)
    assert T.weighted_loss(per_head, 0.5).item() == pytest.approx(head0 + 0.5 * head1, rel=1e-6)


def test_soft_loss_hand_checked():
    """Cross-entropy against softmax(teacher); an IGNORE target drops the row."""
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])  # [K=1, B=2, V=3]
    teacher = torch.tensor([[[0.0, math.log(3.0), -50.0], [9.0, 9.0, 9.0]]])
    targets = torch.tensor([[1], [T.IGNORE]])
    lse = math.log(math.exp(1) + math.exp(2) + 1)
    expected = 0.25 * (lse - 1.0) + 0.75 * (lse - 2.0)  # p = (1/4, 3/4, ~0)
    assert T.soft_head_losses(logits, teacher, targets).tolist() == pytest.approx([expected], rel=1e-5)
    # a one-hot teacher gives the hard loss
    one_hot = torch.tensor([[[-50.0, 0.0, -50.0], [0.0, 0.0, 0.0]]])
    assert T.soft_head_losses(logits, one_hot, targets).tolist() == pytest.approx(
        T.head_losses(logits, targets).tolist(), rel=1e-5)


def test_teacher_logits_read_the_state_before_each_target():
    """Head k's teacher at row t is the base LM head applied to h[t+k+1] (the state that predicts t+k+2)."""
    hidden = torch.arange(6, dtype=torch.float32).unsqueeze(1) * torch.ones(1, 2)  # h[i] = (i, i)
    data = T.Dataset(hidden, torch.zeros(6, 2, dtype=torch.long), torch.zeros(6, dtype=torch.long))
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # [V'=3, H=2]
    got = T.teacher_logits(data, torch.tensor([0, 3]), 2, weight, torch.device("cpu"))  # [K=2, B=2, 3]
    assert got[0].tolist() == [[1, 2, 2], [4, 8, 8]]  # h[1], h[4]
    assert got[1].tolist() == [[2, 4, 4], [5, 10, 10]]  # h[2], h[5] (clamped past the end)


def test_training_loss_matches_independent_computation():
    """head_losses on the heads' output == a per-position log-softmax loop."""
    torch.manual_seed(3)
    cfg = T.TrainConfig(num_heads=3, shared_lm_head=True, conditioning="none")
    lm_head = torch.randn(VOCAB, 32)
    heads = T.new_heads(cfg, 32, lm_head, "tiny")
    for p in heads.parameters():
        p.data.normal_(0, 0.1)
    hidden = torch.randn(5, 32)
    targets = torch.randint(0, VOCAB, (5, 3))
    targets[0, 2] = T.IGNORE
    got = T.weighted_loss(T.head_losses(heads(hidden, lm_head), targets), cfg.decay)
    expected = 0.0
    for k, head in enumerate(heads.residual.heads):
        terms = []
        for t in range(5):
            if targets[t, k] == T.IGNORE:
                continue
            block = head[0].linear
            r = hidden[t] + torch.nn.functional.silu(block.weight @ hidden[t] + block.bias)
            terms.append(-torch.log_softmax(lm_head @ r, -1)[targets[t, k]])
        expected += cfg.decay**k * torch.stack(terms).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_conditioned_loss_matches_independent_computation():
    """Token-conditioned head k adds sum_j F_kj e(token t+1+j), j <= k, before its block."""
    torch.manual_seed(4)
    cfg = T.TrainConfig(num_heads=3, shared_lm_head=True, conditioning="tokens")
    lm_head, embed = torch.randn(VOCAB, 32), torch.randn(VOCAB, 32)
    heads = T.new_heads(cfg, 32, lm_head, "tiny")
    for p in heads.parameters():
        p.data.normal_(0, 0.1)
    hidden, context = torch.randn(5, 32), torch.randint(0, VOCAB, (5, 3))
    targets = torch.randint(0, VOCAB, (5, 3))
    got = T.head_losses(heads(hidden, lm_head, context=embed[context]), targets)
    for k, head in enumerate(heads.residual.heads):
        terms = []
        for t in range(5):
            x = hidden[t] + sum(heads.residual.fusions[k].maps[j].weight @ embed[context[t, j]]
                                for j in range(k + 1))
            block = head[0].linear
            r = x + torch.nn.functional.silu(block.weight @ x + block.bias)
            terms.append(-torch.log_softmax(lm_head @ r, -1)[targets[t, k]])
        assert got[k].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_context_and_vocab_restriction_hand_checked():
    seqs = T.Sequences(ids=[[10, 11, 12, 13, 14]], answer_start=[3])
    assert T.build_context(seqs, 2).tolist() == [[11, 12], [12, 13], [13, 14], [14, 0], [0, 0]]
    targets, _ = T.build_targets(seqs, num_heads=2, include_prompt=False)
    vocab, remapped = T.training_vocab("seen", targets, torch.tensor([0, 1]), VOCAB)
    x = T.IGNORE
    assert vocab.tolist() == [13, 14]  # targets of the training rows only
    assert remapped.tolist() == [[x, 0], [0, 1], [1, x], [x, x], [x, x]]
    assert T.training_vocab("full", targets, torch.tensor([0]), VOCAB)[0] is None


def test_own_lm_head_starts_from_base():
    lm_head = torch.randn(VOCAB, 32)
    heads = T.new_heads(T.TrainConfig(num_heads=2, shared_lm_head=False), 32, lm_head, "tiny")
    assert all(torch.equal(p.weight, lm_head) for p in heads.lm_heads)
    assert heads.config.dtype == "float32"


@pytest.mark.parametrize("conditioning,train_vocab,distill",
                         [("none", "full", 0.0), ("tokens", "seen", 0.0), ("tokens", "seen", 0.5)])
def test_loop_reduces_loss(tiny_model, conditioning, train_vocab, distill):
    model = T.load_base(tiny_model, torch.device("cpu"), "float32")
    seqs = T.Sequences([r["prompt_token_ids"] + r["response_token_ids"] for r in _records()], [8] * 40)
    data = T.Dataset.build(seqs, T.hidden_states(model, seqs), 2, include_prompt=False)
    cfg = T.TrainConfig(num_heads=2, epochs=20, batch_size=64, lr=1e-2, seed=0, amp=False,
                        conditioning=conditioning, train_vocab=train_vocab, distill=distill)
    result = T.train_heads(cfg, data, T.lm_head_weight(model), progress=False, embed=T.embed_weight(model))
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    # the distribution part of the loss cannot fall below the base model's entropy (high for random weights)
    assert last < (0.7 if distill == 0 else 0.9) * first
    assert len(result.metrics["topk_accuracy"]) == 2 and len(result.metrics["topk_accuracy"][0]) == 10
    assert result.metrics["top1"][0] > 1 / VOCAB * 3  # well above chance


def _cli(tiny_model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--model", str(tiny_model), "--data", str(data), "--output", str(out),
            "--cache-dir", str(cache), "--num-heads", "3", "--epochs", "3", "--batch-size", "128",
            "--base-dtype", "float32", "--quiet", *extra]


def test_cli_writes_valid_heads_and_reuses_cache(tiny_model, data_file, tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "heads", tmp_path / "cache"
    assert train_main(_cli(tiny_model, data_file, out, cache)) == 0
    config = validate_heads_dir(out)
    assert (config.num_heads, config.hidden_size, config.vocab_size) == (3, 32, VOCAB)
    assert config.shared_lm_head and config.dtype == "bfloat16"
    acc = config.extra["topk_accuracy"]
    assert len(acc) == 3 and all(len(row) == 10 and row == sorted(row) for row in acc)
    per_rank = config.extra["rank_accuracy"]
    assert all(sum(r) == pytest.approx(c[-1], abs=1e-3) for r, c in zip(per_rank, acc))
    assert config.extra["training"]["num_heads"] == 3
    assert len(list(cache.glob("*.safetensors"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("hidden states recomputed despite the cache")

    monkeypatch.setattr(T, "hidden_states", boom)
    assert train_main(_cli(tiny_model, data_file, out, cache, "--force", "--own-lm-head", "--no-amp")) == 0
    assert "read from" in capsys.readouterr().out
    own = load_heads_config(out)
    assert not own.shared_lm_head and own.dtype == "float32"


def test_cli_conditioning_and_eval_data(tiny_model, data_file, tmp_path):
    """--conditioning none writes Medusa heads; --eval-data reports accuracies on a second file."""
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _records(8)))
    out = tmp_path / "heads"
    assert train_main(_cli(tiny_model, data_file, out, tmp_path / "c", "--eval-data", str(other),
                           "--distill", "0.5")) == 0
    config = validate_heads_dir(out)
    assert config.token_conditioned and config.extra["training"]["train_vocab"] == "seen"
    assert config.extra["training"]["distill"] == 0.5
    extra = config.extra["eval_data"]
    assert extra["file"] == str(other) and len(extra["top1"]) == 3 and 1 <= extra["chain_accept"] <= 4
    assert extra["step_accept_lookup"] >= 1
    assert config.extra["train_vocab_size"] < VOCAB
    medusa = tmp_path / "medusa"
    assert train_main(_cli(tiny_model, data_file, medusa, tmp_path / "c", "--conditioning", "none",
                           "--train-vocab", "full")) == 0
    config = validate_heads_dir(medusa)
    assert not config.token_conditioned and config.extra["train_vocab_size"] == VOCAB


def test_evaluate_answer_tokens_walks_answers_cut_as_a_benchmark_would(tiny_model, data_file, tmp_path):
    """`evaluate --answer-tokens N` on whole answers equals the walk over a file whose answers
    were cut to N tokens (a live benchmark with --max-tokens N), from the same hidden states."""
    from vllm_nfoxhead.training.evaluate import main as evaluate_main, parse_args, walk

    heads, cache = tmp_path / "heads", tmp_path / "cache"
    assert train_main(_cli(tiny_model, data_file, heads, cache)) == 0
    cut = tmp_path / "cut.jsonl"
    rows = _records()
    for r in rows:
        r["response_token_ids"] = r["response_token_ids"][:6]
    cut.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", str(tiny_model), "--heads", str(heads), "--cache-dir", str(cache), "--base-dtype", "float32"]
    walked = walk(parse_args([*common, "--data", str(data_file), "--answer-tokens", "6"]))[0]
    expected = walk(parse_args([*common, "--data", str(cut)]))[0]
    assert walked["answer_tokens"] == 6
    full = walk(parse_args([*common, "--data", str(data_file)]))[0]
    assert full["step_accept"] != expected["step_accept"]  # the cut matters on this data
    for key in ("chain_accept", "step_accept", "top1"):
        assert walked[key] == expected[key]
    with pytest.raises(SystemExit):  # refused before any model is loaded
        evaluate_main([*common, "--data", str(data_file), "--answer-tokens", "0"])


def test_cli_several_data_files_cache_each(tiny_model, data_file, tmp_path, monkeypatch, capsys):
    """--data A B trains on both; each file's hidden states are cached on their own, so
    adding a file later computes only the new one's."""
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in _records(8, answer_len=24)))
    cache = tmp_path / "c"
    assert train_main(_cli(tiny_model, data_file, tmp_path / "a", cache)) == 0
    computed = []
    real = T.hidden_states
    monkeypatch.setattr(T, "hidden_states", lambda model, seqs, **kw: computed.append(len(seqs)) or real(model, seqs, **kw))
    assert train_main(_cli(tiny_model, data_file, tmp_path / "ab", cache)[:4] + [str(other)]
                      + _cli(tiny_model, data_file, tmp_path / "ab", cache)[4:]) == 0
    assert computed == [8]  # only the new file's 8 sequences
    assert len(list(cache.glob("*.safetensors"))) == 2
    out = capsys.readouterr().out
    assert "48 sequences" in out and f"hidden states of {other} written to" in out


def test_cli_bad_eval_data_fails_before_work(tiny_model, data_file, tmp_path, monkeypatch):
    import vllm_nfoxhead.training.train as train_cli

    monkeypatch.setattr(train_cli, "load_base", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(SystemExit, match="missing.jsonl does not exist"):
        train_main(_cli(tiny_model, data_file, tmp_path / "h", tmp_path / "c", "--eval-data",
                        str(tmp_path / "missing.jsonl")))


def test_cli_refuses_existing_output(tiny_model, data_file, tmp_path):
    out = tmp_path / "heads"
    out.mkdir()
    with pytest.raises(SystemExit, match="already exists.*--force"):
        train_main(_cli(tiny_model, data_file, out, tmp_path / "c"))


def test_cli_bad_data(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_records(1)[0]) + "\n{oops\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl line 2 is not valid JSON"):
        train_main(_cli(tiny_model, bad, tmp_path / "h", tmp_path / "c"))
    bad.write_text(json.dumps({"id": "x", "prompt_token_ids": [1, 2]}) + "\n")
    with pytest.raises(SystemExit, match="line 1 lacks integer lists"):
        train_main(_cli(tiny_model, bad, tmp_path / "h", tmp_path / "c"))
    rec = _records(1)[0] | {"response_token_ids": [5, VOCAB + 7]}
    bad.write_text(json.dumps(rec) + "\n")
    with pytest.raises(SystemExit, match=f"token id {VOCAB + 7} but .* has only {VOCAB} tokens"):
        train_main(_cli(tiny_model, bad, tmp_path / "h", tmp_path / "c"))
    with pytest.raises(SystemExit):  # argparse: --distill must be in [0, 1]
        train_main(_cli(tiny_model, bad, tmp_path / "h", tmp_path / "c", "--distill", "1.5"))
    assert not (tmp_path / "h").exists()


def test_step_accept_walks_each_sequence_as_vllm_steps():
    from vllm_nfoxhead.training.trainer import step_accept

    # Sequence 0: runs 2,0,0,1,0 -> steps at t=0 (3 tokens), t=3 (2 tokens) = 5 tokens / 2 steps.
    # Sequence 1: runs 0,0 -> two steps of 1 token. A step never crosses into the next sequence.
    seq = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    run = torch.tensor([2, 0, 0, 1, 0, 0, 0])
    assert step_accept(seq, run) == pytest.approx((5 + 2) / 4)
    # Teacher-forced averaging would give 1 + 3/7: easy stretches are counted once per position.
    assert step_accept(torch.tensor([0, 0, 0]), torch.tensor([5, 5, 5])) == 6.0
    assert step_accept(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) == 0.0


def test_evaluation_walk_starts_where_vllm_drafts_first():
    """The walk skips positions before answer start - 1: vLLM samples the answer's first
    token from the prompt and drafts from the last prompt token on."""
    seqs = T.Sequences([list(range(2, 12))], [4])  # answer = tokens 4..9
    data = T.Dataset.build(seqs, torch.zeros(10, 8), 2, include_prompt=False)
    assert data.drafted.tolist() == [False] * 3 + [True] * 7
    run = torch.tensor([2, 2, 2, 0, 2, 0, 0, 2, 0, 0])
    rows = torch.arange(10)
    # from t=3: 1 token, t=4: 3 tokens, t=7: 3 tokens, t=10 ends -> 7 tokens in 3 steps
    assert T._walk(data, rows, run) == pytest.approx(7 / 3)
    assert T.step_accept(data.seq, run) != pytest.approx(7 / 3)  # from t=0 it would differ


def test_evaluation_walk_with_prompt_lookup():
    """Rows whose suffix occurred before take the lookup continuation's accepted length."""
    ids = [2, 3, 4, 5, 6, 2, 3, 4, 5, 9, 9]
    seqs = T.Sequences([ids], [5])  # answer = tokens 5..10
    data = T.Dataset.build(seqs, torch.zeros(len(ids), 8), 2, include_prompt=False)
    rows = torch.arange(len(ids))
    copied = T.lookup_runs(data, rows, 8).tolist()
    # t=4: tokens[:6] end "6 2": no earlier match; t=5: "2 3" matched at 0 -> draft 4 5 6 2 ...,
    # truth 4 5 9 9 -> 2; t=6: "2 3 4" -> 5 6 ..., truth 5 9 -> 1; t=7: "3 4 5" -> 6 ..., truth 9 -> 0
    assert copied[4:8] == [-1, 2, 1, 0]
    heads = torch.zeros(len(ids), dtype=torch.long)
    # walk from t=4: heads 1 token; t=5: lookup 3 tokens; t=8: no match ("5 9"), heads 1 token;
    # t=9 ("9 9"): no earlier match, 1 token; t=10: 1 token -> 7 tokens in 5 steps
    assert T._walk_with_lookup(data, rows, heads, 8) == 1.4


def test_feature_probe_trains_both_variants_from_the_same_start(tiny_model, data_file, tmp_path):
    """feature_probe: both variants train and walk (the mix's "final only" start is
    test_draft_layer's), and bad --layers fail in one line."""
    from vllm_nfoxhead.training.feature_probe import main as probe_main, parse_args, probe

    common = ["--model", str(tiny_model), "--data", str(data_file), "--eval-data", str(data_file),
              "--train-records", "8", "--steps", "3", "--draft-vocab", "32", "--answer-tokens", "6", "--quiet"]
    final, fused = probe(parse_args([*common, "--layers", "0", "1", "2"]))
    assert (final["variant"], fused["variant"], fused["layers"]) == ("final", "fused", [0, 1, 2])
    for report in (final, fused):
        assert set(report) >= {"whole", "first6"} and 1 <= report["first6"]["step_accept"] <= 5
    assert final["whole"] != fused["whole"]  # the mix trained: the fused layer drafts otherwise
    for bad in (["0", "1", "7"], ["2", "1", "0"]):
        with pytest.raises(SystemExit, match="not ascending layers of this 2-layer model"):
            probe_main([*common, "--layers", *bad])
