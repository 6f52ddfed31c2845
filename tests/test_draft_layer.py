"""The draft layer: serving-time drafting equals the training-time unrolled pass."""

from __future__ import annotations

import pytest
import torch

import dataclasses

from vllm_nfoxhead.core.draft_layer import DraftLayer, DraftLayerSpec, layer_shapes, layer_tensors, load_layer
from vllm_nfoxhead.core.drafting import ChainDrafter
from vllm_nfoxhead.core.layer_drafting import LayerStep, Windows
from vllm_nfoxhead.core.served_layer import ServedLayer
from vllm_nfoxhead.core.tree import TreeDrafter, parse_tree
from vllm_nfoxhead.training.draft_layer_train import unrolled

H, V = 16, 40


def small_layer(window: int, feature_layers: tuple[int, ...] = ()) -> DraftLayer:
    torch.manual_seed(0)
    layer = DraftLayer(H, DraftLayerSpec(num_attention_heads=2, intermediate_size=24, window=window,
                                         feature_layers=feature_layers))
    for p in layer.parameters():  # norms away from 1 so that they matter
        p.data.normal_(0, 0.3)
    return layer.double()


@pytest.mark.parametrize("window", [3, 64])
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("feature_layers", [(), (1, 4)])
def test_serving_draft_equals_unrolled_training_pass(window: int, chunk: int, feature_layers: tuple[int, ...]) -> None:
    layer, depth, n = small_layer(window, feature_layers), 4, 12
    embed = torch.randn(V, H, dtype=torch.float64)
    feats = torch.randn(1, n, (len(feature_layers) + 1) * H, dtype=torch.float64)
    tokens = torch.randint(0, V, (1, n))
    with torch.no_grad():
        want = unrolled(layer, feats, tokens, embed, depth)  # depth d: [1, n-1, H]
        served, windows = ServedLayer(layer), Windows(window)
        done = 0
        for i in range(n - depth):
            while done <= i:  # entries arrive in chunks, as accepted runs do
                hi = min(done + chunk, i + 1)
                windows.append("r", served, served.entry(served.features(feats[0, done:hi]),
                                                         embed[tokens[0, done + 1: hi + 1]]))
                done = hi
            if done != i + 1:
                continue
            step = LayerStep(served, windows, ["r"], lambda g: g @ embed.T, lambda ids: embed[ids])
            rows = torch.zeros(1, dtype=torch.long)
            for d in range(depth):  # depth d+1 conditions on the true x_{i+d+1}
                step(d, rows, tokens[:, i + 1: i + d + 2])
                torch.testing.assert_close(step.g[d][0], want[d][0, i])


def test_windows_are_bounded_and_freed() -> None:
    layer, windows = ServedLayer(small_layer(4)), Windows(4)
    for _ in range(3):
        windows.append("a", layer, torch.randn(3, H, dtype=torch.float64))
    windows.append("b", layer, torch.randn(1, H, dtype=torch.float64))
    assert windows.keys["a"].shape[1] == 4 and windows.last_pos["a"] == 8
    windows.keep_only({"b"})
    assert "a" not in windows and len(windows) == 1
    windows.drop("b")
    assert len(windows) == 0 and not windows.last_entry and not windows.last_query


def test_batched_window_appends_equal_one_by_one() -> None:
    """Windows.extend (one projection for every request of a step) stores what per-request
    appends store, a position jump included (a fresh window)."""
    layer = ServedLayer(small_layer(4))
    z = {r: torch.randn(n, H, dtype=torch.float64) for r, n in (("a", 3), ("b", 1), ("c", 6))}
    one, many = Windows(4), Windows(4)
    with torch.no_grad():
        for w in (one, many):
            w.append("b", layer, torch.randn(2, H, dtype=torch.float64).clone().fill_(0.5))
        for r, start in (("a", 0), ("b", 7), ("c", 10)):  # b jumps from 1 to 7: starts afresh
            one.append(r, layer, z[r], start=start)
        many.extend(layer, [(r, z[r], start) for r, start in (("a", 0), ("b", 7), ("c", 10))])
    for r in z:
        torch.testing.assert_close(many.keys[r], one.keys[r])
        torch.testing.assert_close(many.values[r], one.values[r])
        assert many.last_pos[r] == one.last_pos[r] and torch.equal(many.last_entry[r], one.last_entry[r])
    assert many.keys["b"].shape[1] == 1 and many.keys["c"].shape[1] == 4


