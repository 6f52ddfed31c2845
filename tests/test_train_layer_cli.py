"""train_layer end to end on a tiny random Llama: output, learning, resume, --init-from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_training import _records, data_file, one_thread, tiny_model  # noqa: F401 (fixtures)
from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, read_heads_tensors, validate_heads_dir
from vllm_nfoxhead.training import train_layer as TL


def _cli(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output", str(out), "--cache-dir", str(cache),
            "--depth", "3", "--window", "8", "--epochs", "30", "--batch-tokens", "256", "--lr", "1e-2",
            "--base-dtype", "float32", "--quiet", *extra]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_heads_tensors(path, validate_heads_dir(path))


def test_writes_a_draft_layer_that_learned(tiny_model, data_file, tmp_path):
    """The answers count upwards: a layer that reads e(x_{t+1}) can draft them. Its walk
    must beat what the untrained (passthrough) layer drafts."""
    out, cache = tmp_path / "layer", tmp_path / "cache"
    assert TL.main(_cli(tiny_model, data_file, out, cache, "--eval-data", str(data_file),
                        "--draft-vocab", "60", "--eval-answer-tokens", "6")) == 0
    config = validate_heads_dir(out)
    assert config.is_draft_layer and config.draft_vocab_size == 60 and config.layer_spec.window == 8
    assert config.extra["training"]["draft_vocab"] == 60 and config.extra["training"]["window"] == 8
    assert len(_tensors(out)[DRAFT_VOCAB_KEY]) == 60
    walk = config.extra["offline_walk"]
    cut = f"{data_file}@first6"
    assert set(walk) == {"held_out", str(data_file), cut} and len(config.extra["rank_accuracy"]) == 3
    assert walk[cut]["positions"] < walk[str(data_file)]["positions"]
    untrained = tmp_path / "untrained"
    assert TL.main(_cli(tiny_model, data_file, untrained, cache, "--eval-data", str(data_file),
                        "--lr", "0")) == 0
    before = validate_heads_dir(untrained).extra["offline_walk"][str(data_file)]["chain_accept"]
    assert walk[str(data_file)]["chain_accept"] > before + 0.2, (walk, before)
    assert not TL._checkpoint_file(out).exists()


def test_an_interrupted_run_resumes_to_the_same_layer(tiny_model, data_file, tmp_path, monkeypatch, capsys):
    """Killed after 5 steps with a checkpoint after every step, the same command resumes and
    ends with the weights of a run that was never interrupted."""
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    assert TL.main(_cli(tiny_model, data_file, whole, cache)) == 0
    monkeypatch.setattr(TL, "CHECKPOINT_MINUTES", 0.0)
    real, calls = TL.layer_loss, []

    def killed_at_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(TL, "layer_loss", killed_at_step_6)
    out = tmp_path / "runs" / "resumed"  # its folder does not exist yet: checkpoints create it
    with pytest.raises(KeyboardInterrupt):
        TL.main(_cli(tiny_model, data_file, out, cache))
    assert TL._checkpoint_file(out).exists() and not out.exists()
    monkeypatch.setattr(TL, "layer_loss", real)
    assert TL.main(_cli(tiny_model, data_file, out, cache)) == 0
    assert "at step 5 of" in capsys.readouterr().out
    want, got = _tensors(whole), _tensors(out)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    assert not TL._checkpoint_file(out).exists()


def test_init_from_starts_from_a_trained_layer(tiny_model, data_file, tmp_path, capsys):
    """--init-from keeps the layer's weights, shape and draft vocabulary (with --lr 0 the
    output is the input); heads or a clashing flag are refused with one line."""
    cache, first = tmp_path / "cache", tmp_path / "first"
    assert TL.main(_cli(tiny_model, data_file, first, cache, "--draft-vocab", "50", "--window", "6")) == 0
    again = tmp_path / "again"
    args = _cli(tiny_model, data_file, again, cache, "--lr", "0", "--init-from", str(first))
    args.remove("--window"), args.remove("8")
    assert TL.main(args) == 0
    assert validate_heads_dir(again).layer_spec == validate_heads_dir(first).layer_spec
    want, got = _tensors(first), _tensors(again)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    with pytest.raises(SystemExit):
        TL.main(_cli(tiny_model, data_file, tmp_path / "x", cache, "--init-from", str(first), "--draft-vocab", "9"))
    assert "--init-from keeps that layer's shape and draft vocabulary" in capsys.readouterr().err
    from test_format import small_config, write_heads

    write_heads(tmp_path / "heads", small_config(hidden_size=32, vocab_size=64))
    with pytest.raises(SystemExit, match="holds heads, not a draft layer") as exc:
        TL.main(_cli(tiny_model, data_file, tmp_path / "y", cache, "--init-from", str(tmp_path / "heads")))
    assert "\n" not in str(exc.value)


def test_feature_layers_upgrade_a_final_state_layer(tiny_model, data_file, tmp_path, capsys):
    """--feature-layers on --init-from a layer fed the final state alone: the new mix starts
    as "final only" (with --lr 0 every other tensor is the input's, the mix an identity
    on the last block), the hidden states of those layers are cached apart, and the output
    keeps its feature layers when continued. Layers the model lacks, or other than
    --init-from's, are refused in one line."""
    cache, first = tmp_path / "cache", tmp_path / "first"
    assert TL.main(_cli(tiny_model, data_file, first, cache, "--draft-vocab", "50")) == 0
    fused = tmp_path / "fused"
    assert TL.main(_cli(tiny_model, data_file, fused, cache, "--lr", "0", "--init-from", str(first),
                        "--feature-layers", "0", "1")) == 0
    assert validate_heads_dir(fused).layer_spec.feature_layers == (0, 1)
    want, got = _tensors(first), _tensors(fused)
    assert got.keys() == want.keys() | {"draft_layer.mix.weight"}
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    mix = got["draft_layer.mix.weight"].float()  # [H, 3H]
    torch.testing.assert_close(mix, torch.cat([torch.zeros(32, 64), torch.eye(32)], dim=1))
    assert len(list(cache.glob("*.safetensors"))) == 2  # final states, and layers 0, 1 + final
    from vllm_nfoxhead.training.evaluate import parse_args as eval_args, walk

    common = ["--model", str(tiny_model), "--data", str(data_file), "--cache-dir", str(cache), "--base-dtype",
              "float32"]
    assert walk(eval_args([*common, "--heads", str(fused)])) == walk(eval_args([*common, "--heads", str(first)]))
    again = tmp_path / "again"
    assert TL.main(_cli(tiny_model, data_file, again, cache, "--init-from", str(fused), "--epochs", "1")) == 0
    assert validate_heads_dir(again).layer_spec.feature_layers == (0, 1)
    for bad, says in ((["--feature-layers", "1", "3"], "are not ascending layers of this 2-layer model"),
                      (["--init-from", str(fused), "--feature-layers", "1"], r"differ from --init-from's \[0, 1\]")):
        with pytest.raises(SystemExit, match=says) as exc:
            TL.main(_cli(tiny_model, data_file, tmp_path / "bad", cache, *bad))
        assert "\n" not in str(exc.value)


def test_crops_live_in_a_scratch_mapping_that_leaves_no_file(tmp_path) -> None:
    """The crops tensor is file-backed (RAM can drop its pages) and its file is gone at once,
    so no run leaves gigabytes behind, killed or not."""
    from vllm_nfoxhead.training.train_layer import disk_backed

    t = disk_backed(tmp_path / "cache" / "crops-1.bin", 5, 3)
    t[2] = 7
    assert t.shape == (5, 3) and t.dtype == torch.bfloat16
    assert t.sum().item() == 21 and list((tmp_path / "cache").iterdir()) == []
