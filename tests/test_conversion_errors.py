"""Converter bad input: every case ends in one `error: NFoxHead: ... Fix: ...` line,
exit status 2, and no output directory (nothing half-written, no staging leftovers).
Also: a malicious pickle is refused and not executed.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import conversion.to_vllm as to_vllm
from conversion.to_vllm import main
from test_conversion import H, V, rand_ref_tensors, reference_medusa_head, write_base_model, write_full_model, write_medusa_v1


def fails(capsys, tmp_path: Path, *argv, rc: int = 2) -> str:
    """Run the CLI expecting failure; returns stderr. Checks nothing was written."""
    out = tmp_path / "out"
    code = main([str(a) for a in argv] + ["--output", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == rc, err
    if rc == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: NFoxHead: ") and ". Fix: " in last, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name or p.name.startswith(".out.")]
    return err


def heads_pt(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "medusa_lm_head.pt") -> Path:
    d = tmp_path / "in"
    d.mkdir(parents=True)
    if name.endswith(".safetensors"):
        save_file(tensors, str(d / name))
    else:
        torch.save(tensors, d / name)
    (d / "config.json").write_text(json.dumps({"medusa_num_heads": 5, "medusa_num_layers": 1}))
    return d


def test_unknown_layout(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hi")
    assert "unknown checkpoint layout" in fails(capsys, tmp_path, tmp_path / "in")
    assert "is not a directory" in fails(capsys, tmp_path, tmp_path / "in" / "notes.txt")


def test_unknown_head_tensor_name(tmp_path, capsys):
    t = rand_ref_tensors(2, 1, True)
    t["0.0.linear.scale"] = torch.ones(H)
    assert "unknown head tensor '0.0.linear.scale'" in fails(capsys, tmp_path, heads_pt(tmp_path, t))


def test_missing_files(tmp_path, capsys):
    # index names a shard (holding head tensors) that is not there
    write_full_model(tmp_path / "in", rand_ref_tensors(2, 1, True, prefix="medusa_head."), "safetensors")
    (tmp_path / "in" / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors is missing" in fails(capsys, tmp_path, tmp_path / "in")
    # forced family whose file is absent
    (tmp_path / "empty").mkdir()
    assert "has no medusa_lm_head" in fails(capsys, tmp_path, tmp_path / "empty", "--format", "medusa")
    # base model without config.json
    d = heads_pt(tmp_path / "c", rand_ref_tensors(2, 1, True))
    (tmp_path / "nobase").mkdir()
    assert "config.json is missing" in fails(capsys, tmp_path, d, "--base-model", tmp_path / "nobase")


def test_bad_index_json(tmp_path, capsys):
    write_full_model(tmp_path / "in", rand_ref_tensors(2, 1, True, prefix="medusa_head."), "bin")
    (tmp_path / "in" / "pytorch_model.bin.index.json").write_text("{\"metadata\": {}}")
    assert "not a valid index JSON" in fails(capsys, tmp_path, tmp_path / "in")


@pytest.mark.parametrize("name", ["medusa_lm_head.pt", "medusa_lm_head.safetensors"])
def test_truncated_file(tmp_path, capsys, name):
    d = heads_pt(tmp_path, rand_ref_tensors(3, 1, True), name)
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in fails(capsys, tmp_path, d)


def test_truncated_shard(tmp_path, capsys):
    write_full_model(tmp_path / "in", rand_ref_tensors(2, 1, True, prefix="medusa_head."), "bin")
    shard = tmp_path / "in" / "pytorch_model-00002-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert "truncated or corrupt" in fails(capsys, tmp_path, tmp_path / "in")


def test_inconsistent_shapes(tmp_path, capsys):
    t = rand_ref_tensors(3, 1, True)
    t["1.0.linear.weight"] = torch.randn(H, H + 8)
    err = fails(capsys, tmp_path, heads_pt(tmp_path, t))
    assert "inconsistent shapes: 1.0.linear.weight is [32, 40], expected [32, 32]" in err
    t = rand_ref_tensors(3, 1, True)
    t["2.1.weight"] = torch.randn(V + 1, H)
    err = fails(capsys, tmp_path / "b", heads_pt(tmp_path / "b", t))
    assert "inconsistent shapes: 2.1.weight is [49, 32], expected [48, 32]" in err


def test_layer_counts_differ(tmp_path, capsys):
    t = rand_ref_tensors(3, 1, True)
    t = {k: v for k, v in t.items() if not k.startswith("1.")}
    t.update({"1" + k[1:]: v for k, v in rand_ref_tensors(1, 2, True).items()})  # head 1: two blocks
    err = fails(capsys, tmp_path, heads_pt(tmp_path, t))
    assert "layer counts differ between heads (head 0: 1, head 1: 2, head 2: 1)" in err


def test_missing_head(tmp_path, capsys):
    t = {k: v for k, v in rand_ref_tensors(3, 1, True).items() if not k.startswith("1.")}
    assert "heads [1] are missing" in fails(capsys, tmp_path, heads_pt(tmp_path, t))


def test_base_model_mismatch(tmp_path, capsys):
    d = heads_pt(tmp_path, rand_ref_tensors(2, 1, True))
    write_base_model(tmp_path / "wide", h=H * 2)
    assert f"heads have hidden size {H} but" in fails(capsys, tmp_path, d, "--base-model", tmp_path / "wide")
    write_base_model(tmp_path / "bigvocab", v=V + 16)
    assert f"heads have vocabulary size {V} but" in fails(capsys, tmp_path, d, "--base-model", tmp_path / "bigvocab")


def test_shared_heads_need_base_model(tmp_path, capsys):
    d = heads_pt(tmp_path, rand_ref_tensors(2, 1, False), "medusa_lm_head.safetensors")
    assert "vocabulary size is unknown" in fails(capsys, tmp_path, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "vocab_size": V}))
    err = fails(capsys, tmp_path, d, "--to", "vllm-medusa")
    assert "vLLM's Medusa format stores it as lm_head.weight" in err and "--base-model" in err
    assert "--verify needs it" in fails(capsys, tmp_path, d, "--verify")


def test_format_override_mismatch(tmp_path, capsys):
    write_medusa_v1(tmp_path / "in", reference_medusa_head(2, 1))
    err = fails(capsys, tmp_path, tmp_path / "in", "--format", "medusa-v2")
    assert "not the 'medusa-v2' family" in err and "--format medusa" in err


def test_options_out_of_range(tmp_path, capsys):
    write_medusa_v1(tmp_path / "in", reference_medusa_head(2, 1))
    assert "--num-heads 3 is out of range" in fails(capsys, tmp_path, tmp_path / "in", "--num-heads", "3")
    assert "tree JSON does not parse" in fails(capsys, tmp_path, tmp_path / "in", "--tree", "[[0]")
    # a tree deeper than the heads is refused before anything is written
    assert "tree depth 4 exceeds the 2 heads" in fails(capsys, tmp_path, tmp_path / "in", "--tree", "mc_sim_7b_63", "--num-heads", "2")


def test_truncated_vocab_vllm_medusa(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    save_file({"blocks.0.layers.0.weight": torch.zeros(H, H), "lm_heads.0.weight": torch.zeros(8, H),
               "token_map": torch.arange(8)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "medusa", "hidden_size": H, "vocab_size": V,
                                               "truncated_vocab_size": 8, "num_heads": 1}))
    assert "truncated draft vocabulary" in fails(capsys, tmp_path, d)


def test_existing_output_needs_force(tmp_path, capsys):
    write_medusa_v1(tmp_path / "in", reference_medusa_head(2, 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code = main([str(tmp_path / "in"), "-o", str(out), "--quiet"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "old"
    assert main([str(tmp_path / "in"), "-o", str(out), "--quiet", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    code = main([str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--force", "--quiet"])
    assert code == 2 and "would overwrite the input" in capsys.readouterr().err
    assert (tmp_path / "in" / "medusa_lm_head.pt").is_file()


def test_error_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A failure after the heads were written (here: the vLLM Medusa writer) publishes nothing."""
    write_medusa_v1(tmp_path / "in", reference_medusa_head(2, 1))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(to_vllm, "write_vllm_medusa", boom)
    with pytest.raises(OSError):
        main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--to", "vllm-medusa", "--quiet"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_verify_failure_writes_nothing(tmp_path, capsys):
    write_medusa_v1(tmp_path / "in", reference_medusa_head(2, 1))
    err = fails(capsys, tmp_path, tmp_path / "in", "--dtype", "float16", "--verify", "--tolerance", "0", rc=1)
    assert "verification failed; nothing was written" in err


class Evil:
    """Unpickling this would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_refused_not_executed(tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    d = tmp_path / "in"
    d.mkdir()
    payload = {"0.0.linear.weight": Evil(marker), "0.0.linear.bias": torch.zeros(H)}
    if how == "torch.save":
        torch.save(payload, d / "medusa_lm_head.pt")
    else:
        with open(d / "medusa_lm_head.pt", "wb") as f:
            pickle.dump(payload, f)
    assert not marker.exists()
    err = fails(capsys, tmp_path, d)
    assert "needs code to load; refused and not executed" in err
    assert not marker.exists()
