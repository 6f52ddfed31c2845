"""Shared pieces of the family readers: the reference key layout and assembly.

Reference layout (FasterDecoding/Medusa `medusa_head` ModuleList, also axolotl),
relative to a prefix (`""` for heads-only files, `"medusa_head."` in full models):

    {i}.{l}.linear.weight  [H, H]   residual block l < L of head i
    {i}.{l}.linear.bias    [H]
    {i}.{L}.weight         [V, H]   head i's vocabulary projection (absent: shared LM head)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import DTYPES, HeadsConfig, head_key

from ..checkpoint import LazyCheckpoint
from ..result import HeadLayout, SourceHeads

_REF_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


def parse_reference_keys(names: Iterable[str], prefix: str, where: str) -> list[HeadLayout]:
    """Head layouts from reference-style keys under `prefix`; strict about gaps."""
    found: dict[int, dict[int, dict[str, str]]] = {}  # head -> index -> kind -> name
    for name in names:
        if not name.startswith(prefix):
            continue
        m = _REF_KEY.match(name[len(prefix):])
        if m is None:
            raise NFoxHeadError(
                f"{where}: unknown head tensor {name!r} (expected {prefix}{{i}}.{{l}}.linear.weight/bias "
                f"or {prefix}{{i}}.{{L}}.weight)",
                "pass --format to name the checkpoint family, or re-export the heads",
            )
        head, idx, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        found.setdefault(head, {}).setdefault(idx, {})[kind] = name
    if not found:
        raise NFoxHeadError(f"{where} holds no head tensors ({prefix or ''}{{i}}.{{l}}...)",
                            "check the path, or pass --format")
    heads = sorted(found)
    if heads != list(range(len(heads))):
        missing = sorted(set(range(heads[-1] + 1)) - set(heads))
        raise NFoxHeadError(
            f"{where}: heads {missing} are missing (found heads {heads})",
            "re-export the complete heads checkpoint",
        )
    layouts: list[HeadLayout] = []
    for head in heads:
        entries = found[head]
        blocks_idx = sorted(i for i, kinds in entries.items() if "linear.weight" in kinds)
        proj_idx = sorted(i for i, kinds in entries.items() if "weight" in kinds)
        if blocks_idx != list(range(len(blocks_idx))):
            raise NFoxHeadError(
                f"{where}: head {head} has residual blocks {blocks_idx}, not 0..{len(blocks_idx) - 1}",
                "re-export the heads; a block is missing",
            )
        n = len(blocks_idx)
        for i, kinds in entries.items():
            if "linear.bias" in kinds and "linear.weight" not in kinds:
                raise NFoxHeadError(f"{where}: {kinds['linear.bias']} has no matching weight",
                                    "re-export the heads; a tensor is missing")
        if proj_idx not in ([], [n]):
            raise NFoxHeadError(
                f"{where}: head {head} has projection(s) at index {proj_idx}, expected only "
                f"{prefix}{head}.{n}.weight after its {n} block(s)",
                "re-export the heads with the reference layout",
            )
        blocks = [(entries[i]["linear.weight"], entries[i].get("linear.bias")) for i in range(n)]
        layouts.append(HeadLayout(blocks, entries[n]["weight"] if proj_idx else None))
    check_layouts_agree(layouts, where)
    return layouts


def check_layouts_agree(layouts: list[HeadLayout], where: str) -> None:
    """Every head must have the same number of blocks and the same kind of projection."""
    counts = [len(lay.blocks) for lay in layouts]
    if len(set(counts)) > 1:
        detail = ", ".join(f"head {k}: {c}" for k, c in enumerate(counts))
        raise NFoxHeadError(
            f"{where}: layer counts differ between heads ({detail})",
            "all heads need the same number of residual layers; re-export them or keep the "
            "first heads with --num-heads",
        )
    own = [lay.proj is not None for lay in layouts]
    if len(set(own)) > 1:
        raise NFoxHeadError(
            f"{where}: some heads have their own vocabulary projection and some do not",
            "re-export the heads; all must share the base LM head or all have their own",
        )


def check_shapes(
    ckpt: LazyCheckpoint, layouts: list[HeadLayout], where: str
) -> tuple[int, int | None]:
    """Check every head tensor's shape against the others; returns (H, V or None)."""
    names = [n for lay in layouts for b in lay.blocks for n in b if n] + [
        lay.proj for lay in layouts if lay.proj
    ]
    shapes = ckpt.shapes(names)
    first = layouts[0]
    if first.blocks:
        hidden = shapes[first.blocks[0][0]][-1]
    else:
        hidden = shapes[first.proj][-1]  # type: ignore[index]
    vocab = shapes[first.proj][0] if first.proj else None

    def expect(name: str, shape: tuple[int, ...]) -> None:
        if tuple(shapes[name]) != shape:
            raise NFoxHeadError(
                f"{where}: head tensors have inconsistent shapes: {name} is {list(shapes[name])}, "
                f"expected {list(shape)} (hidden size {hidden}"
                + (f", vocabulary {vocab})" if vocab else ")"),
                "re-export the heads; every head must read the same hidden size and emit the same vocabulary",
            )

    for lay in layouts:
        for weight, bias in lay.blocks:
            expect(weight, (hidden, hidden))  # W [H, H]
            if bias:
                expect(bias, (hidden,))  # b [H]
        if lay.proj:
            expect(lay.proj, (vocab, hidden))  # W_vocab [V, H]
    return hidden, vocab


