"""NFoxHeads against an independent computation of the head formula."""

from __future__ import annotations

import torch

from vllm_nfoxhead.core.format import HeadsConfig, head_key
from vllm_nfoxhead.core.heads import NFoxHeads


def reference_logits(tensors, k, layers, hidden, lm_head):
    x = hidden
    for layer in range(layers):
        w, b = tensors[head_key(k, layer, "weight")], tensors[head_key(k, layer, "bias")]
        x = x + torch.nn.functional.silu(x @ w.T + b)
    return x @ lm_head.T


def test_heads_match_formula_own_and_shared():
    torch.manual_seed(0)
    hidden = torch.randn(5, 16)
    base_lm_head = torch.randn(30, 16)
    for shared in (False, True):
        config = HeadsConfig(num_heads=3, num_layers=2, hidden_size=16, vocab_size=30,
                             shared_lm_head=shared)
        heads = NFoxHeads(config)
        tensors = {k: torch.randn_like(v) * 0.3 for k, v in heads.state_dict_for_format().items()}
        heads.load_format_tensors(tensors)
        got = heads(hidden, base_lm_head)
        assert got.shape == (3, 5, 30)
        for k in range(3):
            proj = base_lm_head if shared else tensors[head_key(k, None, "weight")]
            want = reference_logits(tensors, k, 2, hidden, proj)
            torch.testing.assert_close(got[k], want)


def test_layers_are_not_weight_tied():
    config = HeadsConfig(num_heads=1, num_layers=2, hidden_size=8, vocab_size=10, shared_lm_head=True)
    names = NFoxHeads(config).state_dict_for_format()
    assert names[head_key(0, 0, "weight")].data_ptr() != names[head_key(0, 1, "weight")].data_ptr()


def test_new_heads_start_as_identity():
    config = HeadsConfig(num_heads=2, num_layers=1, hidden_size=8, vocab_size=10, shared_lm_head=True)
    heads = NFoxHeads(config)
    torch.nn.init.zeros_(heads.residual.heads[0][0].linear.bias)
    hidden = torch.randn(3, 8)
    torch.testing.assert_close(heads.residual(hidden)[0], hidden)