def test_served_layer_computes_what_the_training_layer_does() -> None:
    """Fused q|k|v and gate|up GEMMs, joint rotary and SDPA give the training module's values."""
    layer = small_layer(4)
    served, z, pos = ServedLayer(layer), torch.randn(3, H, dtype=torch.float64), torch.tensor([5, 9, 70])
    with torch.no_grad():
        q, k, v = served.qkv_heads(z, pos)
        torch.testing.assert_close(q * layer.hd ** -0.5, layer.query(z.unsqueeze(1), pos.unsqueeze(1)).squeeze(1))
        torch.testing.assert_close((k, v), tuple(t.squeeze(1) for t in layer.keys_values(z.unsqueeze(1),
                                                                                         pos.unsqueeze(1))))
        attended = torch.randn(3, layer.nh, layer.hd, dtype=torch.float64)
        torch.testing.assert_close(served.finish(z, attended), layer.finish(z, attended))
        torch.testing.assert_close(served.entry(z, z.flip(0)), layer.entry(z, z.flip(0)))


def test_served_layer_uses_the_gemms_it_is_given() -> None:
    """Every projection goes through the factory's GEMMs (the vLLM adapter passes the engine's)."""
    made: list[tuple[int, int]] = []

    def counting(weight: torch.Tensor):
        made.append(tuple(weight.shape))
        return lambda x: x @ weight.T

    ServedLayer(small_layer(4), counting)
    assert sorted(made) == sorted([(H, 2 * H), (3 * H, H), (H, H), (48, H), (H, 24)])
    made.clear()
    ServedLayer(small_layer(4, (1, 2)), counting)
    assert sorted(made) == sorted([(H, 3 * H), (H, 2 * H), (3 * H, H), (H, H), (48, H), (H, 24)])


def test_training_draft_vocabulary_keeps_the_most_frequent_targets() -> None:
    from vllm_nfoxhead.training.draft_layer_train import Crops
    from vllm_nfoxhead.training.train_layer import seen_vocab

    # targets are tokens from the third on: 5 x3, 7 x2, 3 and 9 once (ties go to the lower id)
    crops = Crops(torch.zeros(9, H), torch.tensor([1, 2, 5, 5, 5, 7, 7, 3, 9]), [0, 9])
    vocab, remap = seen_vocab(crops, [0], V)
    assert vocab.tolist() == [3, 5, 7, 9]
    vocab, remap = seen_vocab(crops, [0], V, 3)
    assert vocab.tolist() == [3, 5, 7] and remap[9] < 0 and remap[7] == 2


@pytest.mark.parametrize("feature_layers", [(), (0, 3, 7)])
def test_on_disk_names_and_shapes_agree(feature_layers: tuple[int, ...]) -> None:
    layer = small_layer(4, feature_layers)
    shapes = layer_shapes(H, layer.spec)
    assert {k: tuple(v.shape) for k, v in layer_tensors(layer).items()} == shapes
    assert ("draft_layer.mix.weight" in shapes) == bool(feature_layers)


