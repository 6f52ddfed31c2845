"""The plugin's replacement for vLLM's per-token expansion of sampling parameters."""

from __future__ import annotations

import torch

from vllm_nfoxhead.integration.patches import expand_batch_to_tokens


def test_expands_each_request_over_its_tokens_in_any_dtype():
    cu = torch.tensor([2, 2, 5], dtype=torch.int32)  # the middle request drafted nothing
    temperature = torch.tensor([0.0, 0.7, 0.25])
    assert expand_batch_to_tokens(temperature, cu, 5, replace_from=0, replace_to=1).tolist() == \
        [1.0, 1.0, 0.25, 0.25, 0.25]
    top_k = torch.tensor([5, 9, 64], dtype=torch.int32)
    out = expand_batch_to_tokens(top_k, cu, 5)
    assert out.dtype == torch.int32 and out.tolist() == [5, 5, 64, 64, 64]


def test_vllm_cpu_expand_is_what_it_replaces():
    """vLLM's own function on its CPU build loses non-int64 results (the reason for the patch)."""
    import pytest
    from vllm.platforms import current_platform
    from vllm.v1.sample import rejection_sampler

    if not current_platform.is_cpu():
        pytest.skip("the patch applies to vLLM's CPU build only")
    current_platform.register_triton_kernel_overrides()
    original = getattr(rejection_sampler.expand_batch_to_tokens, "__wrapped__",
                       rejection_sampler.expand_batch_to_tokens)
    cu = torch.tensor([2, 5], dtype=torch.int32)
    x = torch.tensor([0.5, 0.25])
    assert original(x, cu, 5).tolist() != [0.5, 0.5, 0.25, 0.25, 0.25]
    assert expand_batch_to_tokens(x, cu, 5).tolist() == [0.5, 0.5, 0.25, 0.25, 0.25]
