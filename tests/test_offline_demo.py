"""examples/offline_demo.py (`make demo`): how it reads differing answers, and a real run on the tiny model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "offline_demo.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("offline_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


demo = load_demo()


def run(answers):
    return demo.Run(answers, seconds=1.0, startup=1.0, tau=2.0)


def test_first_difference():
    assert demo.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert demo.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert demo.first_difference([1, 2], [1, 2, 3]) == 2  # one answer ended there


def test_identical_answers_need_no_line():
    assert demo.verdict("bfloat16", 2, {"NFoxHead tree": run([[1], [2]])}, []) == ("", False)


def test_bf16_near_ties_are_explained_with_the_float32_command(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["examples/offline_demo.py", "--dtype", "bfloat16", "--no-chain"])
    runs = {"NFoxHead chain": run([[1], [2]]), "NFoxHead tree": run([[1], [2]])}
    found = [demo.Divergence("NFoxHead tree", 1, 40, 0.125)]
    line, problem = demo.verdict("bfloat16", 2, runs, found)
    assert not problem
    assert "(NFoxHead chain 0/2, NFoxHead tree 1/2)" in line
    assert "within 0.125 logprob: bfloat16 rounding of near-tied logits" in line
    assert line.endswith("examples/offline_demo.py --no-chain --dtype float32")
    assert "\n" not in line


def test_bf16_clear_margins_are_not_passed_off_as_ties():
    found = [demo.Divergence("NFoxHead tree", 0, 3, 0.1), demo.Divergence("NFoxHead tree", 1, 7, 2.0, True),
             demo.Divergence("NFoxHead tree", 2, 9, None)]
    line, problem = demo.verdict("bfloat16", 3, {"NFoxHead tree": run([[1]] * 3)}, found)
    assert not problem
    assert "#2 at token 7 (gap >2.000)" in line and "#3 at token 9 (gap unknown)" in line
    assert "not every gap is a near tie" in line and "--dtype float32" in line


def test_float32_differences_are_a_problem():
    found = [demo.Divergence("NFoxHead chain", 0, 5, 1e-6)]
    line, problem = demo.verdict("float32", 1, {"NFoxHead chain": run([[1]])}, found)
    assert problem and line.startswith("PROBLEM: in float32") and "bug" in line


def test_rerun_command_replaces_the_dtype(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["examples/offline_demo.py", "--dtype=bfloat16", "--tiny"])
    assert demo.rerun_command("float32").endswith("examples/offline_demo.py --tiny --dtype float32")


@pytest.mark.engine
def test_demo_runs_on_the_tiny_model(tiny_assets, tmp_path):
    """The demo end to end (plain vLLM and the tree; the chain left out to save a start-up):
    says what it ran on, and in float32 every answer equals plain decoding (exit 0)."""
    (tmp_path / "tiny").symlink_to(tiny_assets[0].parent)  # --tiny reuses the session's build
    env = {**os.environ, "VLLM_NFOXHEAD_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(DEMO), "--tiny", "--no-chain", "--dtype", "float32",
                           "--num-prompts", "3", "--max-tokens", "16"],
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "\nmachine  CPU " in out and " bf16" in out
    assert "\ndtype    float32 (--dtype float32)" in out
    assert "plain vLLM" in out and "identical answers 3/3" in out
    assert "NFoxHead chain" not in out.split("\nmodel ")[-1]
    assert "PROBLEM" not in out and "Differing answers" not in out
