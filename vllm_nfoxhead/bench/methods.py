"""The speculation methods a benchmark run compares, as vLLM speculative configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..format import read_heads_tensors, validate_heads_dir


@dataclass(frozen=True)
class Method:
    name: str
    speculative_config: dict[str, Any] | None
    lossless: bool = True  # greedy output must equal plain decoding


def nfoxhead_methods(heads: Path, trees: list[str], num_tokens: int | None) -> list[Method]:
    chain: dict[str, Any] = {"model": f"nfoxhead:{heads}"}
    if num_tokens:
        chain["num_speculative_tokens"] = num_tokens
    out = [Method("nfoxhead-chain", chain)]
    out += [Method(f"nfoxhead-tree:{t}", {"model": f"nfoxhead:{heads}", "tree": t}) for t in trees]
    return out


def ngram_method(num_tokens: int) -> Method:
    return Method(f"ngram-k{num_tokens}", {"method": "ngram", "num_speculative_tokens": num_tokens,
                                           "prompt_lookup_max": 4, "prompt_lookup_min": 2})


def vllm_medusa_method(model: Path, heads: Path, workdir: Path) -> Method | None:
    """vLLM 0.32's built-in Medusa (chain) with the same heads, written by the converter's writer."""
    import vllm

    if not vllm.__version__.startswith("0.32"):
        return None  # removed in vLLM 0.33
    from conversion.base_model import BaseModel
    from conversion.vllm_medusa import write_vllm_medusa

    config = validate_heads_dir(heads)
    dest = workdir / "vllm-medusa"
    if not dest.exists():
        base_lm_head = BaseModel.from_dir(model).lm_head() if config.shared_lm_head else None
        write_vllm_medusa(dest, config, read_heads_tensors(heads, config), base_lm_head)
    return Method("vllm-medusa", {"method": "medusa", "model": str(dest),
                                  "num_speculative_tokens": config.num_heads})
