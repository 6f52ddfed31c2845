"""The interleaved benchmark schedule and the merging of plain's rounds (no engine)."""

from __future__ import annotations

from vllm_nfoxhead.bench.methods import Method
from vllm_nfoxhead.bench.report import rows
from vllm_nfoxhead.bench.runner import RunResult, add_counts, alternating, counter_delta, prompt_groups


def test_prompt_groups_cover_every_prompt_once_in_order():
    for n, c in [(40, 1), (40, 4), (40, 16), (5, 16), (1, 1), (7, 2)]:
        groups = prompt_groups(n, c)
        assert [i for g in groups for i in g] == list(range(n))
        assert all(len(g) > 0 for g in groups)
    assert len(prompt_groups(40, 1)) == 20 and len(prompt_groups(40, 4)) == 5
    assert len(prompt_groups(40, 16)) == 1


def test_alternating_reverses_the_order_every_other_group():
    a, b, c = Method("a", None), Method("b", None), Method("c", None)
    order = [(m.name, g.start) for m, g in alternating([a, b, c], [range(0, 2), range(2, 4), range(4, 5)])]
    assert order == [("a", 0), ("b", 0), ("c", 0), ("c", 2), ("b", 2), ("a", 2), ("a", 4), ("b", 4), ("c", 4)]


def result(method: str, tokens: int, seconds: float, rnd: int, outputs: list[list[int]]) -> RunResult:
    return RunResult(method, 1, seconds, tokens, None, outputs=outputs, round=rnd)


def test_speedups_compare_with_plain_of_the_same_round():
    same = [[1, 2, 3]]
    results = [result("plain", 100, 10.0, 0, same), result("x", 100, 5.0, 0, same),
               result("plain", 100, 20.0, 1, same), result("y", 100, 10.0, 1, [[1, 2, 4]])]
    methods = [Method("plain", None), Method("x", {}), Method("y", {})]
    got = {r["method"]: r for r in rows(results, methods)}
    assert [r["method"] for r in rows(results, methods)] == ["plain", "x", "y"]
    assert got["x"]["speedup"] == 2.0 and got["y"]["speedup"] == 2.0  # round 1's plain was slower
    assert got["plain"]["speedup"] == 1.0 and got["plain"]["num_tokens"] == 200
    assert got["plain"]["tokens_per_s"] == round(200 / 30, 2)
    assert got["x"]["outputs_match_plain"] and not got["y"]["outputs_match_plain"]


def test_counters_of_separate_runs_add_up():
    before = {"drafts": 10, "per_pos": [5, 2]}
    after = {"drafts": 14, "per_pos": [7, 3, 1]}
    delta = counter_delta(before, after)
    assert delta == {"drafts": 4, "per_pos": [2, 1, 1]}
    assert add_counts(delta, {"drafts": 1, "per_pos": [1]}) == {"drafts": 5, "per_pos": [3, 1, 1]}
    assert add_counts({}, delta) == delta
