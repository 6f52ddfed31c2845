"""Time one tree-verification sampling step (TreeRejectionSampler) on synthetic logits.

    python -m vllm_nfoxhead.tools.bench.tree_sampler [--vocab 49152] [--tree 32] [--batch 1 4 16]

The batch is B tree requests drafting the same tree (greedy, then sampled at
temperature 0.8 / top-p 0.9), with vLLM's own RejectionSampler inside, as in the
runner. Prints the median milliseconds per call for each (B, mode). Used to
check that a change of the sampler is not slower on the CPU: run it on both
versions of the code, alternating, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from vllm_nfoxhead.core.tree import Tree
    from vllm_nfoxhead.integration.tree_step import TreeRequest


def build_inputs(vocab: int, tree: Tree, batch: int, temperature: float,
                 seed: int = 0) -> tuple[Any, torch.Tensor, Any, list[TreeRequest]]:
    """(spec metadata, logits, sampling metadata, tree requests) of one step."""
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    from vllm_nfoxhead.integration.tree_step import TreeRequest

    gen = torch.Generator().manual_seed(seed)
    n = tree.num_nodes
    logits = torch.randn(batch * (n + 1), vocab, generator=gen) * 3
    drafts = torch.randint(0, vocab, (batch * n,), generator=gen, dtype=torch.int32)
    num = [n] * batch
    sampled = np.cumsum([n + 1] * batch)
    metadata = SpecDecodeMetadata(
        draft_token_ids=drafts, num_draft_tokens=num,
        cu_num_draft_tokens=torch.tensor(np.cumsum(num), dtype=torch.int32),
        cu_num_sampled_tokens=torch.tensor(sampled, dtype=torch.int32),
        target_logits_indices=torch.tensor([b * (n + 1) + j for b in range(batch) for j in range(n)],
                                           dtype=torch.int32),
        bonus_logits_indices=torch.tensor(sampled - 1, dtype=torch.int32),
        logits_indices=torch.arange(int(sampled[-1]), dtype=torch.int32),
    )
    sampling = SamplingMetadata(
        temperature=torch.full((batch,), temperature), all_greedy=temperature == 0, all_random=temperature > 0,
        top_p=torch.full((batch,), 0.9) if temperature > 0 else None, top_k=None,
        generators={}, max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch), presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch), output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors(),
    )
    buffers = tree.buffers("cpu")
    requests = []
    for b in range(batch):
        try:
            requests.append(TreeRequest(b, b * (n + 1), 300, n, buffers, tree=tree))
        except TypeError:  # the sampler before device-side verification had no `tree` field
            requests.append(TreeRequest(b, b * (n + 1), 300, n, buffers))
    return metadata, logits, sampling, requests


def time_step(vocab: int, tree: Tree, batch: int, temperature: float, repeats: int) -> float:
    """Median ms per TreeRejectionSampler call."""
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    from vllm.v1.sample.sampler import Sampler

    from vllm_nfoxhead.integration.options import NFoxHeadOptions
    from vllm_nfoxhead.integration.tree_sampler import TreeRejectionSampler
    from vllm_nfoxhead.integration.tree_step import TreeStep, set_current_step

    inner = RejectionSampler(Sampler())

    def vllm_part(metadata, draft_probs, logits, sampling):
        # Greedy inside vLLM's sampler: its CPU build's sampled path needs a worker's state.
        return inner(metadata, draft_probs, logits, replace(sampling, all_greedy=True, all_random=False))

    sampler = TreeRejectionSampler(vllm_part, NFoxHeadOptions("unused"))
    metadata, logits, sampling, requests = build_inputs(vocab, tree, batch, temperature)
    times = []
    for _ in range(repeats + 2):  # two warm-up calls
        set_current_step(TreeStep(requests))
        work = logits.clone()
        start = time.perf_counter()
        sampler(metadata, None, work, sampling)
        times.append(time.perf_counter() - start)
    set_current_step(None)
    return 1000 * statistics.median(times[2:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2: 49152)")
    parser.add_argument("--tree", default="32",
                        help="tree: a preset name, JSON paths, or a node count N for the first N "
                             "paths of the 63-node mc_sim_7b_63 preset")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="tree requests per step")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (vLLM's CPU worker: 1 per rank core)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    from vllm.platforms import current_platform

    from vllm_nfoxhead.core.tree import parse_tree

    current_platform.register_triton_kernel_overrides()  # as a CPU worker does at start-up
    torch.set_num_threads(args.threads)
    spec = args.tree
    if spec.isdigit():
        spec = parse_tree("mc_sim_7b_63").to_list()[: int(spec)]
    tree = parse_tree(spec)
    results = []
    for batch in args.batch:
        for mode, temperature in (("greedy", 0.0), ("sampled", 0.8)):
            ms = time_step(args.vocab, tree, batch, temperature, args.repeats)
            results.append({"batch": batch, "mode": mode, "nodes": tree.num_nodes, "vocab": args.vocab, "ms": ms})
            print(f"B={batch:3d} {mode:8s} {tree.num_nodes} nodes  V={args.vocab}: {ms:8.2f} ms per step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
