"""Quantized copies of a float Llama checkpoint, written by hand (torch + safetensors).

For tests of NFoxHead on quantized bases: the tiny test model (tiny_model.py)
re-saved in a quantized checkpoint format vLLM reads, with no quantization
library. Round-to-nearest quantization of each linear layer's weight; the
embedding and norms stay float.

Schemes (`SCHEMES`):
  w8a8_int8   compressed-tensors "int-quantized": int8 weights, one scale per
              output channel, activations quantized per token at run time.
  w4a16       compressed-tensors "pack-quantized": symmetric 4-bit weights packed
              eight to an int32, one scale per group of 32 inputs; float activations.
  w8a8_fp8    compressed-tensors "float-quantized": float8_e4m3 weights, one scale
              per output channel, activations quantized to fp8 per token.
  gptq_w4     GPTQ (AutoGPTQ layout): 4-bit symmetric, groups of 32.
  awq_w4      AWQ (AutoAWQ GEMM layout): 4-bit with zero points, groups of 32.

`quantize_lm_head=True` quantizes the LM head too (compressed-tensors schemes;
vLLM's GPTQ/AWQ readers take `lm_head: true`).

CLI (any single-file Llama checkpoint, e.g. SmolLM2 from `python -m vllm_nfoxhead.models.smollm2`):
    python -m vllm_nfoxhead.models.quantized_model SRC DST --scheme w8a8_int8 [--quantize-lm-head]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vllm_nfoxhead.core.staging import staged_directory

GROUP = 32
SCHEMES = ("w8a8_int8", "w4a16", "w8a8_fp8", "gptq_w4", "awq_w4")
# Linear layers of a Llama decoder layer (HF names); the LM head is separate.
LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _is_linear(name: str) -> bool:
    parts = name.split(".")
    return name.endswith(".weight") and len(parts) >= 2 and parts[-2] in LINEAR_SUFFIXES


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> the same bits as int32."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def pack_int4(u: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Unsigned 4-bit values (int64, 0..15) -> int32, eight to a word along `dim`.

    Value `order[i]` of each group of eight lands in bits 4i..4i+3 (AWQ interleaves).
    """
    u = u.movedim(dim, -1)
    groups = u.reshape(*u.shape[:-1], u.shape[-1] // 8, 8)[..., list(order)]
    shifts = torch.arange(8, dtype=torch.int64) * 4
    packed = (groups.to(torch.int64) << shifts).sum(-1)
    return _to_int32(packed).movedim(-1, dim).contiguous()


def quantize_int(w: torch.Tensor, bits: int, group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest: w [out, in] -> (q int8 [out, in], scale [out, in/group or 1])."""
    out, inp = w.shape
    g = inp if group is None else group
    wg = w.reshape(out, inp // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = (wg.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-8)  # [out, G, 1]
    q = (wg / scale).round().clamp(-qmax - 1, qmax).to(torch.int8)
    return q.reshape(out, inp), scale.squeeze(-1)


def quantize_asym4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit: w [out, in] -> (q 0..15 int64 [out, in], scale [out, G], zero 0..15 int64 [out, G])."""
    out, inp = w.shape
    wg = w.reshape(out, inp // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    zero = (-lo / scale).round().clamp(0, 15)
    q = (wg / scale.unsqueeze(-1) + zero.unsqueeze(-1)).round().clamp(0, 15)
    return q.reshape(out, inp).to(torch.int64), scale, zero.to(torch.int64)


def _ct_config(scheme: str, lm_head: bool) -> dict:
    if scheme == "w8a8_int8":
        fmt = "int-quantized"
        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False}
        acts = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
    elif scheme == "w8a8_fp8":
        fmt = "float-quantized"
        weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False}
        acts = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}
    else:  # w4a16
        fmt = "pack-quantized"
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                   "group_size": GROUP, "dynamic": False}
        acts = None
    targets = ["Linear"] + (["lm_head"] if lm_head else [])
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": targets, "weights": weights,
                                      "input_activations": acts, "output_activations": None}},
        "ignore": [] if lm_head else ["lm_head"],
        "kv_cache_scheme": None,
    }


