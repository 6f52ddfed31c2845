"""The base model the heads read from: sizes from config.json, LM head on demand.

Nothing here loads the model: `lm_head()` reads one tensor lazily (safetensors
`get_tensor` or an mmapped pickle shard), so a 70B base costs one [V, H] read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import read_json_object

from .checkpoint import LazyCheckpoint

LM_HEAD_NAMES = ("lm_head.weight", "language_model.lm_head.weight", "model.lm_head.weight")
EMBED_NAMES = (
    "model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
    "language_model.model.embed_tokens.weight",
    "transformer.wte.weight",
)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a (possibly multimodal) HF config."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) and "hidden_size" in inner else config


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from disk (the `what` of a model directory), or a one-line NFoxHeadError."""
    return read_json_object(path, f"point at a directory that holds the {what}", "repair or re-download it")


@dataclass
class BaseModel:
    """Sizes and (lazy) LM head of a local HF model directory."""

    path: Path
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool | None
    name: str
    _lm_head: torch.Tensor | None = field(default=None, repr=False)
    _ckpt: LazyCheckpoint | None = field(default=None, repr=False)

    @classmethod
    def from_dir(cls, path: str | Path) -> "BaseModel":
        p = Path(path).expanduser()
        if not p.is_dir():
            raise NFoxHeadError(
                f"base model directory {str(p)!r} does not exist",
                "pass a local directory with the base model's config.json (and weights)",
            )
        raw = read_json(p / "config.json", "base model's config.json")
        cfg = text_config(raw)
        hidden, vocab = cfg.get("hidden_size"), cfg.get("vocab_size")
        if not isinstance(hidden, int) or not isinstance(vocab, int):
            raise NFoxHeadError(
                f"{p / 'config.json'} lacks integer hidden_size/vocab_size",
                "pass the base model's own directory as --base-model",
            )
        tie = cfg.get("tie_word_embeddings", raw.get("tie_word_embeddings"))
        name = str(raw.get("_name_or_path") or p)
        return cls(p, hidden, vocab, None if tie is None else bool(tie), name)

    def checkpoint(self) -> LazyCheckpoint:
        if self._ckpt is None:
            ckpt = LazyCheckpoint.from_dir(self.path)
            if ckpt is None:
                raise NFoxHeadError(
                    f"{self.path} holds no weight files (*.safetensors, pytorch_model*.bin)",
                    "pass a base model directory with its weights (the LM head is read from it)",
                )
            self._ckpt = ckpt
        return self._ckpt

    def lm_head_name(self) -> str:
        """Name of the LM head tensor; the input embedding if tied or absent."""
        ckpt = self.checkpoint()
        heads = [n for n in LM_HEAD_NAMES if n in ckpt]
        embeds = [n for n in EMBED_NAMES if n in ckpt]
        order = embeds + heads if self.tie_word_embeddings else heads + embeds
        if not order:
            raise NFoxHeadError(
                f"{self.path} has neither lm_head.weight nor model.embed_tokens.weight",
                "pass the base model's full checkpoint directory as --base-model",
            )
        return order[0]

    def lm_head(self, quiet: bool = True) -> torch.Tensor:
        """Base LM head weight [V, H], read lazily once."""
        if self._lm_head is None:
            name = self.lm_head_name()
            shape = self.checkpoint().shapes([name])[name]
            if tuple(shape) != (self.vocab_size, self.hidden_size):
                raise NFoxHeadError(
                    f"{self.path}: {name} has shape {list(shape)}, config.json implies "
                    f"[{self.vocab_size}, {self.hidden_size}]",
                    "repair the base model directory",
                )
            self._lm_head = self.checkpoint().read([name], desc="reading base LM head", quiet=quiet)[name]
        return self._lm_head
