"""Speculation trees: rank paths, their validation, and the tensors a verifier needs.

Notation (Medusa's `medusa_choices`): a tree is a list of rank paths; [a, b, c]
is the top-a token of head 0, then the top-b token of head 1, then the top-c of
head 2 (0-based ranks). With Medusa heads a node's token depends only on (depth,
last rank): heads are not conditioned on the parent, so two nodes with the same
depth and last rank carry the same token on different branches. With
token-conditioned heads, head d runs once per node of depth d that has children,
given that node's path, so every branch gets its own candidates.

Indexing convention used everywhere in this package:
  * The ROOT is the token already sampled at the end of the previous step (the
    "bonus" token). It is not drafted; it is verified as row 0.
  * The N draft NODES are numbered 0..N-1 in (depth, lexicographic) order, so
    every parent comes before its children and depth is non-decreasing.
  * "Rows" of the verification batch are root + nodes: row 0 = root, row i+1 =
    node i. Masks and positions are [N+1]-shaped over rows; per-node tensors are
    [N]-shaped over nodes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vllm_nfoxhead.core.drafting import HeadStep
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.tree_presets import PRESETS

# vLLM caps drafted tokens per request at MAX_SPEC_LEN = 128; a tree may not exceed it.
MAX_TREE_NODES = 128
# Medusa's TOPK: ranks 0..9 of each head.
DEFAULT_TOPK = 10

Path = tuple[int, ...]
TreeSpec = str | Sequence[Sequence[int]]


@dataclass(frozen=True)
class Tree:
    """A validated tree: `paths` sorted by (depth, lexicographic); index i = node i."""

    paths: tuple[Path, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.paths)

    @property
    def max_depth(self) -> int:
        """Deepest path = number of heads the tree uses."""
        return len(self.paths[-1])

    @property
    def width(self) -> int:
        """1 + the largest rank used: how many top-k candidates to take from each head."""
        return 1 + max(max(p) for p in self.paths)

    @property
    def num_leaves(self) -> int:
        parents = {p[:-1] for p in self.paths}
        return sum(p not in parents for p in self.paths)

    def nodes_per_depth(self) -> list[int]:
        return [sum(len(p) == d for p in self.paths) for d in range(1, self.max_depth + 1)]

    def to_list(self) -> list[list[int]]:
        return [list(p) for p in self.paths]

    def buffers(self, device: torch.device | str = "cpu") -> TreeBuffers:
        """The tensors of this tree on `device` (built once per (tree, device), then cached)."""
        return _build_buffers(self.paths, str(torch.device(device)))


def parse_tree(spec: TreeSpec | Tree, *, num_heads: int | None = None, topk: int = DEFAULT_TOPK,
               max_nodes: int = MAX_TREE_NODES) -> Tree:
    """A Tree from a preset name, a JSON string or a list of paths, validated.

    num_heads: heads available (depth limit); None skips that check.
    topk: largest number of candidates per head (every rank must be < topk).
    max_nodes: size limit (default vLLM's MAX_SPEC_LEN, 128 drafted tokens).
    Raises NFoxHeadError naming the problem and the fix.
    """
    if isinstance(spec, Tree):
        spec = spec.to_list()
    if isinstance(spec, str):
        spec = _parse_string(spec)
    paths = _as_paths(spec)
    _check_paths(paths, num_heads=num_heads, topk=topk, max_nodes=max_nodes)
    return Tree(tuple(sorted(paths, key=lambda p: (len(p), p))))


def _parse_string(text: str) -> object:
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise NFoxHeadError(f"tree JSON does not parse ({exc.msg} at char {exc.pos})",
                                "write a JSON list of rank paths, e.g. [[0],[0,0],[1]]") from None
    raise NFoxHeadError(f"unknown tree preset {text!r}",
                        f"use one of {', '.join(sorted(PRESETS))} or a JSON list of rank paths")


def _as_paths(spec: object) -> list[Path]:
    example = "e.g. [[0],[0,0],[1]]"
    if not isinstance(spec, Sequence) or isinstance(spec, (str, bytes)) or len(spec) == 0:
        raise NFoxHeadError("tree must be a non-empty list of rank paths",
                            f"give a list of paths, {example}")
    paths = []
    for item in spec:
        if not isinstance(item, Sequence) or isinstance(item, (str, bytes)) or len(item) == 0:
            raise NFoxHeadError(f"tree path {item!r} is not a non-empty list of ranks",
                                f"write each path as a list of ranks, {example}")
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in item):
            raise NFoxHeadError(f"tree path {list(item)!r} holds a non-integer rank",
                                "use integer ranks (0 = top-1 token of that head)")
        if any(r < 0 for r in item):
            raise NFoxHeadError(f"tree path {list(item)!r} holds a negative rank",
                                "use ranks >= 0 (0 = top-1 token of that head)")
        paths.append(tuple(item))
    return paths


def _check_paths(paths: list[Path], *, num_heads: int | None, topk: int, max_nodes: int) -> None:
    seen: set[Path] = set()
    for p in paths:
        if p in seen:
            raise NFoxHeadError(f"tree path {list(p)} appears twice", "list each path once")
        seen.add(p)
    for p in paths:
        if len(p) > 1 and p[:-1] not in seen:
            raise NFoxHeadError(f"tree path {list(p)} lacks its prefix {list(p[:-1])}",
                                f"add {list(p[:-1])} (every prefix of a path must be in the tree)")
    if len(paths) > max_nodes:
        raise NFoxHeadError(f"tree has {len(paths)} nodes, more than the limit {max_nodes}",
                            f"use a tree of at most {max_nodes} nodes")
    depth = max(len(p) for p in paths)
    if num_heads is not None and depth > num_heads:
        raise NFoxHeadError(f"tree depth {depth} exceeds the {num_heads} heads available",
                            f"use a tree of depth <= {num_heads} or heads with more heads")
    rank = max(max(p) for p in paths)
    if rank >= topk:
        raise NFoxHeadError(f"tree uses rank {rank} but only top-{topk} candidates are taken",
                            f"use ranks < {topk}")


@dataclass(frozen=True, eq=False)
class TreeBuffers:
    """Everything a verifier needs about a tree, as tensors on one device (all int64 or bool).

    N = num_nodes (draft nodes, root excluded), D = max_depth, k = width.
    """

    num_nodes: int
    max_depth: int
    width: int
    depth: torch.Tensor             # [N] int64, 1-based depth of node i
    parent: torch.Tensor            # [N] int64, parent node index, -1 = root
    rank: torch.Tensor              # [N] int64, last rank of node i's path
    attn_mask: torch.Tensor         # [N+1, N+1] bool over rows; [q, kv] True = q may attend kv
    position_offsets: torch.Tensor  # [N+1] int64 over rows: 0 for root, depth for nodes
    topk_index: torch.Tensor        # [N] int64 into the flattened top-k [D*k]: (depth-1)*k + rank
    retrieve_paths: torch.Tensor    # [num_leaves, D] int64, node indices root->leaf, -1 padded
    node_paths: torch.Tensor        # [N, D] int64, node indices root->node i (incl. i), -1 padded
    ancestors: torch.Tensor         # [N, N] bool, [i, j] True = j is i or an ancestor of i
    children: torch.Tensor          # [N+1, k] int64 over rows: child node with that rank, -1 = none

    @property
    def num_leaves(self) -> int:
        return self.retrieve_paths.shape[0]


@functools.lru_cache(maxsize=64)
def _build_buffers(paths: tuple[Path, ...], device: str) -> TreeBuffers:
    n, d, k = len(paths), len(paths[-1]), 1 + max(max(p) for p in paths)
    index = {p: i for i, p in enumerate(paths)}
    parent = [index[p[:-1]] if len(p) > 1 else -1 for p in paths]
    node_paths = [[index[p[:j]] for j in range(1, len(p) + 1)] for p in paths]
    ancestors = torch.zeros(n, n, dtype=torch.bool)
    for i, chain in enumerate(node_paths):
        ancestors[i, chain] = True
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    mask[:, 0] = True                 # everyone sees the root
    mask[1:, 1:] = ancestors          # nodes see their ancestors and themselves
    children = torch.full((n + 1, k), -1, dtype=torch.long)
    for i, p in enumerate(paths):
        children[parent[i] + 1, p[-1]] = i
    leaves = [i for i in range(n) if i not in set(parent)]
    t = functools.partial(torch.tensor, dtype=torch.long)
    buffers = TreeBuffers(
        num_nodes=n, max_depth=d, width=k,
        depth=t([len(p) for p in paths]), parent=t(parent), rank=t([p[-1] for p in paths]),
        attn_mask=mask, position_offsets=t([0] + [len(p) for p in paths]),
        topk_index=t([(len(p) - 1) * k + p[-1] for p in paths]),
        retrieve_paths=t([_pad(node_paths[i], d) for i in leaves]),
        node_paths=t([_pad(c, d) for c in node_paths]),
        ancestors=ancestors, children=children,
    )
    return _to_device(buffers, torch.device(device))


def _pad(chain: list[int], length: int) -> list[int]:
    return chain + [-1] * (length - len(chain))


def _to_device(b: TreeBuffers, device: torch.device) -> TreeBuffers:
    fields = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
              for name, value in vars(b).items()}
    return TreeBuffers(**fields)


class TreeDrafter:
    """Drafter (see drafting.py) that fills a tree from the top-k of each head.

    Node i at depth d with last rank r takes the rank-r token of head d-1.
    """

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.num_heads_used = tree.max_depth

    def draft(self, head_logits: torch.Tensor) -> torch.Tensor:
        """head_logits [K, B, V] (K >= max_depth, any float dtype) -> draft tokens [B, N] int64."""
        b = self.tree.buffers(head_logits.device)
        heads = head_logits[: b.max_depth]
        top = heads.topk(b.width, dim=-1).indices           # [D, B, k]
        flat = top.permute(1, 0, 2).reshape(heads.shape[1], -1)  # [B, D*k]
        return flat[:, b.topk_index]                          # [B, N]

    def draft_conditioned(self, step: HeadStep, first: torch.Tensor,
                          vocab: torch.Tensor | None = None) -> torch.Tensor:
        """first [B] int64 (the sampled token t+1) -> draft tokens [B, N] int64.

        vocab [V'] int64: token id of each logit column when `step` scores a draft vocabulary.

        Level by level: head d runs for every (request, parent) pair, where the
        parents are the root and the depth-d nodes that have children, with the
        parent's path as context; its top-k fill the parent's children.
        """
        b, batch = self.tree.buffers(first.device), len(first)
        tokens = torch.zeros(batch, b.num_nodes, dtype=torch.long, device=first.device)
        for d, (parent_rows, child_pairs) in enumerate(_levels(self.tree.paths)):
            p = len(parent_rows)
            context = torch.empty(batch, p, d + 1, dtype=torch.long, device=first.device)
            context[:, :, 0] = first.view(-1, 1)
            if d > 0:  # parents are nodes at depth d: their path tokens
                paths = b.node_paths[torch.tensor(parent_rows, device=first.device) - 1, :d]  # [P, d]
                context[:, :, 1:] = tokens[:, paths]
            rows = torch.arange(batch, device=first.device).repeat_interleave(p)  # [B*P]
            logits = step(d, rows, context.view(batch * p, d + 1))  # [B*P, V]
            top = logits.topk(b.width, dim=-1).indices.view(batch, p * b.width)  # [B, P*k]
            top = top if vocab is None else vocab[top]
            src, dst = child_pairs
            tokens[:, dst] = top[:, src]
        return tokens


@functools.lru_cache(maxsize=64)
def _levels(paths: tuple[Path, ...]) -> list[tuple[list[int], tuple[list[int], list[int]]]]:
    """Per depth d: parent rows (0 = root, i+1 = node i) whose children take head d's
    top-k, and (index into the flattened [P*k] top-k, child node index) pairs."""
    index = {p: i for i, p in enumerate(paths)}
    width = 1 + max(max(p) for p in paths)
    levels = []
    for d in range(len(paths[-1])):
        parents = sorted({p[:-1] for p in paths if len(p) == d + 1})
        rows = [0 if not q else index[q] + 1 for q in parents]
        src, dst = [], []
        for j, q in enumerate(parents):
            for p in paths:
                if len(p) == d + 1 and p[:-1] == q:
                    src.append(j * width + p[-1])
                    dst.append(index[p])
        levels.append((rows, (src, dst)))
    return levels
