"""vLLM's Triton attention with the tree as qq_bias, under Triton's interpreter.

The cases (tests/triton_interpret_cases.py) need TRITON_INTERPRET=1 before
triton and vLLM's kernels are first imported, which other tests in this process
have already done; so they run in a fresh pytest process of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("triton_interpret_cases.py")


def test_triton_tree_attention_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                         cwd=CASES.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "12 passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
