"""All-or-nothing output: everything is written into temp dirs next to the
destinations and moved into place only when complete (and verified).

An error or Ctrl-C before `publish` leaves no trace; an existing destination is
only replaced with `force`, and then swapped out via a rename, not deleted first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from vllm_nfoxhead.core.errors import NFoxHeadError


def check_destination(dest: Path, force: bool, inputs: list[Path]) -> None:
    """Refuse an existing output without --force, and outputs that would hit an input."""
    resolved = dest.expanduser().resolve()
    for src in inputs:
        src = src.expanduser().resolve()
        if resolved == src or resolved in src.parents:
            raise NFoxHeadError(f"output {resolved} would overwrite the input {src}",
                                "choose an output directory outside the input")
    if resolved.exists() and not force:
        raise NFoxHeadError(f"{resolved} already exists", "choose another --output or pass --force")
    if resolved.exists() and not resolved.is_dir():
        raise NFoxHeadError(f"{resolved} exists and is not a directory", "choose another --output")


class StagedOutput:
    """Temp dirs for a set of destinations; `publish()` moves them into place.

    Use as a context manager: whatever is not published is removed on exit.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, Path]] = []  # (temp root, staged dir, destination)

    def stage(self, dest: Path) -> Path:
        """A not-yet-existing path in a temp dir beside `dest`, to write `dest`'s content into."""
        dest = dest.expanduser().resolve()
        dest.parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
        staged = root / dest.name
        self._staged.append((root, staged, dest))
        return staged

    def publish(self, force: bool) -> None:
        """Move every staged dir onto its destination (replacing it only with `force`)."""
        for _, _, dest in self._staged:
            if dest.exists() and not force:
                raise NFoxHeadError(f"{dest} already exists", "choose another --output or pass --force")
        for root, staged, dest in self._staged:
            backup = root / ".previous"
            if dest.exists():
                os.replace(dest, backup)
            try:
                os.replace(staged, dest)
            except BaseException:
                if backup.exists():
                    os.replace(backup, dest)
                raise

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        for root, _, _ in self._staged:
            shutil.rmtree(root, ignore_errors=True)
