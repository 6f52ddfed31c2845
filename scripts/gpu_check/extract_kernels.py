"""Extract vLLM's Triton unified-attention kernel into scripts/gpu_check/vllm_kernels/.

The GPU check (scripts/gpu_check.sh) runs where vLLM is not installed and
nothing can be downloaded, and at most 64 MiB travel with the repository; the
vLLM wheel is 336 MB. So the two kernel modules (about 65 KB) are committed,
and this script reproduces them from the wheel:

    python scripts/gpu_check/extract_kernels.py                  # vllm==0.33.0
    python scripts/gpu_check/extract_kernels.py --version 0.34.0 # a new release
    python scripts/gpu_check/extract_kernels.py --check          # committed files == wheel's?

It downloads the wheel with `pip download --no-deps` into .cache/vllm-wheels/
(gitignored) unless --wheel names one, copies
  vllm/v1/attention/ops/triton_attention_helpers.py
  vllm/v1/attention/ops/triton_unified_attention.py
and vLLM's LICENSE (Apache-2.0), and changes nothing in the kernels but their
top-level `vllm...` import lines (REWRITES below), which are pointed at the
hand-written vllm_kernels/_shim.py. It fails, naming the line, when a release
adds an import, a vLLM attribute or a KVQuantMode value the shim does not
cover: extend REWRITES / _shim.py, re-run, and re-run the interpreter test
(tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_OUT = HERE / "vllm_kernels"
DEFAULT_VERSION = "0.33.0"
WHEEL_DIR = REPO / ".cache" / "vllm-wheels"

KERNEL_FILES = {  # path in the wheel -> file name in vllm_kernels/
    "vllm/v1/attention/ops/triton_attention_helpers.py": "triton_attention_helpers.py",
    "vllm/v1/attention/ops/triton_unified_attention.py": "triton_unified_attention.py",
}
# Whole top-level import lines; every `vllm` import of a kernel module must be one of them.
REWRITES = {
    "import vllm.envs as envs": "from . import _shim as envs",
    "from vllm.logger import init_logger": "from ._shim import init_logger",
    "from vllm.platforms import current_platform": "from ._shim import current_platform",
    "from vllm.triton_utils import tl, triton": "from ._shim import tl, triton",
    "from vllm.v1.attention.ops.triton_attention_helpers import (": "from .triton_attention_helpers import (",
    "from vllm.v1.kv_cache_interface import KVQuantMode": "from ._shim import KVQuantMode",
}
# Module objects the shim stands in for, and the attributes it defines for each.
SHIM_OBJECTS = {"envs": {"VLLM_BATCH_INVARIANT"},
                "current_platform": {"fp8_dtype", "is_device_capability_family"},
                "logger": {"debug_once"}}
MARKER = ("# Extracted from vllm=={version} ({wheel_path}) by scripts/gpu_check/extract_kernels.py;\n"
          "# only the top-level `vllm...` import lines were changed (to ./_shim.py). Apache-2.0: ./LICENSE.\n")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_wheel(version: str, wheel: Path | None) -> Path:
    """The CUDA wheel of vllm==version: --wheel, else .cache/vllm-wheels/, else pip download."""
    if wheel is not None:
        return wheel
    pattern = f"vllm-{version}-*.whl"
    found = sorted(WHEEL_DIR.glob(pattern))
    if not found:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"vllm=={version}",
                        "-d", str(WHEEL_DIR)], check=True)
        found = sorted(WHEEL_DIR.glob(pattern))
    if not found:
        raise SystemExit(f"no {pattern} in {WHEEL_DIR} after pip download")
    return found[-1]


def rewrite(source: str, where: str) -> tuple[str, list[str]]:
    """Replace the known top-level vllm import lines; refuse any other top-level vllm import."""
    lines = source.splitlines(keepends=True)
    changed = []
    for i, line in enumerate(lines):
        stripped = line.rstrip("\n")
        if stripped in REWRITES:
            lines[i] = REWRITES[stripped] + "\n"
            changed.append(f"{stripped}  ->  {REWRITES[stripped]}")
    text = "".join(lines)
    tree = ast.parse(text)
    for node in tree.body:  # module level only; imports inside functions run only when called
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        bad = [n for n in names if n == "vllm" or n.startswith("vllm.")]
        if bad:
            raise SystemExit(f"{where}:{node.lineno}: import of {bad[0]} has no rewrite; "
                             "add it to REWRITES and a stand-in to vllm_kernels/_shim.py")
    return text, changed


def nested_vllm_imports(text: str) -> list[str]:
    """vllm imports inside functions: left as they are (reached only by unused features)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vllm"):
            found.append(f"line {node.lineno}: from {node.module} import ...")
    return found


def check_shim_attributes(text: str, where: str) -> None:
    """Every `envs.X` / `current_platform.X` / `logger.X` the module reads must exist in the shim."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            allowed = SHIM_OBJECTS.get(node.value.id)
            if allowed is not None and node.attr not in allowed:
                raise SystemExit(f"{where}:{node.lineno}: uses {node.value.id}.{node.attr}, which "
                                 "vllm_kernels/_shim.py does not provide; add it (and to SHIM_OBJECTS)")


def kv_quant_modes(source: str) -> dict[str, int]:
    """KVQuantMode's members {name: value} from vllm/v1/kv_cache_interface.py."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "KVQuantMode":
            return {t.id: stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                    for t in stmt.targets if isinstance(t, ast.Name) and isinstance(stmt.value, ast.Constant)}
    raise SystemExit("KVQuantMode not found in vllm/v1/kv_cache_interface.py")


