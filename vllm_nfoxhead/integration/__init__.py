"""The vLLM-facing layer: config translation, runner hooks, the proposer.

`register` is the `vllm.general_plugins` entry point; vLLM calls it in every
process it starts, so it only installs idempotent wrappers.
"""

from __future__ import annotations

import logging

# A child of vLLM's own logger, so the lines appear wherever vLLM configures its logging.
logger = logging.getLogger("vllm.nfoxhead")


def register() -> None:
    """Entry point: enable `nfoxhead:HEADS_DIR` in every vLLM spelling."""
    from vllm_nfoxhead.integration.patches import SUPPORTED_VLLM, patch_engine_args, vllm_version

    try:
        patch_engine_args()
    except (ImportError, AttributeError, KeyError) as exc:
        # A vLLM whose EngineArgs moved: stay out of the way of users who do not
        # ask for NFoxHead, and say why it is unavailable.
        logger.warning(
            "vllm-nfoxhead is disabled: vLLM %s is not supported (supported: %s): %s",
            vllm_version(), ", ".join(SUPPORTED_VLLM), exc,
        )
