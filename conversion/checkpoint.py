"""Lazy, safe access to tensors in checkpoint files.

Full-model checkpoints are many GB; the heads are a few hundred MB at most. A
`LazyCheckpoint` maps tensor names to files (from an index JSON or from the
safetensors headers) and reads only the tensors asked for:

- safetensors: `safe_open(...).get_tensor(name)`; shapes come from the header.
- torch pickles (`.bin`/`.pt`): `torch.load(mmap=True, weights_only=True)`, and only
  for the shards that hold a requested tensor. A pickle that needs code to load is
  refused (`weights_only=True` never executes it).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from vllm_nfoxhead.core.errors import NFoxHeadError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def _short(exc: BaseException) -> str:
    """First line of an exception message, for one-line errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def torch_load_safe(path: Path) -> dict[str, torch.Tensor]:
    """Load a torch pickle as a flat {name: tensor} dict without running its code.

    Uses `weights_only=True` (an explicit True cannot be overridden by torch's
    environment variables) and `mmap=True` where the file is a zip archive, so the
    tensors stay on disk until touched.
    """
    if not path.is_file():
        raise NFoxHeadError(f"{path} is missing", "re-download the checkpoint or fix its index JSON")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            # Legacy (non-zip) torch.save format: cannot be mapped, load it whole.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise NFoxHeadError(
            f"{path} is a pickle that needs code to load; refused and not executed ({_short(exc)})",
            "re-save the plain state_dict (torch.save(module.state_dict())) or safetensors "
            "on a machine where you trust its source",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NFoxHeadError(
            f"{path} is truncated or corrupt ({_short(exc)})", "re-download or re-copy the file"
        ) from exc
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise NFoxHeadError(
            f"{path} does not hold a flat state_dict of tensors",
            "save the heads with torch.save(module.state_dict())",
        )
    return obj


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header (reads only the header)."""
    if not path.is_file():
        raise NFoxHeadError(f"{path} is missing", "re-download the checkpoint or fix its index JSON")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise NFoxHeadError(
            f"{path} is truncated or corrupt ({_short(exc)})", "re-download or re-copy the file"
        ) from exc


def read_index(index_file: Path) -> dict[str, Path]:
    """`weight_map` of a HF index JSON as {tensor name: shard path}."""
    try:
        data = json.loads(index_file.read_text())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise NFoxHeadError(
            f"{index_file} is not a valid index JSON ({_short(exc)})",
            "re-download it; it must hold {\"weight_map\": {tensor: shard file}}",
        ) from exc
    return {name: index_file.parent / shard for name, shard in weight_map.items()}


class LazyCheckpoint:
    """Tensor names of one checkpoint (one or more files), read on demand."""

    def __init__(self, weight_map: dict[str, Path], where: str) -> None:
        self.weight_map = weight_map  # tensor name -> file holding it
        self.where = where  # for messages
        self._pickles: dict[Path, dict[str, torch.Tensor]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_file(cls, path: Path) -> "LazyCheckpoint":
        """One file; its names come from the safetensors header or the (mmapped) pickle."""
        if is_safetensors(path):
            shapes = safetensors_shapes(path)
            ckpt = cls({name: path for name in shapes}, str(path))
            ckpt._shapes.update(shapes)
            return ckpt
        tensors = torch_load_safe(path)
        ckpt = cls({name: path for name in tensors}, str(path))
        ckpt._pickles[path] = tensors
        return ckpt

    @classmethod
    def from_dir(cls, directory: Path) -> "LazyCheckpoint | None":
        """A HF model directory: index JSON if present, else the weight files.

        Returns None when the directory holds no model weights at all.
        """
        for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
            index_file = directory / index_name
            if index_file.is_file():
                return cls(read_index(index_file), str(index_file))
        st_files = sorted(directory.glob("*.safetensors"))
        if st_files:
            weight_map: dict[str, Path] = {}
            ckpt = cls(weight_map, str(directory))
            for f in st_files:
                shapes = safetensors_shapes(f)
                ckpt._shapes.update(shapes)
                weight_map.update({name: f for name in shapes})
            return ckpt
        bin_files = sorted(p for p in directory.glob("pytorch_model*.bin"))
        if bin_files:
            weight_map = {}
            ckpt = cls(weight_map, str(directory))
            for f in bin_files:
                tensors = torch_load_safe(f)
                ckpt._pickles[f] = tensors
                weight_map.update({name: f for name in tensors})
            return ckpt
        return None

    # -- access -------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _pickle(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._pickles:
            self._pickles[path] = torch_load_safe(path)
        return self._pickles[path]

    def shapes(self, names: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """Shapes of the given tensors, touching only the files that hold them."""
        out: dict[str, tuple[int, ...]] = {}
        for name in names:
            if name not in self._shapes:
                path = self.weight_map[name]
                if is_safetensors(path):
                    self._shapes.update(safetensors_shapes(path))
                else:
                    self._shapes[name] = tuple(self._pickle(path)[name].shape)
                if name not in self._shapes:
                    raise NFoxHeadError(
                        f"{self.where} lists {name} in {path.name}, but that file does not hold it",
                        "re-download the checkpoint (index and shards disagree)",
                    )
            out[name] = self._shapes[name]
        return out

    def dtypes(self, names: Iterable[str]) -> set[torch.dtype]:
        """Stored dtypes of the given tensors (header / mmapped metadata only)."""
        found: set[torch.dtype] = set()
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        for path, group in by_file.items():
            if is_safetensors(path):
                with safe_open(str(path), framework="pt") as f:
                    for name in group:
                        found.add(_ST_DTYPES.get(f.get_slice(name).get_dtype(), torch.float32))
            else:
                tensors = self._pickle(path)
                found.update(tensors[name].dtype for name in group)
        return found

    def read(self, names: Iterable[str], desc: str = "reading", quiet: bool = False) -> dict[str, torch.Tensor]:
        """Copy the given tensors into memory (fresh, unshared CPU tensors)."""
        names = list(dict.fromkeys(names))
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        with tqdm(total=len(names), desc=desc, unit="tensor", disable=quiet, leave=False) as bar:
            for path, group in by_file.items():
                if is_safetensors(path):
                    try:
                        with safe_open(str(path), framework="pt") as f:
                            for name in group:
                                out[name] = f.get_tensor(name)
                                bar.update(1)
                    except NFoxHeadError:
                        raise
                    except Exception as exc:
                        raise NFoxHeadError(
                            f"{path} is truncated or corrupt ({_short(exc)})",
                            "re-download or re-copy the file",
                        ) from exc
                else:
                    tensors = self._pickle(path)
                    for name in group:
                        # clone: leave the mmap, and untie tensors that share storage
                        out[name] = tensors[name].clone()
                        bar.update(1)
        return out

    def close(self) -> None:
        """Drop mmapped pickles."""
        self._pickles.clear()


_ST_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8,
}
