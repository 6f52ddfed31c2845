"""python -m vllm_nfoxhead.tools.tree_builder: the best tree for measured head accuracies.

Reads per-rank accuracies (a JSON file, or a heads directory trained by
`python -m vllm_nfoxhead.training.train`), builds the tree with the largest
expected accepted length (core.tree_search) of a given size or of the size a
measured cost table favours, prints it as JSON and can store it as the heads'
default tree.

    python -m vllm_nfoxhead.tools.tree_builder --accuracies ACC.json (--nodes N | --cost-table COST.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.tree import DEFAULT_TOPK, parse_tree
from vllm_nfoxhead.core.tree_search import Accuracies, build_tree, choose_size, from_cumulative


def _load_json(path: str, what: str) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise NFoxHeadError(f"cannot read {what} file {path} ({exc})",
                            f"pass a readable JSON file to --{what}") from None


def _accuracies(path: str) -> object:
    """Per-rank accuracies from a JSON file, or from a heads directory trained by
    `python -m vllm_nfoxhead.training.train` (its config.json `extra.rank_accuracy`)."""
    if os.path.isdir(path):
        extra = _load_json(os.path.join(path, "config.json"), "accuracies").get("extra", {})
        if "rank_accuracy" not in extra:
            raise NFoxHeadError(f"{path}/config.json has no extra.rank_accuracy",
                                "pass heads written by `python -m vllm_nfoxhead.training.train`, or a JSON file")
        return extra["rank_accuracy"]
    acc = _load_json(path, "accuracies")
    return acc.get("accuracies") if isinstance(acc, dict) else acc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.tools.tree_builder",
        description="Build the NFoxHead tree with the largest expected accepted length from "
                    "per-head top-k accuracies; print it as JSON (medusa_choices notation).")
    p.add_argument("--accuracies", required=True, metavar="FILE.json|HEADS_DIR",
                   help="JSON list with one list per head: acc[k][r] = probability that head k's "
                        "rank-r token is correct (or an object with key 'accuracies'), or a heads "
                        "directory from `python -m vllm_nfoxhead.training.train` (uses its measured rank_accuracy)")
    p.add_argument("--cumulative", action="store_true",
                   help="the accuracies are cumulative top-1, top-2, ... values (converted to per-rank)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--nodes", type=int, metavar="N", help="build a tree of exactly N draft nodes")
    size.add_argument("--cost-table", metavar="FILE.json",
                      help='JSON object {"N": cost}: measured time of verifying N+1 tokens relative '
                           "to one plain step; picks N maximising (1 + expected accept) / cost(N)")
    p.add_argument("--max-depth", type=int, default=None,
                   help="deepest path allowed (default: number of heads in the accuracies)")
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                   help=f"most children per node / ranks used per head (default {DEFAULT_TOPK})")
    p.add_argument("--save-to", metavar="HEADS_DIR",
                   help="also store the tree as the default tree of these heads (their config.json "
                        "'tree', replaced atomically)")
    return p


def save_default_tree(heads_dir: str, tree: list[list[int]], info: dict) -> None:
    """Make `tree` the heads' default tree (config.json "tree"; `info` in extra.tree_builder)."""
    from vllm_nfoxhead.core.format import validate_heads_dir

    config = validate_heads_dir(heads_dir)
    parse_tree(tree, num_heads=config.num_heads)
    path = os.path.join(heads_dir, "config.json")
    data = _load_json(path, "save-to")
    data["tree"] = tree
    data.setdefault("extra", {})["tree_builder"] = info
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        acc = _accuracies(args.accuracies)
        if args.cumulative:
            acc = from_cumulative(_checked_shape(acc))
        if args.nodes is not None:
            built, extra = build_tree(acc, args.nodes, args.max_depth, args.topk), {}
        else:
            choice = choose_size(acc, _load_json(args.cost_table, "cost-table"),
                                 args.max_depth, args.topk)
            built = choice.built
            extra = {"cost": round(choice.cost, 6),
                     "tokens_per_unit_time": round(choice.tokens_per_time, 6)}
        result = {"tree": built.tree.to_list(), "nodes": built.tree.num_nodes,
                  "expected_accept_length": round(built.expected_accept, 6),
                  "expected_tokens_per_step": round(1 + built.expected_accept, 6), **extra}
        if args.save_to:
            save_default_tree(args.save_to, result["tree"],
                              {k: v for k, v in result.items() if k != "tree"})
    except NFoxHeadError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _checked_shape(acc: object) -> Accuracies:
    if not isinstance(acc, list) or not all(isinstance(r, list) and r for r in acc) or not acc:
        raise NFoxHeadError("accuracies must be a non-empty list of non-empty lists",
                            "give one list of top-k accuracies per head")
    return acc


if __name__ == "__main__":
    sys.exit(main())
