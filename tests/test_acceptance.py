"""Tree acceptance: greedy vs brute force, typical on crafted rows, sampling is lossless."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vllm_nfoxhead.core.acceptance import (accept, accept_greedy, accept_sampling,
                                      accept_typical)
from vllm_nfoxhead.core.tree import parse_tree

TREE3 = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]   # depth 3, width 3, 7 nodes


def _brute_force_greedy(paths, drafts, logits):
    """Reference: try every node; keep the deepest whose whole path matches (first on ties)."""
    index = {p: i for i, p in enumerate(paths)}
    argmax = logits.argmax(-1).tolist()
    best, best_len = -1, 0
    for i, p in enumerate(paths):
        chain = [index[p[:d]] for d in range(1, len(p) + 1)]
        rows = [0] + [c + 1 for c in chain[:-1]]
        if all(drafts[c] >= 0 and drafts[c] == argmax[r] for c, r in zip(chain, rows)):
            if len(chain) > best_len:
                best, best_len = i, len(chain)
    chain = [index[paths[best][:d]] for d in range(1, best_len + 1)] if best >= 0 else []
    return chain, argmax[best + 1]


@pytest.mark.parametrize("name", ["mc_sim_7b_63", "mc_sim_16", "wide_6", "narrow_8", "chain_4"])
def test_greedy_equals_brute_force(name):
    tree = parse_tree(name)
    b = tree.buffers()
    gen = torch.Generator().manual_seed(1)
    bsz, vocab = 64, 3            # tiny vocab: matches (and deep paths) are frequent
    logits = torch.randn(bsz, tree.num_nodes + 1, vocab, generator=gen)
    drafts = torch.randint(0, vocab, (bsz, tree.num_nodes), generator=gen)
    drafts[::7, 0] = -1           # some disabled nodes
    res = accept_greedy(b, drafts, logits)
    deep = 0
    for i in range(bsz):
        chain, bonus = _brute_force_greedy(tree.paths, drafts[i].tolist(), logits[i])
        a = len(chain)
        deep += a >= 2
        assert res.num_accepted[i] == a
        assert res.accepted_nodes[i].tolist() == chain + [-1] * (tree.max_depth - a)
        assert res.bonus_token[i] == bonus
        assert res.last_row[i] == (chain[-1] + 1 if chain else 0)
        expected_tokens = [drafts[i, c].item() for c in chain] + [bonus]
        assert res.tokens[i].tolist() == expected_tokens + [-1] * (tree.max_depth - a)
    assert tree.max_depth == 1 or deep > 0


def test_greedy_never_accepts_padding_even_if_argmax_is_token_0():
    # Medusa's bug: padded path slots hold token 0 and are "accepted" when argmax == 0.
    b = parse_tree([[0], [1], [0, 0]]).buffers()
    logits = torch.zeros(1, 4, 5)
    logits[..., 0] = 1.0                        # target argmax is token 0 everywhere
    drafts = torch.tensor([[3, 0, 4]])          # node 1 ([1], a depth-1 leaf) carries token 0
    res = accept_greedy(b, drafts, logits)
    assert res.num_accepted.tolist() == [1] and res.accepted_nodes.tolist() == [[1, -1]]
    assert res.tokens.tolist() == [[0, 0, -1]] and res.last_row.tolist() == [2]


def test_greedy_nothing_accepted_emits_root_argmax():
    b = parse_tree("chain_4").buffers()
    logits = torch.zeros(2, 5, 8)
    logits[:, 0, 6] = 1.0
    res = accept_greedy(b, torch.full((2, 4), 1), logits)
    assert res.num_accepted.tolist() == [0, 0] and res.bonus_token.tolist() == [6, 6]
    assert res.tokens.tolist() == [[6, -1, -1, -1, -1]] * 2
    assert res.last_row.tolist() == [0, 0]


def test_typical_threshold_entropy_and_tiebreak():
    b = parse_tree([[0], [1], [0, 0], [1, 0]]).buffers()   # nodes 0:[0] 1:[1] 2:[0,0] 3:[1,0]
    vocab = 8
    probs = torch.zeros(3, 5, vocab)
    # Request 0: both depth-2 paths accepted; tie broken by sum of log p -> via node 0 (0.6 > 0.4).
    probs[0, 0, :2] = torch.tensor([0.6, 0.4])
    probs[0, 1, 2] = 1.0          # after node 0
    probs[0, 2, 3] = 1.0          # after node 1
    probs[0, 3, 5] = 1.0          # after node 2: bonus = argmax = 5
    probs[0, 4, 6] = 1.0
    # Request 1: peaked root (H ~ 0.2 nats): limit = min(0.09, 0.3 e^-H) = 0.09, so p = 0.05 fails
    # while 0.95 passes; node 2's token has p = 0.08 < 0.09 under row 1.
    probs[1, 0, :2] = torch.tensor([0.95, 0.05])
    probs[1, 1, :3] = torch.tensor([0.46, 0.46, 0.08])
    probs[1, 2:, 7] = 1.0
    # Request 2: uniform rows (H = ln 8): limit = 0.3/8 = 0.0375 < 1/8: every draft accepted.
    probs[2] = 1.0 / vocab
    drafts = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]])
    res = accept_typical(b, drafts, probs)
    assert res.accepted_nodes.tolist() == [[0, 2], [0, -1], [0, 2]]
    assert res.num_accepted.tolist() == [2, 1, 2]
    assert res.bonus_token[0] == 5 and res.bonus_token[1] == 0   # argmax of row 1 (first max)
    assert res.tokens[0].tolist() == [0, 2, 5]


def test_typical_threshold_is_strict_and_configurable():
    b = parse_tree("chain_2").buffers()
    probs = torch.zeros(1, 3, 4)
    probs[0, :, 0] = 0.91
    probs[0, :, 1] = 0.09
    drafts = torch.tensor([[1, 1]])
    assert accept_typical(b, drafts, probs).num_accepted.item() == 0      # 0.09 is not > 0.09
    assert accept_typical(b, drafts, probs, threshold=0.08).num_accepted.item() == 2


def test_sampling_with_one_hot_probs_is_greedy():
    tree = parse_tree("mc_sim_16")
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 17, 3, generator=gen)
    drafts = torch.randint(0, 3, (32, 16), generator=gen)
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), 3).float()
    sampled = accept_sampling(tree.buffers(), drafts, one_hot, generator=gen)
    greedy = accept_greedy(tree.buffers(), drafts, logits)
    assert torch.equal(sampled.tokens, greedy.tokens)
    assert torch.equal(sampled.accepted_nodes, greedy.accepted_nodes)


def test_sampling_per_request_generators_reproduce_and_skip_zero_probs():
    b = parse_tree("wide_6").buffers()
    probs = torch.rand(3, 7, 10)
    probs[..., 5:] = 0.0                         # tokens 5..9 impossible
    drafts = torch.randint(0, 10, (3, 6))
    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return accept_sampling(b, drafts, probs, generator=gens).tokens
    first = run([1, 2, 3])
    assert torch.equal(first, run([1, 2, 3]))
    swapped = accept_sampling(b, drafts[[1, 0, 2]], probs[[1, 0, 2]],
                              generator=[torch.Generator().manual_seed(s) for s in (2, 1, 3)]).tokens
    assert torch.equal(first[[1, 0, 2]], swapped)
    many = accept_sampling(b, drafts.repeat(200, 1), probs.repeat(200, 1, 1),
                           generator=torch.Generator().manual_seed(0))
    assert many.bonus_token.max() < 5
    with pytest.raises(ValueError, match="generators"):
        accept_sampling(b, drafts, probs, generator=[None])


def test_dispatcher():
    b = parse_tree("chain_2").buffers()
    logits = torch.randn(2, 3, 5)
    drafts = torch.zeros(2, 2, dtype=torch.int32)
    assert torch.equal(accept("greedy", b, drafts, logits).tokens,
                       accept_greedy(b, drafts, logits).tokens)
    with pytest.raises(ValueError, match="unknown acceptance mode"):
        accept("nucleus", b, drafts, logits)


# ---------------------------------------------------------------- statistical harness

VOCAB, START, ROOT, EMIT = 6, 2, 4, 3


def _toy_model(seed: int = 0) -> torch.Tensor:
    """True autoregressive distribution: order-2 Markov table P[prev, cur] -> [V] probabilities."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(1.5 * torch.randn(VOCAB, VOCAB, VOCAB, generator=gen), dim=-1)
    probs[1, 3, 5] = 0.0                         # an impossible continuation, for good measure
    return probs / probs.sum(-1, keepdim=True)


