"""Heads-only checkpoints of the reference trainer (FasterDecoding/Medusa).

- `medusa` (v0.1, e.g. FasterDecoding/medusa-vicuna-7b-v1.3): `config.json`
  (`base_model_name_or_path`, `medusa_num_heads`, `medusa_num_layers`) +
  `medusa_lm_head.pt`, keys `{i}.{l}.linear.{weight,bias}` and `{i}.{L}.weight`.
  The config's head count is often wrong (says 2, file holds 5): the weights win.
- `medusa-v2` ("version 2", train_legacy / TGI): `medusa_lm_head.safetensors` with
  only the residual blocks; logits come from the base model's LM head.

Both are read by one reader; the two names only pin which variant is expected.
"""

from __future__ import annotations

from pathlib import Path

from vllm_nfoxhead.core.errors import NFoxHeadError

from ..base_model import read_json
from ..checkpoint import LazyCheckpoint
from ..result import SourceHeads
from .base import FamilyReader
from .common import assemble, config_count, note_config_mismatch, parse_reference_keys

HEADS_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt", "medusa_lm_head.bin", "medusa_lm_head.pth")


def heads_file(path: Path) -> Path | None:
    """The heads-only weight file in a directory, if any."""
    for name in HEADS_FILES:
        if (path / name).is_file():
            return path / name
    return None


class MedusaHeadsReader(FamilyReader):
    """Reference heads-only checkpoint with per-head vocabulary projections."""

    name = "medusa"
    description = "heads-only: config.json + medusa_lm_head.pt/.safetensors with {i}.{L}.weight projections"
    shared: bool | None = False  # None: accept either

    @classmethod
    def matches(cls, path: Path) -> bool:
        return heads_file(path) is not None

    def read(self, path: Path, quiet: bool = False, vocab_hint: int | None = None) -> SourceHeads:
        wfile = heads_file(path)
        if wfile is None:
            raise NFoxHeadError(
                f"{path} has no {' / '.join(HEADS_FILES)}",
                "point at the directory the Medusa trainer saved the heads into",
            )
        cfg_file = path / "config.json"
        config = read_json(cfg_file, "heads' config.json") if cfg_file.is_file() else {}
        warnings: list[str] = []
        if not config:
            warnings.append(f"{cfg_file} is missing; head count and layers come from the weights")
        ckpt = LazyCheckpoint.from_file(wfile)
        layouts = parse_reference_keys(ckpt.names, "", str(wfile))
        shared = layouts[0].proj is None
        if self.shared is not None and shared != self.shared:
            other = "medusa-v2" if shared else "medusa"
            raise NFoxHeadError(
                f"{wfile} {'has no' if shared else 'has'} per-head vocabulary projections, "
                f"so it is not the {self.name!r} family",
                f"use --format {other} (or leave --format out)",
            )
        note_config_mismatch(warnings, str(cfg_file), "medusa_num_heads",
                             config_count(config, "medusa_num_heads"), len(layouts), "heads")
        note_config_mismatch(warnings, str(cfg_file), "medusa_num_layers",
                             config_count(config, "medusa_num_layers"), len(layouts[0].blocks),
                             "residual layers per head")
        vocab = config_count(config, "vocab_size") or vocab_hint
        base = str(config.get("base_model_name_or_path") or config.get("_name_or_path") or "")
        extra = {"converted_from": self.name if not shared else "medusa-v2"}
        return assemble(
            "medusa-v2" if shared else "medusa", ckpt, layouts, where=str(wfile), base_model=base,
            vocab_size=vocab, warnings=warnings, quiet=quiet, extra=extra,
        )


class MedusaV2HeadsReader(MedusaHeadsReader):
    """Reference "version 2" heads-only checkpoint: residual blocks only, shared LM head."""

    name = "medusa-v2"
    description = "heads-only, shared base LM head: medusa_lm_head.safetensors with only {i}.{l}.linear.*"
    shared = True


class AnyMedusaHeadsReader(MedusaHeadsReader):
    """Auto-detection: either variant, decided by the keys in the file."""

    shared = None
