"""The interleaved benchmark schedule and the merging of plain's rounds (no engine)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from vllm_nfoxhead.tools.bench.__main__ import stop_on_sigterm
from vllm_nfoxhead.tools.bench.methods import Method
from vllm_nfoxhead.tools.bench.report import rows
from vllm_nfoxhead.tools.bench.runner import RunResult, SpecCounts, alternating, prompt_groups


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


def test_spec_counts_sum_the_recorded_steps_and_reset():
    recorded = []
    manager = SimpleNamespace(record=lambda *args, **kwargs: recorded.append(kwargs))
    llm = SimpleNamespace(llm_engine=SimpleNamespace(logger_manager=manager))
    counts = SpecCounts(llm)

    def step(drafts: int, accepted: int, per_pos: list[int]) -> None:
        spec = SimpleNamespace(num_drafts=drafts, num_accepted_tokens=accepted, num_accepted_tokens_per_pos=per_pos)
        manager.record(scheduler_stats=SimpleNamespace(spec_decoding_stats=spec), iteration_stats=None)

    step(3, 2, [2])
    manager.record(scheduler_stats=SimpleNamespace(spec_decoding_stats=None), iteration_stats=None)
    step(4, 5, [3, 1, 1])
    assert (counts.drafts, counts.accepted, counts.per_position) == (7, 7, [5, 1, 1])
    assert len(recorded) == 3  # vLLM's own record still runs every step
    counts.reset()
    step(1, 1, [1])
    assert (counts.drafts, counts.accepted, counts.per_position) == (1, 1, [1])


def test_sigterm_unwinds_the_benchmark_so_engines_are_shut_down():
    previous = signal.getsignal(signal.SIGTERM)
    unwound = []
    try:
        stop_on_sigterm()
        with pytest.raises(SystemExit) as exit_info:
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler right after
            finally:
                unwound.append(True)  # where the runner stops its engines
        assert exit_info.value.code == 128 + signal.SIGTERM and unwound
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_default_paths_point_into_the_checkout():
    """The bench's defaults (prompt set, shipped heads) exist where the bench looks for them."""
    from vllm_nfoxhead.tools.bench import __main__ as bench_main

    for path in (bench_main.DEFAULT_PROMPTS, bench_main.SHIPPED_HEADS, bench_main.SHIPPED_MEDUSA_HEADS):
        assert path.exists(), path


def test_compare_heads_join_the_same_run_under_their_names(tmp_path) -> None:
    """--compare-heads: another drafter's chain and trees run beside --heads, each named
    after its directory; a directory that is not heads stops the run before any engine."""
    from test_format import small_config, write_heads

    from vllm_nfoxhead.core.errors import NFoxHeadError
    from vllm_nfoxhead.tools.bench.__main__ import choose_methods, main, parse_args

    for name in ("mine", "layer-v2"):
        write_heads(tmp_path / name, small_config(conditioning="tokens", shared_lm_head=True))
    args = parse_args(["--model", str(tmp_path), "--heads", str(tmp_path / "mine"), "--methods", "plain,nfoxhead",
                       "--compare-heads", str(tmp_path / "layer-v2"), "--trees", "wide_6", "--lookup", "0",
                       "--load-policy", "off"])
    names = [m.name for m in choose_methods(args, tmp_path, tmp_path / "mine", tmp_path)]
    assert names == ["plain", "nfoxhead-chain policy-off", "nfoxhead-tree:wide_6 policy-off",
                     "nfoxhead-chain[layer-v2] policy-off", "nfoxhead-tree:wide_6[layer-v2] policy-off"]
    with pytest.raises(NFoxHeadError, match="missing"):
        main(["--model", str(tmp_path), "--heads", str(tmp_path / "mine"), "--compare-heads", str(tmp_path / "missing")])