def _ct_tensors(scheme: str, prefix: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    w = w.float()
    if scheme == "w8a8_int8":
        q, scale = quantize_int(w, 8, None)
        return {f"{prefix}.weight": q, f"{prefix}.weight_scale": scale.float()}
    if scheme == "w8a8_fp8":
        fmax = torch.finfo(torch.float8_e4m3fn).max
        scale = (w.abs().amax(-1, keepdim=True) / fmax).clamp(min=1e-12)  # [out, 1]
        q = (w / scale).clamp(-fmax, fmax).to(torch.float8_e4m3fn)
        return {f"{prefix}.weight": q, f"{prefix}.weight_scale": scale.float()}
    q, scale = quantize_int(w, 4, GROUP)  # w4a16: unsigned = q + 8, packed along the input dim
    return {
        f"{prefix}.weight_packed": pack_int4(q.to(torch.int64) + 8, dim=1),  # [out, in/8]
        f"{prefix}.weight_scale": scale.float(),  # [out, in/32]
        f"{prefix}.weight_shape": torch.tensor(list(w.shape), dtype=torch.int64),
    }


def _gptq_tensors(prefix: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """AutoGPTQ layout, symmetric 4-bit: qweight [in/8, out], qzeros [G, out/8] (zero - 1 = 7,
    the v1 checkpoint convention), scales [G, out] fp16, g_idx [in]."""
    q, scale = quantize_int(w.float(), 4, GROUP)  # [out, in], [out, G]
    out, inp = w.shape
    zeros = torch.full((inp // GROUP, out), 7, dtype=torch.int64)
    return {
        f"{prefix}.qweight": pack_int4((q.to(torch.int64) + 8).t(), dim=0),
        f"{prefix}.qzeros": pack_int4(zeros, dim=1),
        f"{prefix}.scales": scale.t().contiguous().half(),
        f"{prefix}.g_idx": torch.arange(inp, dtype=torch.int32) // GROUP,
    }


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _awq_tensors(prefix: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM layout: qweight [in, out/8], qzeros [G, out/8] (packed along the output
    dim in AWQ's interleaved order), scales [G, out] fp16."""
    q, scale, zero = quantize_asym4(w.float(), GROUP)  # [out, in], [out, G], [out, G]
    return {
        f"{prefix}.qweight": pack_int4(q.t(), dim=1, order=AWQ_ORDER),
        f"{prefix}.qzeros": pack_int4(zero.t(), dim=1, order=AWQ_ORDER),
        f"{prefix}.scales": scale.t().contiguous().half(),
    }


def dequantized(scheme: str, w: torch.Tensor) -> torch.Tensor:
    """What `scheme` makes of weight w [out, in], as float32 (round trip)."""
    w = w.float()
    if scheme == "w8a8_int8":
        q, scale = quantize_int(w, 8, None)
        return q.float() * scale
    if scheme == "w8a8_fp8":
        t = _ct_tensors(scheme, "x", w)
        return t["x.weight"].float() * t["x.weight_scale"]
    if scheme == "awq_w4":
        q, scale, zero = quantize_asym4(w, GROUP)
        return ((q - zero.repeat_interleave(GROUP, 1)).float() * scale.repeat_interleave(GROUP, 1))
    q, scale = quantize_int(w, 4, GROUP)  # w4a16, gptq_w4
    if scheme == "gptq_w4":
        scale = scale.half().float()
    return q.float() * scale.repeat_interleave(GROUP, 1)


def quantize_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], scheme: str,
                        quantize_lm_head: bool = False, twin: bool = False) -> Path:
    """Write `dst`: the checkpoint in `src` (a single model.safetensors + config + tokenizer)
    with its linear layers (and the LM head if asked) quantized in `scheme`.

    `twin=True` writes a float checkpoint instead whose weights are the quantized
    values (dequantized): what transformers can run to fit heads to the quantized
    model's own continuations (tiny_model.write_fitted_heads).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copy2(f, dst / f.name)
    state = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    if quantize_lm_head and config.get("tie_word_embeddings"):
        raise ValueError("a tied LM head is the embedding: it cannot be quantized separately")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        prefix = name[: -len(".weight")]
        if _is_linear(name) or (quantize_lm_head and name == "lm_head.weight"):
            if twin:
                out[name] = dequantized(scheme, tensor).to(tensor.dtype)
            elif scheme.startswith("gptq"):
                out.update(_gptq_tensors(prefix, tensor))
            elif scheme.startswith("awq"):
                out.update(_awq_tensors(prefix, tensor))
            else:
                out.update(_ct_tensors(scheme, prefix, tensor))
        else:
            out[name] = tensor.contiguous()
    if scheme.startswith("gptq"):
        qcfg = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False,
                "sym": True, "lm_head": quantize_lm_head, "checkpoint_format": "gptq"}
    elif scheme.startswith("awq"):
        qcfg = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True,
                "version": "gemm", "lm_head": quantize_lm_head}
    else:
        qcfg = _ct_config(scheme, quantize_lm_head)
    if not twin:
        config["quantization_config"] = qcfg
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def main(argv: list[str] | None = None) -> int:
    """Write a quantized copy of a float checkpoint; one clear line on bad input."""
    p = argparse.ArgumentParser(prog="python -m vllm_nfoxhead.models.quantized_model",
                                description="Write a quantized copy of a single-file float Llama checkpoint "
                                            "(round-to-nearest, in a format vLLM reads).")
    p.add_argument("src", type=Path, help="float checkpoint directory (model.safetensors, config.json, tokenizer)")
    p.add_argument("dst", type=Path, help="output directory (must not exist yet)")
    p.add_argument("--scheme", choices=SCHEMES, required=True, help="quantization scheme (see the module docstring)")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="quantize the LM head too (not for tied embeddings)")
    p.add_argument("--twin", action="store_true",
                   help="write the dequantized float twin instead (what transformers can run)")
    args = p.parse_args(argv)
    if not (args.src / "model.safetensors").is_file() or not (args.src / "config.json").is_file():
        print(f"NFoxHead: {args.src} holds no model.safetensors and config.json. "
              "Fix: pass a single-file float checkpoint directory", file=sys.stderr)
        return 2
    if args.dst.exists():
        print(f"NFoxHead: {args.dst} already exists. Fix: pass a new output directory", file=sys.stderr)
        return 2
    try:
        with staged_directory(args.dst) as tmp:  # nothing half-written on error or Ctrl-C
            quantize_checkpoint(args.src, tmp, args.scheme, args.quantize_lm_head, args.twin)
    except ValueError as exc:
        print(f"NFoxHead: {exc}. Fix: see --help", file=sys.stderr)
        return 2
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
