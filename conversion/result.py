"""The common in-memory result of every family reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vllm_nfoxhead.core.format import HeadsConfig

if TYPE_CHECKING:
    from .base_model import BaseModel
    from .checkpoint import LazyCheckpoint


@dataclass
class HeadLayout:
    """Where one head's tensors live in the source checkpoint (source tensor names).

    `blocks[l] = (weight name, bias name or None)`; a missing bias means zeros.
    `proj` is the head's own vocabulary projection, or None when the head uses
    the base model's LM head (shared).
    """

    blocks: list[tuple[str, str | None]]
    proj: str | None


@dataclass
class SourceHeads:
    """Heads read from any family: config + tensors under `format.head_key` names.

    `tensors` hold the source values (source dtype, not yet cast); `layouts` and
    `checkpoint` let `verify` recompute the original heads from the source names.
    """

    family: str
    config: HeadsConfig  # dtype = dtype of the source tensors
    tensors: dict[str, torch.Tensor]
    layouts: list[HeadLayout]
    checkpoint: "LazyCheckpoint"
    warnings: list[str] = field(default_factory=list)
    # A full-model checkpoint is its own base model (config + lm_head).
    embedded_base: "BaseModel | None" = None
    # vLLM `original_lm_head`: every head uses this one source projection.
    single_lm_head: str | None = None
