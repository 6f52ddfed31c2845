#!/usr/bin/env bash
# One-shot GPU check of the plugin's GPU code, without vLLM: see docs/gpu-check.md.
#
#   bash scripts/gpu_check.sh               # on a CUDA GPU: results in $OUT (else ./gpu-check-out)
#   bash scripts/gpu_check.sh --interpret   # on the CPU under Triton's interpreter (what CI runs)
#   bash scripts/gpu_check.sh --compile-only  # on the CPU: compile every kernel variant for sm_90
#
# Needs only python3 with torch and triton. Extra arguments go to scripts/gpu_check/run.py
# (--out DIR, --only PREFIX..., --skip-cost, --small, --arch N). Exit status: 0 all passed,
# 1 a check failed, 2 could not start. With $OUT set, the output is also kept in $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1
if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
    "$PYTHON" scripts/gpu_check/run.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
else
    exec "$PYTHON" scripts/gpu_check/run.py "$@"
fi
