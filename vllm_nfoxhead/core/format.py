"""The project's head format on disk: a directory with `config.json` and
`model.safetensors` (spec in README.md, "Head format").

Reading is split into cheap checks (config, safetensors header, shapes) and the
actual tensor load, so that bad input fails before any engine memory exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_nfoxhead.core.draft_layer import DraftLayerSpec, layer_shapes
from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.staging import staged_directory

FORMAT_NAME = "nfoxhead"
FORMAT_VERSION = 1  # heads (architecture "heads"); a draft layer is written as version 2
LAYER_FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def head_key(head: int, layer: int | None, name: str) -> str:
    """On-disk tensor name: `heads.{k}.res.{l}.{weight|bias}` or `heads.{k}.lm_head.weight`."""
    if layer is None:
        return f"heads.{head}.lm_head.{name}"
    return f"heads.{head}.res.{layer}.{name}"


def fuse_key(head: int, offset: int) -> str:
    """On-disk name of token-conditioned head k's input map for token t+1+offset: [H, H]."""
    return f"heads.{head}.fuse.{offset}.weight"


CONDITIONINGS = ("none", "tokens")
ARCHITECTURES = ("heads", "draft_layer")
DRAFT_VOCAB_KEY = "draft_vocab"  # int64 [V'] sorted token ids


@dataclass
class HeadsConfig:
    """What `config.json` says about a set of heads."""

    num_heads: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    shared_lm_head: bool
    base_model: str = ""
    dtype: str = "float32"
    tree: Any = None  # None, a preset name, or a list of rank paths
    # "none": head k reads h_t only (Medusa). "tokens": head k also reads the
    # input embeddings of tokens t+1..t+k+1 (the sampled token and the drafted
    # ones before it), so drafting runs head by head (see heads.py).
    conditioning: str = "none"
    # Token ids the heads draft from (a `draft_vocab` tensor in model.safetensors):
    # the ids seen in training, so that drafting projects onto a few thousand
    # rows of the LM head instead of all of them. None: the full vocabulary.
    draft_vocab_size: int | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    # "heads": the residual heads above. "draft_layer": one decoder layer over a
    # window of hidden states that drafts num_heads tokens autoregressively
    # (core/draft_layer.py); its shape is the `draft_layer` object (DraftLayerSpec).
    architecture: str = "heads"
    draft_layer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. training metrics

    _REQUIRED = ("num_heads", "num_layers", "hidden_size", "vocab_size", "shared_lm_head")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "HeadsConfig":
        """A checked config from `config.json`'s object (`where`: the file, for messages)."""
        missing = [k for k in cls._REQUIRED if k not in data]
        if missing:
            raise NFoxHeadError(
                f"{where} is missing key(s) {', '.join(missing)}",
                "write them into config.json, or re-create the directory with "
                "`python -m conversion.to_vllm`",
            )
        if data.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise NFoxHeadError(
                f"{where} has format {data.get('format')!r}, not {FORMAT_NAME!r}",
                "convert the checkpoint with `python -m conversion.to_vllm`",
            )
        dv = data.get("draft_vocab_size")
        if dv is not None and (not isinstance(dv, int) or not 1 <= dv <= data["vocab_size"]):
            raise NFoxHeadError(f"{where}: draft_vocab_size must be an integer from 1 to vocab_size, got {dv!r}",
                                "set it to the length of the draft_vocab tensor, or remove it")
        for key in ("num_heads", "num_layers", "hidden_size", "vocab_size"):
            if not isinstance(data[key], int) or data[key] < 1:
                raise NFoxHeadError(
                    f"{where}: {key} must be a positive integer, got {data[key]!r}",
                    f"set {key} to the true value in config.json",
                )
        if data.get("dtype", "float32") not in DTYPES:
            raise NFoxHeadError(
                f"{where}: unknown dtype {data.get('dtype')!r}",
                f"use one of {', '.join(DTYPES)}",
            )
        if data.get("conditioning", "none") not in CONDITIONINGS:
            raise NFoxHeadError(
                f"{where}: unknown conditioning {data.get('conditioning')!r}",
                f"use one of {', '.join(CONDITIONINGS)}",
            )
        _check_architecture(data, where)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "extra"}
        known["shared_lm_head"] = bool(known["shared_lm_head"])
        return cls(**known, extra=dict(data.get("extra", {})))

    def to_dict(self) -> dict[str, Any]:
        """The config as `config.json` holds it."""
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the weights are stored in."""
        return DTYPES[self.dtype]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor `model.safetensors` must hold, with its shape."""
        h, v = self.hidden_size, self.vocab_size
        shapes: dict[str, tuple[int, ...]] = {}
        if self.is_draft_layer:
            shapes.update(layer_shapes(h, self.layer_spec))
            if self.draft_vocab_size:
                shapes[DRAFT_VOCAB_KEY] = (self.draft_vocab_size,)
            return shapes
        for k in range(self.num_heads):
            for layer in range(self.num_layers):
                shapes[head_key(k, layer, "weight")] = (h, h)
                shapes[head_key(k, layer, "bias")] = (h,)
            if not self.shared_lm_head:
                shapes[head_key(k, None, "weight")] = (v, h)
            if self.token_conditioned:
                for j in range(k + 1):
                    shapes[fuse_key(k, j)] = (h, h)
        if self.draft_vocab_size:
            shapes[DRAFT_VOCAB_KEY] = (self.draft_vocab_size,)
        return shapes

    @property
    def is_draft_layer(self) -> bool:
        return self.architecture == "draft_layer"

    @property
    def layer_spec(self) -> DraftLayerSpec:
        """The draft layer's shape (architecture "draft_layer" only)."""
        return DraftLayerSpec(**(self.draft_layer or {}))

    @property
    def token_conditioned(self) -> bool:
        """Whether head k also reads the tokens t+1..t+k+1 (conditioning "tokens")."""
        return self.conditioning == "tokens"


