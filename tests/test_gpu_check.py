"""The one-shot GPU check (scripts/gpu_check.sh), run on the CPU under Triton's interpreter.

It must work the first time a GPU sees it, so CI runs the whole driver at toy
sizes with the extracted kernel files (scripts/gpu_check/vllm_kernels/) and
vLLM blocked from being imported, exactly as on the GPU machine where no vLLM
is installed. See docs/gpu-check.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KERNELS = REPO / "scripts" / "gpu_check" / "vllm_kernels"
WHEEL_DIR = REPO / ".cache" / "vllm-wheels"
EXPECTED_CHECKS = {
    "fix_tree_rows_triton[float32,mixed batch]", "kv_compaction", "verify_trees[greedy]",
    "verify_trees[typical]", "verify_trees[generators]", "verify_trees[sampling distribution]",
    "tree_sampler_step", "heads", "draft_layer", "cost_table",
} | {f"attention[{dtype},block={block},heads={heads},D=32]"
     for dtype in ("float32", "float16") for block in (16, 32) for heads in ("4/2", "3/1")}


@pytest.fixture(scope="module")
def interpreter_run(tmp_path_factory):
    """`bash scripts/gpu_check.sh --interpret --out DIR` in a fresh process: (completed run, DIR)."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env["PYTHON"] = sys.executable
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--interpret", "--out", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return run, out


def test_every_check_passes_under_the_interpreter(interpreter_run):
    run, out = interpreter_run
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["complete"]
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert set(statuses) == EXPECTED_CHECKS, sorted(statuses)
    assert set(statuses.values()) == {"PASS"}, statuses
    for name in EXPECTED_CHECKS:  # one line per check on stdout
        assert re.search(rf"^PASS {re.escape(name)} \(", run.stdout, re.M), name
    assert re.search(rf"^PASS all: {len(EXPECTED_CHECKS)} passed, 0 failed", run.stdout, re.M)


def test_the_kernel_ran_from_the_extracted_files_without_vllm(interpreter_run):
    _, out = interpreter_run
    env = json.loads((out / "report.json").read_text())["environment"]
    assert env["vllm_modules_loaded"] == []
    assert env["kernel_file"] == "scripts/gpu_check/vllm_kernels/triton_unified_attention.py"
    assert env["triton_interpret"] is True
    assert env["vllm_kernels"]["vllm_version"] == "0.33.0"


def test_cost_table_is_what_tree_builder_reads(interpreter_run):
    _, out = interpreter_run
    table = json.loads((out / "cost_table.json").read_text())
    assert list(table) == ["1", "2", "4"] and all(c > 0 for c in table.values())
    chosen = subprocess.run(
        [sys.executable, "-m", "vllm_nfoxhead.tools.tree_builder", "--accuracies", str(REPO / "heads" / "smollm2-nfoxhead"),
         "--cost-table", str(out / "cost_table.json")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["nodes"] in (1, 2, 3, 4)


def _ptxas_available() -> bool:
    spec = importlib.util.find_spec("triton")
    return spec is not None and (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


@pytest.mark.skipif(not _ptxas_available(), reason="this triton has no CUDA backend/ptxas to compile with")
def test_kernel_variants_compile_for_the_h200(tmp_path):
    """--compile-only --small: the bf16, block-16 kernel variants of the GPU run compile for sm_90
    with this machine's Triton (no GPU involved); the full set: see docs/gpu-check.md."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env["PYTHON"] = sys.executable
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--compile-only", "--small",
                          "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    names = [c["name"] for c in report["checks"]]
    assert len(names) == 8 and all(c["status"] == "PASS" for c in report["checks"]), names
    kernels = {k["kernel"] for c in report["checks"] for k in c["detail"]["kernels"]}
    assert kernels == {"kernel_unified_attention", "reduce_segments"}
    assert report["environment"]["vllm_modules_loaded"] == []


def _original_source(committed: str, rewritten: list[str]) -> str:
    """Undo extract_kernels.py: drop its two marker lines, restore the rewritten import lines."""
    lines = committed.splitlines(keepends=True)
    lines = [ln for ln in lines if not ln.startswith(("# Extracted from vllm==", "# only the top-level `vllm...`"))]
    text = "".join(lines)
    for pair in rewritten:
        original, new = pair.split("  ->  ")
        assert text.count(new + "\n") == 1, new
        text = text.replace(new + "\n", original + "\n")
    return text


def test_extracted_kernels_are_vllms_files_with_only_imports_changed():
    provenance = json.loads((KERNELS / "PROVENANCE.json").read_text())
    assert provenance["vllm_version"] == "0.33.0"
    for name, info in provenance["files"].items():
        source = _original_source((KERNELS / name).read_text(), info["rewritten_imports"])
        assert hashlib.sha256(source.encode()).hexdigest() == info["source_sha256"], name
        assert not re.search(r"^(from|import) vllm", (KERNELS / name).read_text(), re.M), name
    assert "Apache License" in (KERNELS / "LICENSE").read_text()


@pytest.mark.skipif(not list(WHEEL_DIR.glob("vllm-0.33.0-*.whl")), reason="vllm 0.33.0 wheel not downloaded")
def test_extraction_reproduces_the_committed_files():
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check" / "extract_kernels.py"), "--check"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
