"""Writer for vLLM 0.32's built-in Medusa format, to benchmark the same heads
against vLLM's own (top-1 chain) Medusa implementation.

Layout written (see vllm/model_executor/models/medusa.py):

    config.json        model_type "medusa", num_heads, num_hidden_layers, hidden_size,
                       vocab_size, truncated_vocab_size (= vocab_size), medusa_fc_bias: true
                       (vLLM builds its Linear layers without bias unless told),
                       original_lm_head (true for shared-LM-head heads)
    model.safetensors  blocks.{i}.layers.{l}.weight [H, H], blocks.{i}.layers.{l}.bias [H],
                       lm_heads.{i}.weight [V, H]   (own projections), or
                       lm_head.weight [V, H]        (shared: the base model's LM head; with
                                                     original_lm_head vLLM builds one
                                                     `lm_head` used by every head)

No config key may contain "num" together with "heads"/"layers" other than the two
above: MedusaConfig.from_pretrained renames such keys to num_heads/num_hidden_layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import HeadsConfig, head_key

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def vllm_medusa_config(config: HeadsConfig) -> dict:
    """config.json contents for vLLM's MedusaConfig."""
    return {
        "model_type": "medusa",
        "architectures": ["MedusaModel"],
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "num_heads": config.num_heads,
        "num_hidden_layers": config.num_layers,
        "truncated_vocab_size": config.vocab_size,
        "medusa_fc_bias": True,
        "original_lm_head": config.shared_lm_head,
        "max_paths": 64,
        "topk": 10,
        "base_model_name_or_path": config.base_model,
    }


def write_vllm_medusa(
    dest: Path, config: HeadsConfig, tensors: dict[str, torch.Tensor], base_lm_head: torch.Tensor | None
) -> None:
    """Write the vLLM Medusa directory `dest` (which must not exist; callers stage it)."""
    if config.is_draft_layer:
        raise NFoxHeadError("this is a draft layer (config.json architecture: draft_layer); "
                            "vLLM's Medusa runs heads that read one hidden state only",
                            "serve it with nfoxhead:HEADS_DIR, or train Medusa heads with "
                            "`python -m vllm_nfoxhead.training.train --conditioning none`")
    if config.token_conditioned:
        raise NFoxHeadError("these heads are token-conditioned (config.json conditioning: tokens); "
                            "vLLM's Medusa runs heads that read the hidden state only",
                            "serve them with nfoxhead:HEADS_DIR, or train Medusa heads with "
                            "`python -m vllm_nfoxhead.training.train --conditioning none`")
    if config.shared_lm_head and base_lm_head is None:
        raise ValueError("shared-LM-head heads need the base LM head for vLLM's Medusa format")
    dtype = config.torch_dtype
    out: dict[str, torch.Tensor] = {}
    for k in range(config.num_heads):
        for layer in range(config.num_layers):
            for name in ("weight", "bias"):
                out[f"blocks.{k}.layers.{layer}.{name}"] = tensors[head_key(k, layer, name)]
        if not config.shared_lm_head:
            out[f"lm_heads.{k}.weight"] = tensors[head_key(k, None, "weight")]
    if config.shared_lm_head:
        out["lm_head.weight"] = base_lm_head  # type: ignore[assignment]
    dest.mkdir(parents=True)
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()},
              str(dest / WEIGHTS_FILE), metadata={"format": "pt"})
    (dest / CONFIG_FILE).write_text(json.dumps(vllm_medusa_config(config), indent=2) + "\n")


def vllm_medusa_logits(directory: Path, hidden: torch.Tensor) -> torch.Tensor:
    """What vLLM's Medusa computes from a directory we wrote: hidden [T, H] -> [K, T, V] (fp32).

    Follows Medusa.forward/compute_logits: per head, x + SiLU(W x + b) per layer
    (bias only with medusa_fc_bias), then lm_heads[i] or the one lm_head.
    """
    config = json.loads((directory / CONFIG_FILE).read_text())
    use_bias = bool(config.get("medusa_fc_bias", False))
    out = []
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
        for k in range(config["num_heads"]):
            x = hidden
            for layer in range(config["num_hidden_layers"]):
                w = f.get_tensor(f"blocks.{k}.layers.{layer}.weight").float()
                y = x @ w.T
                if use_bias:
                    y = y + f.get_tensor(f"blocks.{k}.layers.{layer}.bias").float()
                x = x + torch.nn.functional.silu(y)
            proj = "lm_head.weight" if config.get("original_lm_head") else f"lm_heads.{k}.weight"
            out.append(x @ f.get_tensor(proj).float().T)
    return torch.stack(out)
