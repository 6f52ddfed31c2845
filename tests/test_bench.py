"""The benchmark command end to end on the tiny model (real engines, small run)."""

from __future__ import annotations

import json

import pytest

from vllm_nfoxhead.tools.bench.__main__ import main
from vllm_nfoxhead.models.tiny_model import SEED_PROMPTS

pytestmark = pytest.mark.engine


def test_bench_writes_table_json_and_plot(tmp_path, tiny_assets, capsys):
    model, heads = tiny_assets
    out = tmp_path / "bench"
    prompts = tmp_path / "prompts.jsonl"  # the prompts the tiny heads were fitted to
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in SEED_PROMPTS[:4]))
    main(["--model", str(model), "--heads", str(heads), "--prompts", str(prompts), "--no-chat",
          "--num-prompts", "4",
          "--max-tokens", "16", "--concurrency", "1", "2", "--methods", "plain,nfoxhead",
          "--trees", "wide_6", "--lookup", "0", "8", "--ignore-eos", "--dtype", "float32", "--kv-cache-gib", "0.1",
          "--max-engines", "3", "--out", str(out)])
    report = json.loads((out / "bench.json").read_text())
    got = {(r["method"], r["concurrency"]): r for r in report["results"]}
    methods = ("plain", "nfoxhead-chain", "nfoxhead-chain+lookup8", "nfoxhead-tree:wide_6",
               "nfoxhead-tree:wide_6+lookup8")
    assert set(got) == {(m, c) for m in methods for c in (1, 2)}
    for (method, _), row in got.items():
        assert row["outputs_match_plain"], method
        rounds = 2 if method == "plain" else 1  # plain ran in both rounds; its row sums them
        assert row["tokens_per_s"] > 0 and row["num_tokens"] == rounds * 4 * 16
        if method == "plain":
            # Engines share one metrics registry per process: plain's counters must not see others' drafts.
            assert row["acceptance_length"] is None and row["per_position_acceptance"] == [], row
        else:
            # The heads were fitted to these prompts: speculation must be accepted.
            assert row["acceptance_length"] > 2.0, row
            assert len(row["per_position_acceptance"]) >= 4
    # Three engines at a time: two rounds of two NFoxHead methods alternating with plain, each
    # method with its own counts (a shared registry would leave the older engine of a round without).
    assert sorted(row["round"] for (m, c), row in got.items() if c == 1 and m != "plain") == [0, 0, 1, 1]
    assert report["settings"]["schedule"] == "interleaved"
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "nfoxhead-tree:wide_6" in capsys.readouterr().out