def test_fused_layer_starts_as_the_final_state_alone() -> None:
    """A new mix passes the final state through, so a layer with feature layers drafts at
    first what the same weights draft from the final state (the --init-from upgrade path);
    the feature layers' states are RMS-normed before mixing."""
    plain, fused = small_layer(64), DraftLayer(H, dataclasses.replace(small_layer(64).spec, feature_layers=(2, 5)))
    fused = fused.double()
    load_layer(fused, layer_tensors(plain), keep_mix=True)
    embed, tokens = torch.randn(V, H, dtype=torch.float64), torch.randint(0, V, (1, 8))
    parts = torch.randn(1, 8, 3 * H, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(unrolled(fused, parts, tokens, embed, 3), unrolled(plain, parts[..., -H:], tokens,
                                                                                      embed, 3))
        fused.mix.weight.normal_()
        served = ServedLayer(fused)
        torch.testing.assert_close(served.features(parts[0]), fused.features(parts[0]))
        scaled = parts.clone()
        scaled[..., :2 * H] *= 100.0  # the residual stream's scale does not reach the mix
        torch.testing.assert_close(fused.features(scaled), fused.features(parts), rtol=1e-3, atol=1e-3)  # eps aside


def _two_requests(layer: ServedLayer, embed: torch.Tensor) -> Windows:
    windows = Windows(8)
    for name, n in (("a", 5), ("b", 2)):
        feats = torch.randn(n, H, dtype=torch.float64)
        windows.append(name, layer, layer.entry(feats, embed[torch.randint(0, V, (n,))]))
    return windows


def test_tree_nodes_are_their_paths_chain_drafts() -> None:
    """Every tree node holds the rank-r token the chain along its path would score there."""
    layer, embed = ServedLayer(small_layer(8)), torch.randn(V, H, dtype=torch.float64)
    windows = _two_requests(layer, embed)

    def new_step() -> LayerStep:
        return LayerStep(layer, windows, ["a", "b"], lambda g: g @ embed.T, lambda ids: embed[ids])

    tree = parse_tree([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0]])
    first = torch.tensor([3, 7])
    with torch.no_grad():
        drafted = TreeDrafter(tree).draft_conditioned(new_step(), first)  # [2, N]
        for node, path in enumerate(tree.paths):
            parents = [tree.paths.index(path[:j]) for j in range(1, len(path))]
            context = torch.cat([first.view(-1, 1), drafted[:, parents]], dim=1)  # [2, depth]
            step, rows = new_step(), torch.arange(2)
            for d in range(len(path)):
                logits = step(d, rows, context[:, : d + 1])
            assert torch.equal(drafted[:, node], logits.topk(path[-1] + 1).indices[:, path[-1]])
        chain = ChainDrafter(3).draft_conditioned(new_step(), first)
        assert torch.equal(chain, drafted[:, [0, 2, 5]])  # the all-top-1 path is the chain


def _layer_config(**over) -> dict:
    spec = DraftLayerSpec(num_attention_heads=2, intermediate_size=24, window=4)
    return {"num_heads": 3, "num_layers": 1, "hidden_size": H, "vocab_size": V, "shared_lm_head": True,
            "dtype": "float32", "conditioning": "tokens", "format_version": 2, "architecture": "draft_layer",
            "draft_layer": spec.to_dict(), **over}


@pytest.mark.parametrize("feature_layers", [(), (3, 6)])
def test_draft_layer_directory_round_trip(tmp_path, feature_layers: tuple[int, ...]) -> None:
    from vllm_nfoxhead.core.format import HeadsConfig, read_heads_tensors, save_heads, validate_heads_dir

    spec = DraftLayerSpec(num_attention_heads=2, intermediate_size=24, window=4, feature_layers=feature_layers)
    layer = DraftLayer(H, spec)
    config = HeadsConfig.from_dict(_layer_config(draft_layer=spec.to_dict()), "test")
    save_heads(tmp_path / "d", config, layer_tensors(layer))
    loaded = validate_heads_dir(tmp_path / "d")
    assert loaded.is_draft_layer and loaded.layer_spec == layer.spec and loaded.format_version == 2
    tensors = read_heads_tensors(tmp_path / "d", loaded)
    assert all(torch.equal(tensors[k], v) for k, v in layer_tensors(layer).items())


