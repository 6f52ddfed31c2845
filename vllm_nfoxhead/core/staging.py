"""Write a directory all at once: into a temp sibling, renamed into place on success.

An error (or Ctrl-C) leaves nothing half-written: the temp directory is removed
and an existing destination stays as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(dest: Path, mode: int = 0o755) -> Iterator[Path]:
    """Yield a temp directory next to `dest`; on success it replaces `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        tmp.chmod(mode)  # mkdtemp makes it private; the result is a normal directory
        for f in tmp.iterdir():
            if f.is_file():
                f.chmod(0o644)  # some writers (safetensors) create private files
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