def _check_architecture(data: dict[str, Any], where: str) -> None:
    """`architecture` must be known, and a draft layer needs a valid `draft_layer` object."""
    arch = data.get("architecture", "heads")
    if arch not in ARCHITECTURES:
        raise NFoxHeadError(f"{where}: unknown architecture {arch!r}",
                            f"use one of {', '.join(ARCHITECTURES)}, or upgrade vllm-nfoxhead")
    if arch != "draft_layer":
        return
    spec = data.get("draft_layer")
    try:
        DraftLayerSpec(**spec)
    except TypeError:
        raise NFoxHeadError(f"{where}: architecture draft_layer needs a `draft_layer` object with the fields "
                            f"of DraftLayerSpec, got {spec!r}",
                            "re-create the directory with `python -m vllm_nfoxhead.training.train_layer`") from None
    except ValueError as e:
        raise NFoxHeadError(f"{where}: draft_layer: {e}",
                            "re-create the directory with `python -m vllm_nfoxhead.training.train_layer`") from None
    if not data.get("shared_lm_head", True):
        raise NFoxHeadError(f"{where}: a draft layer projects through the base LM head (shared_lm_head true)",
                            "set shared_lm_head to true")


def _heads_path(path: str | os.PathLike[str]) -> Path:
    """An existing heads directory, or a one-line NFoxHeadError."""
    p = Path(path).expanduser()
    if not str(path):
        raise NFoxHeadError(
            "no heads directory given", "write nfoxhead:/path/to/heads_dir"
        )
    if not p.is_dir():
        raise NFoxHeadError(
            f"heads directory {str(p)!r} does not exist",
            "pass the directory that holds config.json and model.safetensors",
        )
    return p


def read_json_object(path: Path, missing_fix: str, repair_fix: str) -> dict[str, Any]:
    """A JSON object from disk, or a one-line NFoxHeadError with `missing_fix` (no such file)
    or `repair_fix` (not JSON, or not an object) as its fix."""
    if not path.is_file():
        raise NFoxHeadError(f"{path} is missing", missing_fix)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NFoxHeadError(f"{path} is not valid JSON ({exc})", repair_fix) from exc
    if not isinstance(data, dict):
        raise NFoxHeadError(f"{path} is not a JSON object", repair_fix)
    return data


def load_heads_config(path: str | os.PathLike[str]) -> HeadsConfig:
    """Read and check `config.json` of a heads directory."""
    cfg_file = _heads_path(path) / CONFIG_FILE
    data = read_json_object(
        cfg_file, "point at a directory written by `python -m conversion.to_vllm` or the trainer",
        "repair or re-create it")
    return HeadsConfig.from_dict(data, str(cfg_file))


