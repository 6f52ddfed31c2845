"""Input families: one reader class each, and automatic detection."""

from __future__ import annotations

from pathlib import Path

from vllm_nfoxhead.core.errors import NFoxHeadError

from .base import FamilyReader
from .full_model import FullModelReader
from .medusa_heads import AnyMedusaHeadsReader, MedusaHeadsReader, MedusaV2HeadsReader
from .vllm_medusa import VllmMedusaReader

# --format value -> reader class
READERS: dict[str, type[FamilyReader]] = {
    r.name: r for r in (MedusaHeadsReader, MedusaV2HeadsReader, FullModelReader, VllmMedusaReader)
}


def detect(path: Path) -> FamilyReader:
    """The reader for `path`, decided from file names, config keys and tensor names only."""
    if not path.is_dir():
        raise NFoxHeadError(
            f"input {str(path)!r} is not a directory",
            "pass the checkpoint directory (the one with config.json)",
        )
    if VllmMedusaReader.matches(path):
        return VllmMedusaReader()
    if AnyMedusaHeadsReader.matches(path):
        return AnyMedusaHeadsReader()
    if FullModelReader.matches(path):
        return FullModelReader()
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    raise NFoxHeadError(
        f"unknown checkpoint layout in {path} (found: {listing})",
        "expected medusa_lm_head.pt/.safetensors, a full model with medusa_head.* tensors, "
        "or a vLLM Medusa directory (model_type medusa); pass --format to force one",
    )


def reader_for(path: Path, family: str | None) -> FamilyReader:
    """`--format` reader, or the detected one."""
    if family in (None, "auto"):
        return detect(path)
    if not path.is_dir():
        raise NFoxHeadError(f"input {str(path)!r} is not a directory",
                            "pass the checkpoint directory (the one with config.json)")
    return READERS[family]()


__all__ = ["READERS", "FamilyReader", "detect", "reader_for"]
