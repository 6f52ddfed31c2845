"""Tree builder: best-first trees from head accuracies, size choice, CLI."""

from __future__ import annotations

import itertools
import json

import pytest

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.core.tree_search import (build_tree, choose_size, expected_accept,
                                             from_cumulative, grow, interpolate_cost)
from vllm_nfoxhead.tools.tree_builder import main

CPU_COSTS = {1: 1.0, 4: 1.04, 8: 1.08, 16: 1.3, 32: 1.6, 64: 2.3}
# Medusa-like: strong top-1 decaying with depth.
REALISTIC = [[0.56, 0.1, 0.05, 0.04, 0.03], [0.32, 0.1, 0.06, 0.05, 0.03],
             [0.2, 0.09, 0.06, 0.04, 0.03], [0.15, 0.08, 0.05, 0.03, 0.03]]


def test_confident_heads_give_a_chain():
    acc = [[0.9, 0.05, 0.01]] * 3
    built = build_tree(acc, 3)
    assert built.tree.to_list() == [[0], [0, 0], [0, 0, 0]]
    assert built.expected_accept == pytest.approx(0.9 + 0.81 + 0.729)


def test_unsure_first_head_gives_a_wide_tree():
    acc = [[0.3, 0.3, 0.3], [0.2, 0.1, 0.1]]
    assert build_tree(acc, 3).tree.to_list() == [[0], [1], [2]]


def _prefix_closed(paths) -> bool:
    s = set(paths)
    return all(len(p) == 1 or p[:-1] in s for p in paths)


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_best_first_is_optimal_against_brute_force(n):
    acc = [[0.5, 0.3, 0.1], [0.6, 0.2, 0.1]]
    universe = [(a,) for a in range(3)] + [(a, b) for a in range(3) for b in range(3)]
    best = max(expected_accept(s, acc) for s in itertools.combinations(universe, n)
               if _prefix_closed(s))
    assert build_tree(acc, n).expected_accept == pytest.approx(best)


def test_expected_accept_agrees_with_builder_and_limits_hold():
    built = build_tree(REALISTIC, 40, max_depth=3, topk=4)
    paths = built.tree.to_list()
    assert built.expected_accept == pytest.approx(expected_accept(paths, REALISTIC))
    assert built.tree.max_depth <= 3 and built.tree.width <= 4
    # Every size's tree is a prefix of the insertion order (nested trees).
    order = [list(p) for p, _ in grow(REALISTIC, 40, max_depth=3, topk=4)]
    assert sorted(order) == sorted(paths)


def test_builder_errors():
    with pytest.raises(NFoxHeadError, match="only 3 nodes fit"):
        build_tree([[0.5, 0.2, 0.1]], 4)
    with pytest.raises(NFoxHeadError, match="out of range"):
        build_tree(REALISTIC, 0)
    with pytest.raises(NFoxHeadError, match="outside"):
        build_tree([[0.5, 1.2]], 1)
    with pytest.raises(NFoxHeadError, match="cumulative"):
        build_tree([[0.5, 0.7, 0.8]], 1)
    with pytest.raises(NFoxHeadError, match="non-empty"):
        build_tree([], 1)


def test_from_cumulative():
    assert from_cumulative([[0.5, 0.7, 0.8]])[0] == pytest.approx([0.5, 0.2, 0.1])


def test_interpolate_cost():
    assert interpolate_cost(CPU_COSTS, 12) == pytest.approx(1.19)
    assert interpolate_cost(CPU_COSTS, 64) == pytest.approx(2.3)
    with pytest.raises(ValueError):
        interpolate_cost(CPU_COSTS, 65)


def test_choose_size_respects_cost_table():
    flat = {1: 1.0, 20: 1.0}
    assert choose_size(REALISTIC, flat).built.tree.num_nodes == 20     # free tokens: take all
    steep = {1: 1.0, 20: 40.0}
    assert choose_size(REALISTIC, steep).built.tree.num_nodes == 1
    choice = choose_size(REALISTIC, CPU_COSTS)
    rates = {n: (1 + build_tree(REALISTIC, n).expected_accept) / interpolate_cost(CPU_COSTS, n)
             for n in range(1, 65)}
    best_n = max(rates, key=rates.get)
    assert choice.built.tree.num_nodes == best_n
    assert choice.tokens_per_time == pytest.approx(rates[best_n])
    assert choice.cost == pytest.approx(interpolate_cost(CPU_COSTS, best_n))