def _exact_first_tokens(table: torch.Tensor) -> torch.Tensor:
    """[V**EMIT] exact probabilities of the first EMIT tokens after (START, ROOT), plain sampling."""
    exact = torch.zeros(VOCAB ** EMIT, dtype=torch.float64)
    for xs in itertools.product(range(VOCAB), repeat=EMIT):
        ctx, p = [START, ROOT], 1.0
        for x in xs:
            p *= table[ctx[-2], ctx[-1], x].item()
            ctx.append(x)
        exact[_cell(xs)] = p
    return exact


def _cell(xs) -> int:
    return sum(x * VOCAB ** i for i, x in enumerate(xs))


def _speculate_first_tokens(table, tree_spec, mode, trials, seed) -> tuple[torch.Tensor, float]:
    """Counts [V**EMIT] of the first EMIT tokens emitted by tree speculation over `trials`
    requests (one batch), and the mean accepted nodes per step."""
    tree = parse_tree(tree_spec)
    b = tree.buffers()
    gen = torch.Generator().manual_seed(seed)
    prev = torch.full((trials,), START)
    cur = torch.full((trials,), ROOT)
    out = torch.full((trials, EMIT), -1)
    filled = torch.zeros(trials, dtype=torch.long)
    accepted = []
    while (filled < EMIT).any():
        # Heads: for each depth, the top-k of a random ranking (independent of the parent).
        ranks = torch.rand(trials, tree.max_depth, VOCAB, generator=gen).argsort(-1)
        drafts = ranks[..., : b.width].reshape(trials, -1)[:, b.topk_index]        # [B, N]
        parent_tok = torch.where(b.parent >= 0, drafts.gather(1, b.parent.clamp(min=0).expand(trials, -1)),
                                 cur[:, None])                                       # [B, N]
        probs = torch.cat([table[prev, cur][:, None], table[parent_tok, drafts]], dim=1)  # [B,N+1,V]
        if mode == "sampling":
            res = accept_sampling(b, drafts, probs, generator=gen)
        else:
            res = accept_typical(b, drafts, probs)
        accepted.append(res.num_accepted.float().mean().item())
        for j in range(tree.max_depth + 1):
            take = (j <= res.num_accepted) & (filled < EMIT)
            out[take, filled[take]] = res.tokens[take, j]
            filled += take.long()
        last = res.tokens.gather(1, (res.num_accepted - 1).clamp(min=0)[:, None]).squeeze(1)
        prev = torch.where(res.num_accepted > 0, last, cur)
        cur = res.bonus_token
    cells = sum(out[:, i] * VOCAB ** i for i in range(EMIT))
    return torch.bincount(cells, minlength=VOCAB ** EMIT).double(), sum(accepted) / len(accepted)


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; cells with expected count < 5 are pooled into one."""
    expected = counts.sum() * probs
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    # Survival function of chi2(dof) = regularised upper incomplete gamma Q(dof/2, stat/2).
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2).item()


ALPHA = 1e-3


def test_chi_square_survival_function():
    # chi2 with 2 degrees of freedom: sf(x) = exp(-x/2); 1 dof: sf(3.841) = 0.05.
    dof2 = torch.special.gammaincc(torch.tensor(1.0, dtype=torch.float64), torch.tensor(3.0))
    assert abs(dof2.item() - math.exp(-3.0)) < 1e-12
    dof1 = torch.special.gammaincc(torch.tensor(0.5, dtype=torch.float64), torch.tensor(3.841 / 2))
    assert abs(dof1.item() - 0.05) < 1e-4


def test_exact_sampling_is_lossless():
    """Tree-speculative sampling emits tokens with exactly the plain-sampling distribution.

    A toy order-2 Markov 'target' over 6 tokens; heads propose random top-k lists
    (acceptance is still frequent, so deep paths are exercised). The first 3
    emitted tokens of 20,000 requests (several speculation steps each) are compared
    with their exact distribution (216 cells) by a Pearson chi-square test at a
    false-alarm rate ALPHA = 1e-3: a correct sampler fails with probability 1e-3
    for a random seed; the seed is fixed, so the test is deterministic.
    """
    table = _toy_model()
    counts, mean_accepted = _speculate_first_tokens(table, TREE3, "sampling", 20_000, seed=11)
    assert mean_accepted > 0.4                   # speculation actually happened
    assert _chi_square_p_value(counts, _exact_first_tokens(table)) > ALPHA


def test_chi_square_harness_detects_a_biased_sampler():
    """Power check of the harness itself: up-weighting token 0 by 15% everywhere is detected."""
    table = _toy_model()
    biased = table.clone()
    biased[..., 0] *= 1.15
    biased /= biased.sum(-1, keepdim=True)
    counts, _ = _speculate_first_tokens(biased, TREE3, "sampling", 20_000, seed=11)
    assert _chi_square_p_value(counts, _exact_first_tokens(table)) < ALPHA


def test_typical_acceptance_is_not_lossless():
    """Same harness: typical acceptance (accept p > min(0.09, 0.3 e^-H), argmax bonus) distorts
    the distribution; the chi-square p-value is far below ALPHA = 1e-3."""
    table = _toy_model()
    counts, _ = _speculate_first_tokens(table, TREE3, "typical", 20_000, seed=11)
    assert _chi_square_p_value(counts, _exact_first_tokens(table)) < 1e-12


def test_disabled_nodes_never_accepted_in_any_mode():
    b = parse_tree("chain_2").buffers()
    probs = torch.zeros(64, 3, 4)
    probs[..., 0] = 1.0                           # the model is certain of token 0 everywhere
    drafts = torch.tensor([[0, -1]]).repeat(64, 1)  # node 1 disabled
    for res in (accept_greedy(b, drafts, probs), accept_typical(b, drafts, probs),
                accept_sampling(b, drafts, probs, generator=torch.Generator().manual_seed(0))):
        assert res.num_accepted.tolist() == [1] * 64
        assert res.tokens[0].tolist() == [0, 0, -1]
