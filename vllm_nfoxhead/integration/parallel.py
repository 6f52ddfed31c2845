"""What NFoxHead can run under vLLM's pipeline parallelism, decided in the front end.

vLLM builds the custom_class drafter on the last pipeline stage only:
- vLLM's CPU build fails at start-up with any speculative method when
  pipeline_parallel_size > 1 (its stage-0 runner has no `drafter`): refused here
  with one line instead.
- On GPUs, earlier stages never see the step's tree positions and mask, so a
  tree would be verified with chain positions there: silently wrong. Under PP
  the plugin drafts a chain (vLLM verifies chains on every stage) and says so.
- vLLM 0.32's Ray executor reads drafts from global rank 0, which under PP is
  the first stage (no drafter): refused. In 0.33 "ray" is a subclass of the
  multiprocessing executor, which reads them from the last stage.
- A draft layer fed several base layers (feature_layers) needs those layers'
  states from every stage: refused under PP (options.check_feature_layers).
Tensor parallelism needs nothing here: every TP rank of the last stage drafts.
"""

from __future__ import annotations

from typing import Any

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.integration import logger
from vllm_nfoxhead.integration.options import ADDITIONAL_CONFIG_KEY


def check_pipeline_parallel(args: Any, stages: int, backend: str, vllm_version: str, on_cpu: bool) -> None:
    """Refuse or adapt an NFoxHead request (EngineArgs, translated) for `stages` pipeline
    stages on executor `backend` ("mp", "ray", ...); front end, before any engine memory."""
    if stages <= 1:
        return
    if on_cpu:
        raise NFoxHeadError(
            f"vLLM's CPU build cannot run speculative decoding with pipeline_parallel_size={stages} "
            "(its first stage has no drafter)",
            "use --pipeline-parallel-size 1 (--tensor-parallel-size works), or serve without speculation",
        )
    if backend == "ray" and vllm_version.startswith("0.32"):
        raise NFoxHeadError(
            f"vLLM {vllm_version}'s Ray executor reads drafts from the first pipeline stage, "
            "which has no drafter",
            "use --distributed-executor-backend mp, pipeline_parallel_size 1, or vLLM 0.33",
        )
    opts = args.additional_config[ADDITIONAL_CONFIG_KEY]
    if opts.get("tree") != "chain":  # an explicit tree, or the heads' default one
        logger.warning("NFoxHead: pipeline_parallel_size=%d: drafting a chain (tree verification "
                       "needs the tree mask on every stage)", stages)
        if opts.get("tree") is not None:
            (args.speculative_config or {}).pop("num_speculative_tokens", None)  # it followed the tree
        opts["tree"] = "chain"
