"""Full-model checkpoints: the "1.0" family (FasterDecoding/medusa-1.0-*) and axolotl merges.

A base HF model directory (config.json + weights, sharded with an index JSON or
single-file, safetensors or `.bin`) that also holds `medusa_head.{i}.{l}.linear.*`
and `medusa_head.{i}.{L}.weight`. Only the head tensors are read; with an index
only the shards holding head tensors are opened. The directory doubles as the
base model (its config gives hidden/vocabulary sizes, its lm_head the shared head).
"""

from __future__ import annotations

from pathlib import Path

from vllm_nfoxhead.core.errors import NFoxHeadError

from ..base_model import BaseModel, read_json, text_config
from ..checkpoint import BIN_INDEX, SAFETENSORS_INDEX, LazyCheckpoint
from ..result import SourceHeads
from .base import FamilyReader
from .common import assemble, config_count, note_config_mismatch, parse_reference_keys

MARKER = "medusa_head."


def head_prefix(names: list[str], where: str) -> str | None:
    """The key prefix up to and including `medusa_head.` (e.g. `base_model.model.medusa_head.`)."""
    prefixes = {n[: n.index(MARKER) + len(MARKER)] for n in names if MARKER in n}
    if len(prefixes) > 1:
        raise NFoxHeadError(
            f"{where} holds head tensors under several prefixes {sorted(prefixes)}",
            "merge the adapter into one model before converting",
        )
    return next(iter(prefixes), None)


def _has_weights(path: Path) -> bool:
    return any(
        (path / n).is_file() for n in (SAFETENSORS_INDEX, BIN_INDEX)
    ) or any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


class FullModelReader(FamilyReader):
    """Base model + `medusa_head.*` tensors; reads the head tensors only."""

    name = "medusa-full"
    description = "full model (Medusa 1.0 / axolotl merge): base weights + medusa_head.{i}.* (sharded or not)"

    @classmethod
    def matches(cls, path: Path) -> bool:
        if not _has_weights(path):
            return False
        ckpt = LazyCheckpoint.from_dir(path)
        return ckpt is not None and head_prefix(ckpt.names, str(path)) is not None

    def read(self, path: Path, quiet: bool = False, vocab_hint: int | None = None) -> SourceHeads:
        ckpt = LazyCheckpoint.from_dir(path)
        if ckpt is None:
            raise NFoxHeadError(
                f"{path} holds no model weights ({SAFETENSORS_INDEX}, {BIN_INDEX}, *.safetensors, pytorch_model*.bin)",
                "point at the full-model checkpoint directory",
            )
        prefix = head_prefix(ckpt.names, ckpt.where)
        if prefix is None:
            raise NFoxHeadError(f"{ckpt.where} holds no medusa_head.* tensors",
                                "this is not a full Medusa model; pass --format or the heads directory")
        layouts = parse_reference_keys(ckpt.names, prefix, ckpt.where)
        cfg_file = path / "config.json"
        raw_cfg = read_json(cfg_file, "model's config.json")
        warnings: list[str] = []
        note_config_mismatch(warnings, str(cfg_file), "medusa_num_heads",
                             config_count(raw_cfg, "medusa_num_heads"), len(layouts), "heads")
        note_config_mismatch(warnings, str(cfg_file), "medusa_num_layers",
                             config_count(raw_cfg, "medusa_num_layers"), len(layouts[0].blocks),
                             "residual layers per head")
        embedded: BaseModel | None = None
        cfg = text_config(raw_cfg)
        if isinstance(cfg.get("hidden_size"), int) and isinstance(cfg.get("vocab_size"), int):
            embedded = BaseModel.from_dir(path)
            embedded._ckpt = ckpt  # same files, already indexed
        base_name = str(raw_cfg.get("base_model_name_or_path") or raw_cfg.get("_name_or_path") or "")
        source = assemble(
            self.name, ckpt, layouts, where=ckpt.where, base_model=base_name,
            vocab_size=(embedded.vocab_size if embedded else None) or vocab_hint,
            warnings=warnings, quiet=quiet, extra={"converted_from": self.name},
        )
        source.embedded_base = embedded
        return source