def source_dtype(ckpt: LazyCheckpoint, layouts: list[HeadLayout], warnings: list[str]) -> str:
    """Name of the stored dtype of the heads (float32 when mixed or unusual)."""
    names = [lay.blocks[0][0] if lay.blocks else lay.proj for lay in layouts]
    found = ckpt.dtypes([n for n in names if n])
    by_torch = {v: k for k, v in DTYPES.items()}
    if len(found) == 1 and next(iter(found)) in by_torch:
        return by_torch[next(iter(found))]
    warnings.append(f"head tensors are stored as {sorted(map(str, found))}; writing float32 unless --dtype says otherwise")
    return "float32"


def assemble(
    family: str,
    ckpt: LazyCheckpoint,
    layouts: list[HeadLayout],
    *,
    where: str,
    base_model: str,
    vocab_size: int | None,
    warnings: list[str],
    quiet: bool,
    extra: dict | None = None,
) -> SourceHeads:
    """Check shapes, read the tensors, and rename them to `format.head_key` names.

    Heads without residual blocks (axolotl `medusa_num_layers: 0`) become one
    identity block (W = 0, b = 0: x + SiLU(0) = x), which the format can hold.
    Missing biases become zeros.
    """
    hidden, proj_vocab = check_shapes(ckpt, layouts, where)
    vocab = proj_vocab or vocab_size
    if vocab is None:
        raise NFoxHeadError(
            f"{where}: the heads share the base model's LM head, so the vocabulary size is unknown",
            "pass --base-model DIR (a local copy of the base model; only its config.json and LM head are read)",
        )
    dtype = source_dtype(ckpt, layouts, warnings)
    names = [n for lay in layouts for b in lay.blocks for n in b if n] + [
        lay.proj for lay in layouts if lay.proj
    ]
    raw = ckpt.read(names, desc=f"reading {family} heads", quiet=quiet)
    num_layers = len(layouts[0].blocks)
    if num_layers == 0:
        warnings.append("heads have no residual blocks; writing one identity block (W=0, b=0) per head")
    tensors: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for k, lay in enumerate(layouts):
        for l, (weight, bias) in enumerate(lay.blocks):
            tensors[head_key(k, l, "weight")] = raw[weight]  # [H, H]
            if bias is None:
                tensors[head_key(k, l, "bias")] = torch.zeros(hidden, dtype=raw[weight].dtype)
            else:
                tensors[head_key(k, l, "bias")] = raw[bias]  # [H]
        if num_layers == 0:
            tensors[head_key(k, 0, "weight")] = torch.zeros(hidden, hidden, dtype=DTYPES[dtype])
            tensors[head_key(k, 0, "bias")] = torch.zeros(hidden, dtype=DTYPES[dtype])
        if lay.proj:
            # clone when several heads name one source tensor (safetensors refuses shared memory)
            src = raw[lay.proj]
            tensors[head_key(k, None, "weight")] = src.clone() if lay.proj in used else src  # [V, H]
            used.add(lay.proj)
    missing_bias = sum(1 for lay in layouts for _, b in lay.blocks if b is None)
    if missing_bias:
        warnings.append(f"{missing_bias} residual block(s) have no bias tensor; using zeros")
    config = HeadsConfig(
        num_heads=len(layouts),
        num_layers=max(num_layers, 1),
        hidden_size=hidden,
        vocab_size=vocab,
        shared_lm_head=layouts[0].proj is None,
        base_model=base_model,
        dtype=dtype,
        extra=dict(extra or {}),
    )
    return SourceHeads(family, config, tensors, layouts, ckpt, warnings)


def config_count(config: dict, *keys: str) -> int | None:
    """First integer value among `keys` of a config dict."""
    for key in keys:
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def note_config_mismatch(
    warnings: list[str], where: str, key: str, stated: int | None, actual: int, what: str
) -> None:
    """Configs of real checkpoints misstate head counts (#114: says 2, holds 5)."""
    if stated is not None and stated != actual:
        warnings.append(
            f"{where} says {key}={stated} but the weights hold {actual} {what}; "
            f"using {actual} (the weights are the truth)"
        )