@pytest.mark.parametrize("over, says", [
    ({"architecture": "mystery"}, "unknown architecture 'mystery'"),
    ({"draft_layer": None}, "needs a `draft_layer` object"),
    ({"draft_layer": {"window": 4, "heads": 2}}, "needs a `draft_layer` object"),
    ({"shared_lm_head": False}, "shared_lm_head true"),
    ({"draft_layer": {**DraftLayerSpec(feature_layers=(1, 2)).to_dict(), "feature_layers": [9, 2]}},
     "feature_layers must be ascending layer numbers"),
])
def test_bad_draft_layer_configs_get_one_line(over: dict, says: str) -> None:
    from vllm_nfoxhead.core.errors import NFoxHeadError
    from vllm_nfoxhead.core.format import HeadsConfig

    with pytest.raises(NFoxHeadError, match=says) as exc:
        HeadsConfig.from_dict(_layer_config(**over), "x/config.json")
    assert "\n" not in str(exc.value)


def test_vllm_medusa_export_refuses_a_draft_layer(tmp_path) -> None:
    from conversion.vllm_medusa import write_vllm_medusa
    from vllm_nfoxhead.core.errors import NFoxHeadError
    from vllm_nfoxhead.core.format import HeadsConfig

    layer = DraftLayer(H, DraftLayerSpec(num_attention_heads=2, intermediate_size=24, window=4))
    with pytest.raises(NFoxHeadError, match="draft layer"):
        write_vllm_medusa(tmp_path / "m", HeadsConfig.from_dict(_layer_config(), "t"), layer_tensors(layer),
                          torch.zeros(V, H))


def test_crops_first_n_equal_crops_of_answers_cut_to_n() -> None:
    """Crops.first(n) (train_layer's --eval-answer-tokens) equals building crops from answers
    cut to n tokens (evaluate --answer-tokens): both walk what a live benchmark of n tokens sees."""
    from vllm_nfoxhead.training.draft_layer_train import Crops
    from vllm_nfoxhead.training.trainer import Sequences, cut_answers

    seqs = Sequences([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15, 16]], [3, 2, 1])
    hidden = torch.arange(16 * 2, dtype=torch.float32).view(16, 2)
    for n in (1, 2, 4, 10):
        a, b = Crops.build(seqs, hidden).first(n), Crops.build(*cut_answers(seqs, hidden, n))
        assert a.starts == b.starts and torch.equal(a.tokens, b.tokens) and torch.equal(a.feats, b.feats)


def test_crops_of_several_files_fill_one_tensor_in_place() -> None:
    """train_layer builds each file's crops into a slice of one preallocated tensor: the joined
    crops equal crops built and concatenated file by file, and hold that tensor itself (no
    second copy of several GB of states)."""
    from vllm_nfoxhead.training.draft_layer_train import Crops
    from vllm_nfoxhead.training.trainer import Sequences

    files = [Sequences([[1, 2, 3, 4, 5], [6, 7, 8]], [2, 1]), Sequences([[9, 10, 11, 12]], [3])]
    hiddens = [torch.arange(8 * 3.0).view(8, 3), -torch.arange(4 * 3.0).view(4, 3)]
    sizes = [Crops.rows(s) for s in files]
    assert sizes == [4 + 3, 2]
    feats, off, parts = torch.empty(sum(sizes), 3), 0, []
    for seqs, hidden, n in zip(files, hiddens, sizes):
        parts.append(Crops.build(seqs, hidden, out=feats[off: off + n]))
        off += n
    joined = Crops.join(parts, feats)
    expected = Crops.join([Crops.build(s, h) for s, h in zip(files, hiddens)])
    assert joined.feats.data_ptr() == feats.data_ptr()
    assert joined.starts == expected.starts and torch.equal(joined.tokens, expected.tokens)
    assert torch.equal(joined.feats, expected.feats)


