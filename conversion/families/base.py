"""The interface every family reader implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from ..result import SourceHeads


class FamilyReader(ABC):
    """Reads one checkpoint family into a `SourceHeads` (checks first, then tensors).

    Subclasses set `name` (the `--format` value) and `description` (for --help),
    and implement `matches` (cheap: file names, config keys, index keys only) and
    `read`.
    """

    name: str = ""
    description: str = ""

    @classmethod
    @abstractmethod
    def matches(cls, path: Path) -> bool:
        """Whether `path` looks like this family, without reading tensor data."""

    @abstractmethod
    def read(self, path: Path, quiet: bool = False, vocab_hint: int | None = None) -> SourceHeads:
        """All checks, then the head tensors. `vocab_hint`: base vocabulary size, if known."""
