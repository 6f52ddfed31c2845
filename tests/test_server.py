"""A real `vllm serve` process with NFoxHead heads, queried over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from vllm import SamplingParams

pytestmark = pytest.mark.server

VLLM = str(Path(sys.executable).with_name("vllm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(model, port, *extra):
    return [VLLM, "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", "512", "--seed", "0",
            "--kv-cache-memory-bytes", str(96 * 2**20), *extra]


@pytest.fixture(scope="module")
def server(tiny_assets, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            serve_cmd(tiny_assets[0], port, "--speculative-model", f"nfoxhead:{tiny_assets[1]}"),
            stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_LOGGING_LEVEL": "INFO"},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited early:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"vllm serve did not come up:\n{log.read_text()[-3000:]}")
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def accepted_tokens(base: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("vllm:spec_decode_num_accepted_tokens_total"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no spec-decode metrics on /metrics")


def test_completions_and_chat_match_plain(server, tiny_assets, plain_llm):
    from openai import OpenAI

    base, _ = server
    client = OpenAI(base_url=f"{base}/v1", api_key="none")
    model = str(tiny_assets[0])
    before = accepted_tokens(base)

    prompt = "the quick brown"
    comp = client.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0)
    want = plain_llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    assert comp.choices[0].text == want[0].outputs[0].text

    messages = [{"role": "user", "content": "one two three"}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=40, temperature=0)
    want = plain_llm.chat(messages, SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)
    assert chat.choices[0].message.content == want[0].outputs[0].text
    assert accepted_tokens(base) > before  # speculation really ran in the server


def test_server_refuses_bad_heads_with_clear_message(tiny_assets, tmp_path):
    missing = tmp_path / "no-heads"
    result = subprocess.run(
        serve_cmd(tiny_assets[0], free_port(), "--speculative-model", f"nfoxhead:{missing}"),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert f"NFoxHead: heads directory '{missing}' does not exist" in result.stdout + result.stderr
