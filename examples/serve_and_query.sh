#!/usr/bin/env bash
# Serve a model with NFoxHead heads and query both OpenAI endpoints.
#   bash examples/serve_and_query.sh [MODEL_DIR HEADS_DIR]
# Without arguments it uses the tiny model built by examples/offline_demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${VLLM_NFOXHEAD_CACHE:-$HOME/.cache/vllm-nfoxhead}
if [ $# -ge 2 ]; then MODEL=$1; HEADS=$2; else
  .venv/bin/python -c "from vllm_nfoxhead.models.tiny_model import build_tiny_assets as b; b('$CACHE/tiny')"
  MODEL=$CACHE/tiny/model; HEADS=$CACHE/tiny/heads
fi
PORT=${PORT:-8011}
.venv/bin/vllm serve "$MODEL" --speculative-model "nfoxhead:$HEADS" \
  --host 127.0.0.1 --port "$PORT" --max-model-len 1024 --kv-cache-memory-bytes 268435456 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 240); do curl -sf "127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
curl -s "127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"prompt\": \"the quick brown\", \"max_tokens\": 32, \"temperature\": 0}"; echo
curl -s "127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"one two three\"}], \"max_tokens\": 32, \"temperature\": 0}"; echo
curl -s "127.0.0.1:$PORT/metrics" | grep '^vllm:spec_decode_num_accepted_tokens_total'
