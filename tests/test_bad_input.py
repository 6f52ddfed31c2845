"""Bad NFoxHead input fails with one clear line before the engine starts.

Each case goes through vLLM's real config path (EngineArgs.create_engine_config,
which `LLM(...)` and `vllm serve` call before creating the engine); one case
goes through `LLM(...)` itself to show nothing else runs first.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from vllm.engine.arg_utils import EngineArgs

from vllm_nfoxhead.core.errors import NFoxHeadError


def engine_config(model, spec):
    args = EngineArgs(model=str(model), dtype="float32", max_model_len=512, speculative_config=spec)
    return args.create_engine_config()


@pytest.fixture
def heads_copy(tiny_assets, tmp_path):
    dest = tmp_path / "heads"
    shutil.copytree(tiny_assets[1], dest)
    return dest


def edit_config(heads_dir, **changes):
    cfg = json.loads((heads_dir / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (heads_dir / "config.json").write_text(json.dumps(cfg))


def test_good_heads_translate_to_custom_class(tiny_assets):
    cfg = engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}"})
    spec = cfg.speculative_config
    assert spec.method == "custom_class"
    assert spec.model == "vllm_nfoxhead.integration.proposer.NFoxHeadProposer"
    assert spec.num_speculative_tokens == 8  # default: the longer of one per head (4) and lookup (8)
    assert cfg.additional_config["nfoxhead"]["chain_tokens"] == 4
    assert cfg.additional_config["nfoxhead"]["heads_dir"] == str(tiny_assets[1])
    cfg = engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "lookup": 0})
    assert cfg.speculative_config.num_speculative_tokens == 4  # heads alone: one per head


def test_num_speculative_tokens_bounds_lookup_and_heads(tiny_assets):
    cfg = engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "num_speculative_tokens": 6})
    assert cfg.speculative_config.num_speculative_tokens == 6  # lookup drafts up to 6
    assert cfg.additional_config["nfoxhead"]["chain_tokens"] == 4  # the heads draft 4


def test_spec_model_flag_spelling(tiny_assets):
    args = EngineArgs(model=str(tiny_assets[0]), dtype="float32", max_model_len=512,
                      spec_model=f"nfoxhead:{tiny_assets[1]}", spec_tokens=2)
    spec = args.create_engine_config().speculative_config
    assert spec.method == "custom_class" and spec.num_speculative_tokens == 2


@pytest.mark.parametrize(
    "model, message",
    [("nfoxhead:", "names no heads directory"),
     ("nfoxhead:/no/such/heads", "heads directory '/no/such/heads' does not exist")],
)
def test_bad_heads_path(tiny_assets, model, message):
    with pytest.raises(NFoxHeadError, match=message):
        engine_config(tiny_assets[0], {"model": model})


def test_missing_config_keys(tiny_assets, heads_copy):
    edit_config(heads_copy, num_heads=None)
    with pytest.raises(NFoxHeadError, match="missing key\\(s\\) num_heads"):
        engine_config(tiny_assets[0], {"model": f"nfoxhead:{heads_copy}"})


def test_truncated_weights(tiny_assets, heads_copy):
    wfile = heads_copy / "model.safetensors"
    wfile.write_bytes(wfile.read_bytes()[:1000])
    with pytest.raises(NFoxHeadError, match="corrupt or truncated"):
        engine_config(tiny_assets[0], {"model": f"nfoxhead:{heads_copy}"})


def test_hidden_size_mismatch(tiny_assets, mismatched_heads):
    for field, heads in mismatched_heads:
        with pytest.raises(NFoxHeadError, match=field):
            engine_config(tiny_assets[0], {"model": f"nfoxhead:{heads}"})


def test_too_many_speculative_tokens(tiny_assets):
    with pytest.raises(NFoxHeadError, match="num_speculative_tokens=6 but .* only 4 heads .* at most 0"):
        engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}",
                                       "num_speculative_tokens": 6, "lookup": 0})
    with pytest.raises(NFoxHeadError, match="num_speculative_tokens=9 but .* lookup drafts at most 8"):
        engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "num_speculative_tokens": 9})


@pytest.mark.parametrize("lookup", [-1, 33, 2.5, "8", True])
def test_bad_lookup(tiny_assets, lookup):
    with pytest.raises(NFoxHeadError, match="lookup must be an integer 0..32"):
        engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "lookup": lookup})


def test_llm_fails_before_engine_start(tiny_assets, heads_copy):
    """Through LLM(...) itself: the error comes fast, before any engine process."""
    from vllm import LLM

    (heads_copy / "model.safetensors").unlink()
    start = time.monotonic()
    with pytest.raises(NFoxHeadError, match="model.safetensors is missing"):
        LLM(model=str(tiny_assets[0]), dtype="float32", max_model_len=512,
            speculative_config={"model": f"nfoxhead:{heads_copy}"})
    assert time.monotonic() - start < 10  # an engine start takes about 20 s here


@pytest.mark.parametrize(
    "extra, message",
    [({"load_policy": "sometimes"}, "unknown load_policy 'sometimes'"),
     ({"cost_table": "/nonexistent/cost.json"}, "cannot read cost_table /nonexistent/cost.json"),
     ({"cost_table": {"2": -1}}, "cost table holds a negative size or a non-positive cost")],
)
def test_bad_load_policy_options(tiny_assets, extra, message):
    with pytest.raises(NFoxHeadError, match=message):
        engine_config(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", **extra})


def test_tree_chain_overrides_the_heads_default_tree(tiny_assets, heads_copy):
    edit_config(heads_copy, tree="wide_6")
    cfg = engine_config(tiny_assets[0], {"model": f"nfoxhead:{heads_copy}"})
    assert cfg.speculative_config.num_speculative_tokens == 6  # the heads' tree
    cfg = engine_config(tiny_assets[0], {"model": f"nfoxhead:{heads_copy}", "tree": "chain"})
    assert cfg.additional_config["nfoxhead"]["tree"] is None
    assert cfg.speculative_config.num_speculative_tokens == 8  # one per head (4), or a lookup draft (8)