def test_offline_walk_counts_what_serving_drafts_accept() -> None:
    """evaluate_layer's per-position runs equal greedy chains drafted position by position
    at serving time and checked against the true continuation."""
    from vllm_nfoxhead.training.draft_layer_train import Crops, evaluate_layer
    from vllm_nfoxhead.training.trainer import Sequences, step_accept

    layer, depth, n = small_layer(6), 3, 14
    embed = torch.randn(V, H, dtype=torch.float64)
    # A repetitive sequence, so that some drafts are right.
    ids = ([5, 6, 7, 8] * 5)[:n]
    feats = embed[torch.tensor(ids)] * 0.5
    crops = Crops.build(Sequences([ids], [1]), feats)
    vocab = torch.tensor([5, 6, 7, 8])  # a draft vocabulary of the 4 ids: chance hits 1 in 4
    with torch.no_grad():
        walk = evaluate_layer(layer, crops, [0], embed, embed[vocab], vocab, depth, torch.device("cpu"))
        runs = []
        for i in range(n - 2):
            served, windows = ServedLayer(layer), Windows(6)
            windows.append("r", served, served.entry(feats[: i + 1], embed[torch.tensor(ids[1: i + 2])]))
            step = LayerStep(served, windows, ["r"], lambda g: g @ embed[vocab].T, lambda x: embed[x])
            drafted = ChainDrafter(depth).draft_conditioned(step, torch.tensor([ids[i + 1]]), vocab=vocab)[0].tolist()
            truth = ids[i + 2: i + 2 + depth]
            run = 0
            while run < len(truth) and drafted[run] == truth[run]:
                run += 1
            runs.append(run)
    assert 0 < sum(runs) < depth * len(runs)  # some drafts right, some wrong
    assert walk["chain_accept"] == pytest.approx(1 + sum(runs) / len(runs), abs=1e-4)
    assert walk["step_accept"] == pytest.approx(step_accept(torch.zeros(len(runs), dtype=torch.long),
                                                            torch.tensor(runs)), abs=1e-4)


def test_passthrough_init_starts_as_the_base_prediction() -> None:
    layer = DraftLayer(H, DraftLayerSpec(num_attention_heads=2, intermediate_size=24, window=4)).double()
    layer.init_as_passthrough()
    embed = torch.randn(V, H, dtype=torch.float64)
    feats, tokens = torch.randn(1, 6, H, dtype=torch.float64), torch.randint(0, V, (1, 6))
    with torch.no_grad():
        g = unrolled(layer, feats, tokens, embed, 1)[0]  # [1, 5, H]
    torch.testing.assert_close(g, layer.out_norm(feats[:, :-1]))


def test_train_layer_refuses_bad_input_before_loading_anything(tmp_path) -> None:
    from vllm_nfoxhead.training.train_layer import main

    with pytest.raises(SystemExit, match="data file .*missing.jsonl does not exist") as exc:
        main(["--model", str(tmp_path), "--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")])
    assert "\n" not in str(exc.value)
    (tmp_path / "o").mkdir()
    with pytest.raises(SystemExit, match="already exists"):
        main(["--model", str(tmp_path), "--data", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")])


def test_a_fused_layer_is_refused_where_its_base_layers_cannot_reach_it() -> None:
    """Front-end check (before any engine memory): feature layers the served model lacks, or
    pipeline stages (vLLM drafts on the last stage only), get one line each."""
    from types import SimpleNamespace

    from vllm_nfoxhead.core.errors import NFoxHeadError
    from vllm_nfoxhead.core.format import HeadsConfig
    from vllm_nfoxhead.integration.options import check_feature_layers

    spec = DraftLayerSpec(num_attention_heads=2, intermediate_size=24, window=4, feature_layers=(2, 15, 27))
    fused = HeadsConfig.from_dict(_layer_config(draft_layer=spec.to_dict()), "t")
    model = SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=30))
    check_feature_layers(SimpleNamespace(pipeline_parallel_size=1), fused, model)
    check_feature_layers(SimpleNamespace(pipeline_parallel_size=2), HeadsConfig.from_dict(_layer_config(), "t"), model)
    for args, depth, says in ((SimpleNamespace(pipeline_parallel_size=2), 30, "pipeline-parallel-size 1"),
                              (SimpleNamespace(pipeline_parallel_size=1), 24, "reads base layer 27, but the served "
                                                                              "model has 24 layers")):
        with pytest.raises(NFoxHeadError, match=says) as exc:
            check_feature_layers(args, fused, SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=depth)))
        assert "\n" not in str(exc.value)
