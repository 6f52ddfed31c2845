"""`python -m conversion.to_vllm`: Medusa-family heads -> the NFoxHead head format.

Reads heads trained by the reference trainer (heads-only `.pt` / "version 2"
`.safetensors`), full-model checkpoints (Medusa 1.0, axolotl merges) or vLLM
0.32's own Medusa format; checks them (against `--base-model` when given) before
writing anything; writes `OUTPUT/config.json` + `OUTPUT/model.safetensors`, and
with `--to vllm-medusa` also vLLM's Medusa format. See docs/conversion.md.

Exit status: 0 ok, 1 `--verify` above tolerance (nothing written), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.format import DTYPES, HeadsConfig, check_base_compat, head_key, save_heads
from vllm_nfoxhead.core.tree import parse_tree

from .base_model import BaseModel
from .families import READERS, reader_for
from .output import StagedOutput, check_destination
from .result import SourceHeads
from .verify import verify
from .vllm_medusa import write_vllm_medusa

VLLM_MEDUSA_SUBDIR = "vllm-medusa"


def build_parser() -> argparse.ArgumentParser:
    families = "\n".join(f"  {name:12s} {cls.description}" for name, cls in READERS.items())
    parser = argparse.ArgumentParser(
        prog="python -m conversion.to_vllm",
        description="Convert Medusa-family heads (reference trainer, axolotl, vLLM's Medusa) "
        "into the NFoxHead head format (config.json + model.safetensors).",
        epilog=f"input families (--format):\n{families}\n\n"
        "exit status: 0 ok, 1 --verify above tolerance (nothing written), 2 bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="checkpoint directory to convert")
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="heads directory to write (must not exist unless --force)")
    parser.add_argument("--format", choices=["auto", *READERS], default="auto",
                        help="input family; default: detected from file names, config and tensor names")
    parser.add_argument("--base-model", type=Path, metavar="DIR",
                        help="local base model directory: its config.json (hidden size, vocabulary, "
                        "tie_word_embeddings) validates the heads, and its LM head is read lazily when "
                        "needed (shared-LM-head heads with --to vllm-medusa or --verify)")
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help="dtype of the written tensors (default: the source dtype)")
    parser.add_argument("--num-heads", type=int, metavar="N", help="keep only the first N heads")
    parser.add_argument("--tree", metavar="NAME|JSON",
                        help="default tree stored in config.json, validated against the heads: a preset name (e.g. mc_sim_7b_63) or "
                        "a JSON list of rank paths, e.g. '[[0],[0,0],[1]]'")
    parser.add_argument("--to", choices=["nfoxhead", "vllm-medusa"], default="nfoxhead",
                        help="vllm-medusa: ALSO write vLLM 0.32's built-in Medusa format (into "
                        f"OUTPUT/{VLLM_MEDUSA_SUBDIR}/ or --vllm-medusa-output)")
    parser.add_argument("--vllm-medusa-output", type=Path, metavar="DIR",
                        help=f"where --to vllm-medusa writes (default OUTPUT/{VLLM_MEDUSA_SUBDIR})")
    parser.add_argument("--verify", action="store_true",
                        help="before publishing, compare logits of original and converted heads on "
                        "random hidden states; print the max abs difference; exit 1 above tolerance")
    parser.add_argument("--tolerance", type=float, metavar="X",
                        help="--verify limit on the max abs logit difference (default: from the dtype)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def parse_tree_option(value: str | None, num_heads: int | None = None) -> Any:
    """`--tree`: a preset name (stored by name) or JSON rank paths (stored as a list),
    validated by the plugin's own rules (tree.parse_tree) against the heads."""
    if value is None:
        return None
    tree = parse_tree(value.strip(), num_heads=num_heads)
    return value.strip() if not value.strip().startswith("[") else tree.to_list()


def keep_heads(config: HeadsConfig, tensors: dict[str, torch.Tensor], n: int | None) -> None:
    """`--num-heads`: drop heads >= n (in place)."""
    if n is None:
        return
    if not 1 <= n <= config.num_heads:
        raise NFoxHeadError(f"--num-heads {n} is out of range: the checkpoint has {config.num_heads} heads",
                            f"pass a number from 1 to {config.num_heads}")
    for name in list(tensors):
        if int(name.split(".")[1]) >= n:
            del tensors[name]
    config.num_heads = n


