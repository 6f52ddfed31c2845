#!/usr/bin/env bash
# One-shot GPU check of the plugin's GPU code, without vLLM: see docs/gpu-check.md.
#
#   bash scripts/gpu_check.sh               # on a CUDA GPU: results in $OUT (else ./gpu-check-out)
#   bash scripts/gpu_check.sh --interpret   # on the CPU under Triton's interpreter (what CI runs)
#
# Needs only python3 with torch and triton. Extra arguments go to scripts/gpu_check/run.py
# (--out DIR, --only PREFIX..., --skip-cost, --small). Exit status: 0 all passed, 1 a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PYTHON" scripts/gpu_check/run.py "$@"
