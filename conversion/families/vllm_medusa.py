"""vLLM 0.32's built-in Medusa format (model_type "medusa").

Mirrors `vllm/model_executor/models/medusa.py` and
`vllm/transformers_utils/configs/medusa.py`:

- config: `num_heads`, `num_hidden_layers` (any key with "num" + "heads"/"layers" is
  renamed to these by `MedusaConfig.from_pretrained`), `hidden_size`, `vocab_size`,
  `truncated_vocab_size`, `original_lm_head`, `medusa_fc_bias` (default False).
- weights: `blocks.{i}.layers.{l}.weight[/bias]`, `lm_heads.{i}.weight`; with
  `original_lm_head` one `lm_head.weight` (or `lm_heads.0.weight`) serves all heads.
  The loader strips `medusa_heads.` and maps old `{i}.{l}.linear.*` / `{i}.{L}.weight`
  keys, so those are accepted too.

Biases in the file are kept even when `medusa_fc_bias` is false (vLLM would drop
them; the heads were trained with them), with a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

from vllm_nfoxhead.core.errors import NFoxHeadError

from ..base_model import read_json
from ..checkpoint import LazyCheckpoint
from ..result import HeadLayout, SourceHeads
from .base import FamilyReader
from .common import assemble, check_layouts_agree, note_config_mismatch

_BLOCK = re.compile(r"^blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)$")
_LM = re.compile(r"^lm_heads\.(\d+)\.weight$")


def vllm_name(name: str) -> str:
    """The parameter name vLLM's Medusa.load_weights maps a checkpoint key to."""
    name = name.replace("medusa_heads.", "")
    parts = name.split(".")
    if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
        head, layer, rest = parts[0], parts[1], parts[2:]
        if "linear" in rest:
            return f"blocks.{head}.layers.{layer}.{'.'.join(rest[rest.index('linear') + 1:])}"
        return f"lm_heads.{head}.{'.'.join(rest)}"
    return name


def medusa_counts(config: dict) -> tuple[int | None, int | None]:
    """(num_heads, num_hidden_layers) as MedusaConfig.from_pretrained resolves them."""
    heads = layers = None
    for key, value in config.items():
        if "num" in key and isinstance(value, int):
            if "heads" in key:
                heads = value
            elif "layers" in key:
                layers = value
    return heads, layers


class VllmMedusaReader(FamilyReader):
    """vLLM's own Medusa draft-model directory."""

    name = "vllm-medusa"
    description = "vLLM 0.32 built-in Medusa: model_type medusa, blocks.{i}.layers.{l}.*, lm_heads.{i}.weight"

    @classmethod
    def matches(cls, path: Path) -> bool:
        cfg = path / "config.json"
        if not cfg.is_file():
            return False
        try:
            return read_json(cfg, "config.json").get("model_type") == "medusa"
        except NFoxHeadError:
            return False

    def read(self, path: Path, quiet: bool = False, vocab_hint: int | None = None) -> SourceHeads:
        cfg_file = path / "config.json"
        config = read_json(cfg_file, "vLLM Medusa config.json")
        ckpt = LazyCheckpoint.from_dir(path)
        if ckpt is None:
            raise NFoxHeadError(f"{path} holds no weight files (model.safetensors / pytorch_model.bin)",
                                "point at the vLLM Medusa model directory")
        where = ckpt.where
        mapped = {vllm_name(n): n for n in ckpt.names}  # vLLM name -> checkpoint name
        blocks: dict[int, dict[int, dict[str, str]]] = {}
        lm: dict[int, str] = {}
        for vname, name in mapped.items():
            if m := _BLOCK.match(vname):
                blocks.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), {})[m.group(3)] = name
            elif m := _LM.match(vname):
                lm[int(m.group(1))] = name
            elif vname in ("lm_head.weight", "token_map"):
                continue
            else:
                raise NFoxHeadError(f"{where}: unknown tensor {name!r} for vLLM's Medusa format",
                                    "pass --format to name the checkpoint family")
        vocab = config.get("vocab_size")
        truncated = config.get("truncated_vocab_size")
        if "token_map" in mapped or (isinstance(truncated, int) and isinstance(vocab, int) and truncated < vocab):
            raise NFoxHeadError(
                f"{path} uses a truncated draft vocabulary (truncated_vocab_size/token_map)",
                "convert heads with a full-vocabulary projection; truncated vocabularies are not supported",
            )
        if not blocks:
            raise NFoxHeadError(f"{where} holds no blocks.{{i}}.layers.{{l}}.weight tensors",
                                "point at a vLLM Medusa model directory")
        heads = sorted(blocks)
        if heads != list(range(len(heads))):
            raise NFoxHeadError(f"{where}: heads {sorted(set(range(heads[-1] + 1)) - set(heads))} are missing",
                                "re-export the complete heads checkpoint")
        original = bool(config.get("original_lm_head", False))
        single = None
        if original:
            single = mapped.get("lm_head.weight") or lm.get(0)
            if single is None:
                raise NFoxHeadError(f"{where}: original_lm_head is true but there is no lm_head.weight",
                                    "add the base model's LM head as lm_head.weight")
        layouts: list[HeadLayout] = []
        for k in heads:
            idx = sorted(blocks[k])
            if idx != list(range(len(idx))) or any("weight" not in blocks[k][i] for i in idx):
                raise NFoxHeadError(f"{where}: head {k} has blocks {idx} with a missing weight",
                                    "re-export the heads; a tensor is missing")
            proj = single if original else lm.get(k)
            if proj is None:
                raise NFoxHeadError(f"{where}: lm_heads.{k}.weight is missing",
                                    "re-export the heads; every head needs its projection")
            layouts.append(HeadLayout([(blocks[k][i]["weight"], blocks[k][i].get("bias")) for i in idx], proj))
        check_layouts_agree(layouts, where)
        warnings: list[str] = []
        stated_heads, stated_layers = medusa_counts(config)
        note_config_mismatch(warnings, str(cfg_file), "num_heads", stated_heads, len(layouts), "heads")
        note_config_mismatch(warnings, str(cfg_file), "num_hidden_layers", stated_layers,
                             len(layouts[0].blocks), "layers per head")
        has_bias = any(b for lay in layouts for _, b in lay.blocks)
        if has_bias and not config.get("medusa_fc_bias", False):
            warnings.append(
                f"{cfg_file} has medusa_fc_bias false, so vLLM ignores the block biases in the file; "
                "the converted heads keep them (as trained)"
            )
        source = assemble(
            self.name, ckpt, layouts, where=where,
            base_model=str(config.get("base_model_name_or_path") or config.get("_name_or_path") or ""),
            vocab_size=vocab if isinstance(vocab, int) else vocab_hint, warnings=warnings, quiet=quiet,
            extra={"converted_from": self.name},
        )
        if isinstance(vocab, int) and vocab != source.config.vocab_size:
            raise NFoxHeadError(
                f"{cfg_file} says vocab_size={vocab} but the LM head has {source.config.vocab_size} rows",
                "fix vocab_size in config.json",
            )
        hidden = config.get("hidden_size")
        if isinstance(hidden, int) and hidden != source.config.hidden_size:
            raise NFoxHeadError(
                f"{cfg_file} says hidden_size={hidden} but the blocks are {source.config.hidden_size} wide",
                "fix hidden_size in config.json",
            )
        source.single_lm_head = single
        return source
