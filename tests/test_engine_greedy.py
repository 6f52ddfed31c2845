"""The correctness oracle on the real vLLM engine (CPU build, float32):
at temperature 0, NFoxHead speculation gives token-for-token the output of
plain decoding, and the drafts really are accepted (so the accepted-path code
runs, not just the rejection path).
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from conftest import make_llm
from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS

pytestmark = pytest.mark.engine

# 12 prompts of different lengths (2 to ~60 tokens), submitted together.
PROMPTS = SEED_PROMPTS[:10] + [
    " ".join(SEED_PROMPTS) + " and then",
    "one two three four five six seven eight nine ten eleven twelve . " * 2,
]


def metric(llm, name: str):
    """This engine's metric `name`. Prometheus metrics are process-wide and each new
    engine that logs stats unregisters the previous one's, so tests that start
    extra engines pass disable_log_stats=True; the label check catches a slip."""
    model_name = llm.llm_engine.model_config.served_model_name
    for m in llm.get_metrics():
        if m.name == name and m.labels.get("model_name", model_name) == model_name:
            return m
    raise KeyError(name)


def token_ids(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_greedy_equal_and_accepted(plain_llm, nfox_llm):
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    before = metric(nfox_llm, "vllm:spec_decode_num_accepted_tokens").value
    want = token_ids(plain_llm.generate(PROMPTS, params, use_tqdm=False))
    got = token_ids(nfox_llm.generate(PROMPTS, params, use_tqdm=False))
    assert got == want
    accepted = metric(nfox_llm, "vllm:spec_decode_num_accepted_tokens").value - before
    # Heads were fitted to this model's greedy text: most drafts must be accepted.
    assert accepted > 0.5 * sum(len(t) for t in want), accepted


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 7, 18])
def test_max_tokens_inside_accepted_drafts(plain_llm, nfox_llm, max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    want = plain_llm.generate(PROMPTS, params, use_tqdm=False)
    got = nfox_llm.generate(PROMPTS, params, use_tqdm=False)
    assert token_ids(got) == token_ids(want)
    assert all(len(o.outputs[0].token_ids) == max_tokens for o in got)
    assert all(o.outputs[0].finish_reason == "length" for o in got)


def pick_stop_tokens(outputs):
    """A token per prompt that first appears mid-output (position >= 3)."""
    picks = []
    for ids in token_ids(outputs):
        for pos in range(3, len(ids)):
            if ids[pos] not in ids[:pos]:
                picks.append((pos, ids[pos]))
                break
    return picks


def test_stop_token_inside_accepted_drafts(plain_llm, nfox_llm):
    """A stop token id (handled by vLLM exactly like EOS) hit mid-draft."""
    free = plain_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                              use_tqdm=False)
    picks = pick_stop_tokens(free)
    assert len(picks) >= 8
    params = [SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[tok]) for _, tok in picks]
    prompts = PROMPTS[: len(picks)]
    want = plain_llm.generate(prompts, params, use_tqdm=False)
    got = nfox_llm.generate(prompts, params, use_tqdm=False)
    assert token_ids(got) == token_ids(want)
    for out, (pos, tok) in zip(got, picks):
        assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == tok
        assert len(out.outputs[0].token_ids) == pos + 1


def test_model_eos_inside_accepted_drafts(plain_llm, tiny_assets, tmp_path):
    """A real EOS: a copy of the model whose generation config names a token that
    appears mid-output as its EOS; both engines must stop there, identically."""
    import json
    import shutil

    free = plain_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                              use_tqdm=False)
    pos, eos = pick_stop_tokens(free)[0]
    model = tmp_path / "model-eos"
    shutil.copytree(tiny_assets[0], model)
    gen = json.loads((model / "generation_config.json").read_text())
    gen["eos_token_id"] = [gen.get("eos_token_id", 1), eos]
    (model / "generation_config.json").write_text(json.dumps(gen))
    params = SamplingParams(temperature=0, max_tokens=40)
    outs = {}
    for name, heads in (("plain", None), ("nfox", tiny_assets[1])):
        llm = make_llm(model, heads, disable_log_stats=True)  # keep nfox_llm's metrics
        try:
            outs[name] = llm.generate(PROMPTS, params, use_tqdm=False)
        finally:
            llm.llm_engine.engine_core.shutdown()
    assert token_ids(outs["nfox"]) == token_ids(outs["plain"])
    first = outs["nfox"][0].outputs[0]
    assert first.finish_reason == "stop" and len(first.token_ids) == pos + 1
    assert sum(o.outputs[0].finish_reason == "stop" for o in outs["nfox"]) >= 1


def test_stop_string_inside_accepted_drafts(plain_llm, nfox_llm):
    free = plain_llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                              use_tqdm=False)
    stops = []
    for out in free:
        text = out.outputs[0].text
        middle = text[len(text) // 2: len(text) // 2 + 3]
        stops.append(middle if middle.strip() and text.find(middle) > 0 else None)
    prompts = [p for p, s in zip(PROMPTS, stops) if s]
    params = [SamplingParams(temperature=0, max_tokens=40, stop=[s]) for s in stops if s]
    assert len(prompts) >= 8
    want = plain_llm.generate(prompts, params, use_tqdm=False)
    got = nfox_llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in want]
    assert all(o.outputs[0].finish_reason == "stop" for o in got)


def test_spec_decode_metrics_count_our_drafts(nfox_llm):
    """vLLM's own metrics: drafts of 4 tokens, per-position counts non-increasing."""
    drafts0 = metric(nfox_llm, "vllm:spec_decode_num_drafts").value
    tokens0 = metric(nfox_llm, "vllm:spec_decode_num_draft_tokens").value
    per_pos0 = list(metric(nfox_llm, "vllm:spec_decode_num_accepted_tokens_per_pos").values)
    nfox_llm.generate(PROMPTS[:4], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
                      use_tqdm=False)
    drafts = metric(nfox_llm, "vllm:spec_decode_num_drafts").value - drafts0
    tokens = metric(nfox_llm, "vllm:spec_decode_num_draft_tokens").value - tokens0
    per_pos = [a - b for a, b in zip(
        metric(nfox_llm, "vllm:spec_decode_num_accepted_tokens_per_pos").values, per_pos0)]
    assert drafts > 0 and tokens == 4 * drafts
    assert len(per_pos) == 4 and per_pos[0] > 0
    assert all(a >= b for a, b in zip(per_pos, per_pos[1:]))