def check_heads_weights(path: str | os.PathLike[str], config: HeadsConfig) -> None:
    """Check the safetensors header (readable, complete, right names and shapes)."""
    wfile = _heads_path(path) / WEIGHTS_FILE
    if not wfile.is_file():
        raise NFoxHeadError(f"{wfile} is missing", "copy the weights next to config.json")
    try:
        with safe_open(str(wfile), framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise NFoxHeadError(
            f"{wfile} is corrupt or truncated ({exc})", "re-copy or re-create the file"
        ) from exc
    expected = config.expected_shapes()
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise NFoxHeadError(
            f"{wfile} lacks {len(missing)} tensor(s) that config.json implies, e.g. {missing[0]}",
            "make num_heads/num_layers/shared_lm_head in config.json match the weights",
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise NFoxHeadError(
                f"{wfile}: {name} has shape {list(shapes[name])}, config.json implies {list(shape)}",
                "make hidden_size/vocab_size in config.json match the weights",
            )


def validate_heads_dir(path: str | os.PathLike[str]) -> HeadsConfig:
    """All cheap checks of a heads directory; returns its config."""
    config = load_heads_config(path)
    check_heads_weights(path, config)
    return config


def check_base_compat(config: HeadsConfig, hidden_size: int, vocab_size: int, base: str) -> None:
    """Heads must read the served model's hidden state and emit its vocabulary."""
    if config.hidden_size != hidden_size:
        raise NFoxHeadError(
            f"heads have hidden size {config.hidden_size} but {base} has {hidden_size}",
            f"use heads trained for {base} (these were trained for {config.base_model or 'another model'})",
        )
    if config.vocab_size != vocab_size:
        raise NFoxHeadError(
            f"heads have vocabulary size {config.vocab_size} but {base} has {vocab_size}",
            f"use heads trained for {base} (these were trained for {config.base_model or 'another model'})",
        )


def read_heads_tensors(path: str | os.PathLike[str], config: HeadsConfig) -> dict[str, torch.Tensor]:
    """Load the tensors of a validated heads directory (CPU, stored dtype)."""
    wfile = _heads_path(path) / WEIGHTS_FILE
    names = config.expected_shapes()
    with safe_open(str(wfile), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in names}
    if DRAFT_VOCAB_KEY in tensors:
        check_draft_vocab(tensors[DRAFT_VOCAB_KEY], config, wfile)
    return tensors


def check_draft_vocab(ids: torch.Tensor, config: HeadsConfig, where: object) -> None:
    """The draft vocabulary must be sorted, distinct int64 ids inside the vocabulary."""
    ok = (ids.dtype == torch.int64 and (len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()))
          and int(ids.min()) >= 0 and int(ids.max()) < config.vocab_size)
    if not ok:
        raise NFoxHeadError(f"{where}: draft_vocab is not a sorted list of distinct int64 token ids "
                            f"below {config.vocab_size}",
                            "re-create the heads with `python -m vllm_nfoxhead.training.train`")


def save_heads(
    path: str | os.PathLike[str],
    config: HeadsConfig,
    tensors: dict[str, torch.Tensor],
    overwrite: bool = False,
) -> Path:
    """Write a heads directory atomically: a temp dir renamed into place."""
    dest = Path(path).expanduser().resolve()
    if dest.exists() and not overwrite:
        raise NFoxHeadError(f"{dest} already exists", "choose another output or pass --force")
    expected = config.expected_shapes()
    if set(tensors) != set(expected):
        raise NFoxHeadError(
            f"tensors do not match the config (extra {sorted(set(tensors) - set(expected))[:3]}, "
            f"missing {sorted(set(expected) - set(tensors))[:3]})",
            "build the tensors with NFoxHeads.state_dict_for_format()",
        )
    with staged_directory(dest) as tmp:
        dtype = config.torch_dtype
        save_file(
            {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in tensors.items()},
            str(tmp / WEIGHTS_FILE),
            metadata={"format": FORMAT_NAME, "format_version": str(config.format_version)},
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return dest