def share_single_lm_head(source: SourceHeads, base: BaseModel | None, warn: list[str]) -> None:
    """vLLM `original_lm_head`: share the base LM head if it is that; else copy it per head."""
    if source.single_lm_head is None:
        return
    cfg = source.config
    if base is not None and torch.equal(base.lm_head().to(torch.float32),
                                        source.tensors[head_key(0, None, "weight")].to(torch.float32)):
        for k in range(cfg.num_heads):
            del source.tensors[head_key(k, None, "weight")]
        cfg.shared_lm_head = True
        return
    warn.append("original_lm_head: the one LM head is copied into every head"
                + ("" if base else " (pass --base-model to share the base LM head if it is the same)"))


def run(args: argparse.Namespace) -> int:
    quiet = args.quiet
    inputs = [args.input] + ([args.base_model] if args.base_model else [])
    # Cheap checks first: nothing is read or written before these pass.
    check_destination(args.output, args.force, inputs)
    vllm_out: Path | None = None
    if args.vllm_medusa_output is not None and args.to != "vllm-medusa":
        raise NFoxHeadError("--vllm-medusa-output needs --to vllm-medusa", "add --to vllm-medusa")
    if args.to == "vllm-medusa":
        if args.vllm_medusa_output is not None:
            vllm_out = args.vllm_medusa_output
            check_destination(vllm_out, args.force, inputs + [args.output])
    if args.tolerance is not None and args.tolerance < 0:
        raise NFoxHeadError("--tolerance must be >= 0", "pass e.g. --tolerance 1e-3")
    parse_tree_option(args.tree)  # syntax and presets, before any reading
    base = BaseModel.from_dir(args.base_model) if args.base_model else None

    reader = reader_for(args.input, args.format)
    source = reader.read(args.input, quiet=quiet, vocab_hint=base.vocab_size if base else None)
    config, tensors = source.config, source.tensors
    warnings = list(source.warnings)
    for ref in (base, source.embedded_base):
        if ref is not None:
            check_base_compat(config, ref.hidden_size, ref.vocab_size, str(ref.path))
    lm_base = base or source.embedded_base
    share_single_lm_head(source, lm_base, warnings)
    keep_heads(config, tensors, args.num_heads)
    config.dtype = args.dtype or config.dtype
    config.tree = parse_tree_option(args.tree, num_heads=config.num_heads)
    config.extra["source"] = str(args.input)
    if not config.base_model and lm_base is not None:
        config.base_model = lm_base.name  # the source did not say; the base we checked against

    needs_lm = config.shared_lm_head and (args.to == "vllm-medusa" or args.verify)
    if needs_lm and lm_base is None:
        what = "vLLM's Medusa format stores it as lm_head.weight" if args.to == "vllm-medusa" else "--verify needs it"
        raise NFoxHeadError(f"these heads share the base model's LM head and {what}",
                            "pass --base-model DIR (a local copy of the base model)")
    base_lm = lm_base.lm_head(quiet=quiet) if needs_lm and lm_base else None
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    steps = 1 + (args.to == "vllm-medusa") + bool(args.verify)
    with StagedOutput() as staged, tqdm(total=steps, desc="writing", unit="step", disable=quiet, leave=False) as bar:
        heads_dir = staged.stage(args.output)
        save_heads(heads_dir, config, tensors)
        bar.update(1)
        vllm_dir = None
        if args.to == "vllm-medusa":
            vllm_dir = staged.stage(vllm_out) if vllm_out is not None else heads_dir / VLLM_MEDUSA_SUBDIR
            write_vllm_medusa(vllm_dir, config, tensors, base_lm)
            bar.update(1)
        if args.verify:
            results = verify(source, heads_dir, config.dtype, config.num_heads, base_lm, vllm_dir, args.tolerance)
            bar.update(1)
            bar.close()
            for r in results:
                print(f"verify {r.target}: max abs logit difference {r.max_abs_diff:.3e} "
                      f"(tolerance {r.tolerance:.3e}) {'ok' if r.ok else 'FAILED'}")
            if not all(r.ok for r in results):
                print("error: verification failed; nothing was written", file=sys.stderr)
                return 1
        staged.publish(args.force)

    out = args.output.expanduser().resolve()
    print(f"wrote {out} ({source.family}: {config.num_heads} heads x {config.num_layers} layer(s), "
          f"hidden {config.hidden_size}, vocab {config.vocab_size}, "
          f"{'shared base LM head' if config.shared_lm_head else 'own LM heads'}, {config.dtype})")
    if args.to == "vllm-medusa":
        print(f"wrote {(vllm_out.expanduser().resolve() if vllm_out else out / VLLM_MEDUSA_SUBDIR)} (vLLM Medusa format)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (2 with `error: ...` on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except NFoxHeadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
