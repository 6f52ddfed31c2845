"""Exact tree sampling and chain sampling on the real engine are lossless; typical acceptance is not.

Plain sampling and NFoxHead tree sampling each draw the first tokens of the
same prompt many times (seeded, temperature 0.25); for each position a
two-sample chi-square test of homogeneity compares the token distributions.
With 3 positions tested at alpha = 1e-3 each, the chance of a false alarm on a
correct implementation is below 0.3% (and the seeds are fixed, so a run is
deterministic). The same harness must reject typical acceptance, which is not
lossless: that shows the test has the power to see a biased sampler.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from vllm import SamplingParams

from conftest import make_llm
from test_engine_greedy import metric

pytestmark = pytest.mark.engine

N_SAMPLES = 1500
ALPHA = 1e-3
TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
PARAMS = [SamplingParams(temperature=0.25, max_tokens=4, seed=s, ignore_eos=True)
          for s in range(N_SAMPLES)]
PROMPT = "the quick brown"


def homogeneity_p_value(a: Counter, b: Counter) -> float:
    """Two-sample chi-square test; tokens with expected count < 5 pooled into one cell."""
    tokens = sorted(set(a) | set(b))
    table = torch.tensor([[a[t], b[t]] for t in tokens], dtype=torch.float64)  # [cells, 2]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    small = expected[:, 0] < 5
    if small.any():
        table = torch.cat([table[~small], table[small].sum(0, keepdim=True)])
        expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    dof = table.shape[0] - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


def sample(model, speculative_config=None) -> tuple[list[tuple[int, ...]], float]:
    llm = make_llm(model, speculative_config=speculative_config, max_num_seqs=256)
    try:
        outs = llm.generate([PROMPT] * N_SAMPLES, PARAMS, use_tqdm=False)
        accepted = metric(llm, "vllm:spec_decode_num_accepted_tokens").value if speculative_config else 0
        return [tuple(o.outputs[0].token_ids) for o in outs], accepted
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def plain_samples(tiny_assets):
    return sample(tiny_assets[0])[0]


def p_values(plain, other) -> list[float]:
    return [homogeneity_p_value(Counter(t[pos] for t in plain), Counter(t[pos] for t in other))
            for pos in (1, 2, 3)]


def test_exact_tree_sampling_matches_plain_sampling(tiny_assets, plain_samples):
    spec, accepted = sample(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "tree": TREE})
    assert accepted > 0.1 * 3 * N_SAMPLES  # drafts were really accepted under sampling
    assert min(p_values(plain_samples, spec)) > ALPHA


def test_typical_acceptance_is_not_lossless(tiny_assets, plain_samples):
    spec, _ = sample(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "tree": TREE,
                                      "acceptance": "typical"})
    assert min(p_values(plain_samples, spec)) < ALPHA


def test_chain_sampling_matches_plain_sampling(tiny_assets, plain_samples):
    """vLLM's own rejection sampler verifies chains; on its CPU build it needs the
    plugin's expand fix (patches.patch_cpu_expand), else p < 1e-200 here."""
    spec, accepted = sample(tiny_assets[0], {"model": f"nfoxhead:{tiny_assets[1]}", "tree": "chain"})
    assert accepted > 0.1 * 3 * N_SAMPLES
    assert min(p_values(plain_samples, spec)) > ALPHA


def test_draft_layer_sampling_matches_plain_sampling(tiny_assets, draft_layer, plain_samples):
    """The draft layer through the tree path under sampling: lossless as well."""
    spec, accepted = sample(tiny_assets[0], {"model": f"nfoxhead:{draft_layer}", "tree": TREE})
    assert accepted > 0.1 * 3 * N_SAMPLES
    assert min(p_values(plain_samples, spec)) > ALPHA
