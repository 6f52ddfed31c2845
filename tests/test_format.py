"""The head format: config checks, safetensors checks, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import (
    HeadsConfig, check_base_compat, load_heads_config, read_heads_tensors, save_heads,
    validate_heads_dir,
)
from vllm_nfoxhead.core.heads import NFoxHeads


def small_config(**kw) -> HeadsConfig:
    base = dict(num_heads=3, num_layers=2, hidden_size=16, vocab_size=40, shared_lm_head=False)
    base.update(kw)
    return HeadsConfig(**base)


def write_heads(path, config: HeadsConfig | None = None):
    config = config or small_config()
    torch.manual_seed(0)
    heads = NFoxHeads(config)
    save_heads(path, config, heads.state_dict_for_format())
    return heads


def test_round_trip(tmp_path):
    heads = write_heads(tmp_path / "h")
    config = validate_heads_dir(tmp_path / "h")
    assert config == heads.config
    loaded = read_heads_tensors(tmp_path / "h", config)
    for name, t in heads.state_dict_for_format().items():
        assert torch.equal(loaded[name], t), name


def test_token_conditioned_round_trip_and_shapes(tmp_path):
    heads = write_heads(tmp_path / "h", small_config(conditioning="tokens"))
    config = validate_heads_dir(tmp_path / "h")
    assert config.token_conditioned and config == heads.config
    fuse = sorted(k for k in read_heads_tensors(tmp_path / "h", config) if ".fuse." in k)
    # head k reads tokens t+1..t+k+1: 1 + 2 + ... + K maps
    assert len(fuse) == sum(range(1, config.num_heads + 1))
    data = json.loads((tmp_path / "h" / "config.json").read_text())
    data["conditioning"] = "words"
    (tmp_path / "h" / "config.json").write_text(json.dumps(data))
    with pytest.raises(NFoxHeadError, match="unknown conditioning 'words'"):
        validate_heads_dir(tmp_path / "h")


def test_shared_lm_head_stores_no_projection(tmp_path):
    write_heads(tmp_path / "h", small_config(shared_lm_head=True))
    config = validate_heads_dir(tmp_path / "h")
    assert not any("lm_head" in k for k in read_heads_tensors(tmp_path / "h", config))


@pytest.mark.parametrize(
    "path_kind, message",
    [("missing", "does not exist"), ("no_config", "config.json is missing"),
     ("no_weights", "model.safetensors is missing")],
)
def test_missing_parts(tmp_path, path_kind, message):
    write_heads(tmp_path / "h")
    target = tmp_path / "h"
    if path_kind == "missing":
        target = tmp_path / "nope"
    elif path_kind == "no_config":
        (target / "config.json").unlink()
    else:
        (target / "model.safetensors").unlink()
    with pytest.raises(NFoxHeadError, match=message):
        validate_heads_dir(target)


def test_config_missing_keys_named(tmp_path):
    write_heads(tmp_path / "h")
    cfg = json.loads((tmp_path / "h/config.json").read_text())
    del cfg["hidden_size"], cfg["vocab_size"]
    (tmp_path / "h/config.json").write_text(json.dumps(cfg))
    with pytest.raises(NFoxHeadError, match="missing key\\(s\\) hidden_size, vocab_size"):
        load_heads_config(tmp_path / "h")


def test_config_not_json(tmp_path):
    write_heads(tmp_path / "h")
    (tmp_path / "h/config.json").write_text("{not json")
    with pytest.raises(NFoxHeadError, match="not valid JSON"):
        load_heads_config(tmp_path / "h")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights(tmp_path, damage):
    write_heads(tmp_path / "h")
    wfile = tmp_path / "h/model.safetensors"
    data = wfile.read_bytes()
    wfile.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(NFoxHeadError, match="corrupt or truncated"):
        validate_heads_dir(tmp_path / "h")


def test_config_disagrees_with_weights(tmp_path):
    write_heads(tmp_path / "h")
    cfg = json.loads((tmp_path / "h/config.json").read_text())
    cfg["num_heads"] = 5
    (tmp_path / "h/config.json").write_text(json.dumps(cfg))
    with pytest.raises(NFoxHeadError, match="lacks .* tensor"):
        validate_heads_dir(tmp_path / "h")
    cfg["num_heads"], cfg["vocab_size"] = 3, 41
    (tmp_path / "h/config.json").write_text(json.dumps(cfg))
    with pytest.raises(NFoxHeadError, match="shape \\[40, 16\\], config.json implies \\[41, 16\\]"):
        validate_heads_dir(tmp_path / "h")


def test_base_compat_names_both_sizes():
    config = small_config()
    check_base_compat(config, 16, 40, "base")
    with pytest.raises(NFoxHeadError, match="hidden size 16 but base has 32"):
        check_base_compat(config, 32, 40, "base")
    with pytest.raises(NFoxHeadError, match="vocabulary size 40 but base has 50"):
        check_base_compat(config, 16, 50, "base")


def test_save_refuses_existing_and_leaves_nothing_half_written(tmp_path):
    write_heads(tmp_path / "h")
    with pytest.raises(NFoxHeadError, match="already exists"):
        write_heads(tmp_path / "h")
    bad = {"heads.0.res.0.weight": torch.zeros(16, 16)}
    with pytest.raises(NFoxHeadError, match="do not match the config"):
        save_heads(tmp_path / "other", small_config(), bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]
