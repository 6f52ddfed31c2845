"""CLI: milliseconds a drafter spends per decoding step, heads against draft layer.

    python -m vllm_nfoxhead.tools.draft_cost --model DIR --heads A [B ...] [--batch 1 16] [--tree mc_sim_16]

Times the drafting computation the proposer runs each step (a chain of
num_heads tokens, and a tree) on this machine's CPU with the serving dtype:
heads step head by head over the draft vocabulary; a draft layer steps over
full windows of random entries. Every projection runs through the GEMM the
proposer uses (`--gemm vllm`: vLLM's linear layers, in a one-process vLLM
context; `--gemm torch`: `F.linear`, what serving used before), so this is the
drafting share of a step without the engine around it (median of --repeats
runs after a warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from vllm_nfoxhead.core.draft_layer import DraftLayer, load_layer
from vllm_nfoxhead.core.drafting import ChainDrafter, HeadStep
from vllm_nfoxhead.core.format import DRAFT_VOCAB_KEY, HeadsConfig, read_heads_tensors, validate_heads_dir
from vllm_nfoxhead.core.heads import NFoxHeads
from vllm_nfoxhead.core.layer_drafting import LayerStep, Windows
from vllm_nfoxhead.core.served_layer import GemmFactory, ServedLayer, torch_gemm
from vllm_nfoxhead.core.tree import TreeDrafter, parse_tree


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.tools.draft_cost",
                                description="Drafting milliseconds per step for heads and draft layers.")
    p.add_argument("--model", required=True, help="base model directory (its LM head and embeddings are read)")
    p.add_argument("--heads", required=True, nargs="+", help="heads directories to time")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="requests per step (default 1 16)")
    p.add_argument("--tree", default="mc_sim_16", help="tree preset or JSON paths to time as well (default %(default)s)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="serving dtype (default %(default)s)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per case (default %(default)s)")
    p.add_argument("--gemm", choices=("vllm", "torch"), default="vllm",
                   help="GEMM of every projection: vLLM's linear layers, as serving runs them, or F.linear "
                        "(default %(default)s)")
    return p.parse_args(argv)


def base_weights(model_dir: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(LM head [V, H], input embeddings [V, H]) of the base model."""
    from vllm_nfoxhead.training.trainer import embed_weight, lm_head_weight, load_base

    model = load_base(model_dir, torch.device("cpu"), "float32")
    return lm_head_weight(model).detach().to(dtype), embed_weight(model).detach().to(dtype)


@contextlib.contextmanager
def gemm_context(kind: str) -> Iterator[GemmFactory]:
    """The GEMM factory of `kind`; for "vllm", inside a one-process vLLM context (a default
    config and a world of one rank, which vLLM's linear layers need to be built)."""
    if kind == "torch":
        yield torch_gemm
        return
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import (destroy_distributed_environment, destroy_model_parallel,
                                  init_distributed_environment, initialize_model_parallel)
    from vllm.utils.network_utils import get_open_port

    from vllm_nfoxhead.integration.vllm_linear import vllm_gemm

    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{get_open_port()}")
        initialize_model_parallel(1, 1)
        try:
            yield vllm_gemm
        finally:
            destroy_model_parallel()
            destroy_distributed_environment()


def step_factory(config: HeadsConfig, tensors: dict[str, torch.Tensor], lm_head: torch.Tensor,
                 embed: torch.Tensor, batch: int, gemm: GemmFactory) -> Callable[[], HeadStep]:
    """A function returning a fresh drafting step for `batch` requests."""
    dtype = lm_head.dtype
    vocab = tensors.get(DRAFT_VOCAB_KEY)
    project = gemm((lm_head if vocab is None else lm_head[vocab]).contiguous())  # [V', H]
    if config.is_draft_layer:
        layer = DraftLayer(config.hidden_size, config.layer_spec).to(dtype)
        load_layer(layer, {k: v.to(dtype) for k, v in tensors.items() if v.is_floating_point()})
        served = ServedLayer(layer, gemm)
        windows = Windows(config.layer_spec.window)
        ids = [f"r{b}" for b in range(batch)]
        with torch.inference_mode():
            for r in ids:
                windows.append(r, served, torch.randn(windows.window, config.hidden_size, dtype=dtype))
        return lambda: LayerStep(served, windows, ids, project, lambda x: embed[x])
    heads = NFoxHeads(config).to(dtype)
    heads.load_format_tensors({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    if gemm is not torch_gemm:
        from vllm_nfoxhead.integration.vllm_linear import use_vllm_gemms

        use_vllm_gemms(heads.residual)
    hidden = torch.randn(batch, config.hidden_size, dtype=dtype)

    def step(k: int, r: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        ctx = embed[context] if config.token_conditioned else None  # [M, k+1, H]
        return project(heads.residual.head_state(k, hidden[r], ctx))

    return lambda: step


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    lm_head, embed = base_weights(args.model, dtype)
    tree = parse_tree(args.tree)
    print(f"{'heads':40s} {'batch':>5s} {'chain ms':>9s} {'tree ms':>8s}  "
          f"({tree.num_nodes}-node tree, {args.dtype}, {args.gemm} GEMMs)")
    with gemm_context(args.gemm) as gemm:
        for heads_dir in args.heads:
            config = validate_heads_dir(heads_dir)
            tensors = read_heads_tensors(heads_dir, config)
            vocab = tensors.get(DRAFT_VOCAB_KEY)
            for batch in args.batch:
                new_step = step_factory(config, tensors, lm_head, embed, batch, gemm)
                first = torch.zeros(batch, dtype=torch.long)
                with torch.inference_mode():
                    chain = time_ms(lambda: ChainDrafter(config.num_heads).draft_conditioned(
                        new_step(), first, vocab=vocab), args.repeats)
                    treed = time_ms(lambda: TreeDrafter(tree).draft_conditioned(new_step(), first, vocab=vocab),
                                    args.repeats)
                print(f"{heads_dir:40s} {batch:5d} {chain:9.2f} {treed:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