def test_choose_size_bad_table():
    with pytest.raises(NFoxHeadError, match="cost table"):
        choose_size(REALISTIC, {})
    with pytest.raises(NFoxHeadError, match="non-positive"):
        choose_size(REALISTIC, {1: 0.0})


def test_cli_nodes_and_cost_table(tmp_path, capsys):
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps(REALISTIC))
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({str(k): v for k, v in CPU_COSTS.items()}))
    assert main(["--accuracies", str(acc), "--nodes", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodes"] == 10 and len(out["tree"]) == 10
    assert out["expected_accept_length"] == pytest.approx(build_tree(REALISTIC, 10).expected_accept,
                                                          abs=1e-6)
    assert main(["--accuracies", str(acc), "--cost-table", str(costs)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodes"] == choose_size(REALISTIC, CPU_COSTS).built.tree.num_nodes
    assert {"cost", "tokens_per_unit_time", "expected_tokens_per_step"} <= set(out)


def test_cli_cumulative_and_errors(tmp_path, capsys):
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps({"accuracies": [[0.5, 0.7], [0.4, 0.6]]}))
    assert main(["--accuracies", str(acc), "--nodes", "2", "--cumulative"]) == 0
    assert json.loads(capsys.readouterr().out)["tree"] == [[0], [0, 0]]
    assert main(["--accuracies", str(acc), "--nodes", "2"]) == 2
    assert "Fix:" in capsys.readouterr().err
    assert main(["--accuracies", str(tmp_path / "missing.json"), "--nodes", "2"]) == 2


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--accuracies", "--nodes", "--cost-table", "--cumulative", "--max-depth", "--topk"):
        assert flag in text


def test_cli_reads_accuracies_from_trained_heads_dir(tmp_path, capsys):
    """A heads directory written by the trainer carries extra.rank_accuracy."""
    import json

    from vllm_nfoxhead.tools.tree_builder import main

    heads = tmp_path / "heads"
    heads.mkdir()
    acc = [[0.6, 0.2, 0.1], [0.4, 0.2, 0.1]]
    (heads / "config.json").write_text(json.dumps({"extra": {"rank_accuracy": acc}}))
    assert main(["--accuracies", str(heads), "--nodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "[0]" in out and "[0, 0]" in out.replace("[0,0]", "[0, 0]")
    (heads / "config.json").write_text(json.dumps({"extra": {}}))
    assert main(["--accuracies", str(heads), "--nodes", "3"]) != 0
    assert "no extra.rank_accuracy" in capsys.readouterr().err


def test_cli_save_to_stores_the_default_tree(tmp_path, capsys):
    import json

    from vllm_nfoxhead.core.format import HeadsConfig, save_heads, validate_heads_dir
    from vllm_nfoxhead.core.heads import NFoxHeads
    from vllm_nfoxhead.tools.tree_builder import main

    config = HeadsConfig(num_heads=2, num_layers=1, hidden_size=8, vocab_size=16, shared_lm_head=True,
                         base_model="base", dtype="float32",
                         extra={"rank_accuracy": [[0.6, 0.2, 0.1], [0.4, 0.2, 0.1]]})
    heads = tmp_path / "heads"
    save_heads(heads, config, NFoxHeads(config).state_dict_for_format())
    assert main(["--accuracies", str(heads), "--nodes", "4", "--save-to", str(heads)]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = validate_heads_dir(heads)
    assert stored.tree == printed["tree"] and len(stored.tree) == 4
    assert stored.extra["tree_builder"]["nodes"] == 4
    assert stored.extra["rank_accuracy"]  # the rest of the config is kept
    # a tree deeper than the heads is refused, and the config is left as it was
    (tmp_path / "acc.json").write_text(json.dumps([[0.9]] * 3))
    assert main(["--accuracies", str(tmp_path / "acc.json"),
                 "--nodes", "3", "--save-to", str(heads)]) != 0
    assert validate_heads_dir(heads).tree == printed["tree"]
