"""Every user spelling, parsed by vLLM's real `vllm serve` argument parser."""

from __future__ import annotations

import json

import pytest
from vllm.engine.arg_utils import AsyncEngineArgs
# The parser `vllm serve` itself uses (its module moved between 0.32 and 0.33; this import works on both).
from vllm.entrypoints.cli.serve import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

PROPOSER = "vllm_nfoxhead.integration.proposer.NFoxHeadProposer"


def spec_from_cli(model, *flags):
    parser = make_arg_parser(FlexibleArgumentParser())
    args = parser.parse_args(["--model", str(model), "--dtype", "float32",
                              "--max-model-len", "512", *flags])
    return AsyncEngineArgs.from_cli_args(args).create_engine_config().speculative_config


@pytest.mark.parametrize("spelling", ["speculative-model", "spec-model", "speculative-config"])
def test_spellings(tiny_assets, spelling):
    model, heads = tiny_assets
    if spelling == "speculative-config":
        flags = ["--speculative-config",
                 json.dumps({"model": f"nfoxhead:{heads}", "num_speculative_tokens": 3})]
    else:
        flags = [f"--{spelling}", f"nfoxhead:{heads}", "--num-speculative-tokens", "3"]
    spec = spec_from_cli(model, *flags)
    assert (spec.method, spec.model, spec.num_speculative_tokens) == ("custom_class", PROPOSER, 3)


def test_other_methods_untouched(tiny_assets):
    spec = spec_from_cli(tiny_assets[0], "--speculative-config",
                         json.dumps({"method": "ngram", "num_speculative_tokens": 2}))
    assert spec.method == "ngram"


def test_unsupported_vllm_version_fails_loudly(tiny_assets, monkeypatch):
    """On a vLLM the patches were not written for, asking for NFoxHead stops at start-up."""
    import vllm
    from vllm.engine.arg_utils import EngineArgs

    from vllm_nfoxhead.core.errors import NFoxHeadError

    monkeypatch.setattr(vllm, "__version__", "0.31.2")
    args = EngineArgs(model=str(tiny_assets[0]), dtype="float32", max_model_len=512,
                      speculative_config={"model": f"nfoxhead:{tiny_assets[1]}"})
    with pytest.raises(NFoxHeadError, match=r"vLLM 0\.31\.2 is not supported \(supported: 0\.32\.x, 0\.33\.x\)"):
        args.create_engine_config()