def check_kv_quant_mode(wheel_source: str, kernel_texts: list[str], shim_path: Path) -> None:
    """The shim's KVQuantMode members have the wheel's values, and cover every member the kernels use."""
    wheel_modes = kv_quant_modes(wheel_source)
    shim_modes = kv_quant_modes(shim_path.read_text())
    for name, value in shim_modes.items():
        if wheel_modes.get(name) != value:
            raise SystemExit(f"_shim.KVQuantMode.{name} = {value}, the wheel has {wheel_modes.get(name)}")
    for text in kernel_texts:
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "KVQuantMode" and node.attr not in shim_modes):
                raise SystemExit(f"kernel uses KVQuantMode.{node.attr}; add it to _shim.KVQuantMode")


def extract(wheel: Path, out: Path, version: str) -> dict:
    """Write the kernel modules, LICENSE, PROVENANCE.json and README.md into `out`."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        license_name = next((n for n in sorted(names) if n.endswith(".dist-info/licenses/LICENSE")), None)
        if license_name is None:
            raise SystemExit(f"{wheel.name} holds no dist-info/licenses/LICENSE")
        version_src = z.read("vllm/_version.py").decode() if "vllm/_version.py" in names else ""
        found = re.search(r"^__commit_id__\s*=.*?['\"]([^'\"]+)['\"]", version_src, re.M)
        commit = found.group(1) if found else "unknown"
        files, texts = {}, []
        for src, dst in KERNEL_FILES.items():
            original = z.read(src)
            text, changed = rewrite(original.decode(), src)
            check_shim_attributes(text, src)
            lines = text.splitlines(keepends=True)
            spdx = 0
            while spdx < len(lines) and lines[spdx].startswith("# SPDX-"):
                spdx += 1
            marker = MARKER.format(version=version, wheel_path=src)
            text = "".join(lines[:spdx]) + marker + "".join(lines[spdx:])
            (out / dst).write_text(text)
            texts.append(text)
            files[dst] = {"source": src, "source_sha256": sha256(original), "rewritten_imports": changed,
                          "vllm_imports_left_inside_functions": nested_vllm_imports(text)}
        check_kv_quant_mode(z.read("vllm/v1/kv_cache_interface.py").decode(), texts, out / "_shim.py")
        (out / "LICENSE").write_bytes(z.read(license_name))
    provenance = {"vllm_version": version, "vllm_commit": commit, "wheel": wheel.name,
                  "wheel_sha256": sha256(wheel.read_bytes()), "license": "Apache-2.0 (LICENSE, from "
                  f"{license_name})", "files": files}
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (out / "README.md").write_text(README.format(version=version, commit=commit, wheel=wheel.name,
                                                 sha=provenance["wheel_sha256"]))
    return provenance


README = """# vLLM's Triton unified-attention kernel, extracted (vllm=={version})

`triton_unified_attention.py` and `triton_attention_helpers.py` are vLLM's own files from the
CUDA wheel `{wheel}` (sha256 `{sha}`, vLLM commit {commit}),
`vllm/v1/attention/ops/`. They are the kernel the plugin's GPU tree path calls
(`unified_attention(..., qq_bias=)`, see vllm_nfoxhead/integration/triton_tree_attention.py).

They are here so that `scripts/gpu_check.sh` can run that kernel on a GPU machine without vLLM
(the wheel, 336 MB, cannot travel there). Nothing in them was changed except their top-level
`vllm...` import lines, which now import from `_shim.py`: the real `triton`, the `KVQuantMode`
values, `current_platform.fp8_dtype()` / `is_device_capability_family()`, `VLLM_BATCH_INVARIANT`
and a logger (hand-written, about 60 lines; see its docstring). `PROVENANCE.json` lists each
file's source path, the sha256 of the original and every rewritten line.

Written by `python scripts/gpu_check/extract_kernels.py` (do not edit by hand; `--check` verifies
that these files are what the wheel gives). For a new vLLM release: `--version X.Y.Z`.

License: Apache License 2.0, copyright the vLLM contributors; the full text is in `LICENSE`
(vLLM's own, from the wheel's dist-info). `_shim.py` is part of vllm-nfoxhead.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", default=DEFAULT_VERSION, help="vLLM release (default %(default)s)")
    p.add_argument("--wheel", type=Path, help="use this vllm wheel instead of downloading one")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="target folder (default %(default)s)")
    p.add_argument("--check", action="store_true",
                   help="extract to a temporary folder and compare with --out; exit 1 on a difference")
    args = p.parse_args(argv)
    wheel = find_wheel(args.version, args.wheel)
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
        provenance = extract(wheel, args.out, args.version)
        for name, info in provenance["files"].items():
            print(f"{args.out / name}: {len(info['rewritten_imports'])} import lines rewritten")
        print(f"wrote {args.out} from {wheel.name}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "_shim.py").write_bytes((args.out / "_shim.py").read_bytes())
        extract(wheel, Path(tmp), args.version)
        generated = [*KERNEL_FILES.values(), "LICENSE", "PROVENANCE.json", "README.md"]
        differ = [n for n in generated if (Path(tmp) / n).read_bytes() != (args.out / n).read_bytes()]
    if differ:
        print(f"differ from {wheel.name}: {', '.join(differ)}")
        return 1
    print(f"{args.out} matches {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
