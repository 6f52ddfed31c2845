"""The speculation methods a benchmark run compares, as vLLM speculative configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_nfoxhead.core.format import read_heads_tensors, validate_heads_dir


@dataclass(frozen=True)
class Method:
    name: str
    speculative_config: dict[str, Any] | None
    lossless: bool = True  # greedy output must equal plain decoding


def nfoxhead_methods(heads: Path, trees: list[Any], num_tokens: int | None,
                     load_policies: tuple[str, ...] = ("auto",), label: str = "",
                     lookups: tuple[int, ...] = (0,)) -> list[Method]:
    """The chain and each tree, once per load policy ('off' variants are named '... policy-off')
    and per prompt-lookup length (0: heads only; N: named '...+lookupN').

    `label` tells apart a second set of heads ('nfoxhead-chain[medusa-heads]')."""
    chain: dict[str, Any] = {"model": f"nfoxhead:{heads}", "tree": "chain"}  # even if the heads name a tree
    if num_tokens:
        chain["num_speculative_tokens"] = num_tokens
    base = [("nfoxhead-chain", chain)]
    base += [(tree_method_name(t), {"model": f"nfoxhead:{heads}", "tree": t}) for t in trees]
    if label:
        base = [(f"{name}[{label}]", spec) for name, spec in base]
    return [Method(name + (f"+lookup{n}" if n else "") + ("" if policy == "auto" else f" policy-{policy}"),
                   {**spec, "load_policy": policy, "lookup": n})
            for name, spec in base for n in lookups for policy in load_policies]


def tree_method_name(tree: Any) -> str:
    """'nfoxhead-tree:PRESET', or 'nfoxhead-tree(N)' for an explicit N-node tree."""
    if isinstance(tree, str) and not tree.lstrip().startswith("["):
        return f"nfoxhead-tree:{tree}"
    from vllm_nfoxhead.core.tree import parse_tree

    return f"nfoxhead-tree({parse_tree(tree).num_nodes})"


def ngram_method(num_tokens: int) -> Method:
    return Method(f"ngram-k{num_tokens}", {"method": "ngram", "num_speculative_tokens": num_tokens,
                                           "prompt_lookup_max": 4, "prompt_lookup_min": 2})


def vllm_medusa_method(model: Path, heads: Path, workdir: Path) -> Method | None:
    """vLLM 0.32's built-in Medusa (chain) with Medusa heads, written by the converter's writer."""
    import vllm

    if not vllm.__version__.startswith("0.32"):
        return None  # removed in vLLM 0.33
    from conversion.base_model import BaseModel
    from conversion.vllm_medusa import write_vllm_medusa

    config = validate_heads_dir(heads)
    dest = workdir / "vllm-medusa"
    if not dest.exists():
        base_lm_head = BaseModel.from_dir(model).lm_head() if config.shared_lm_head else None
        write_vllm_medusa(dest, config, read_heads_tensors(heads, config), base_lm_head)
    return Method("vllm-medusa", {"method": "medusa", "model": str(dest),
                                  "num_speculative_tokens": config.num_heads})
