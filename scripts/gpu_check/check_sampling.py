"""Batched tree acceptance (tree_verify.verify_trees) and the heads, on the check's device.

Deterministic results (greedy, typical, drafting, heads) are compared with the
same computation on the CPU; exact sampling is checked statistically (emitted
tokens against the target distribution) and for per-request seeding.

Logits for the deterministic checks are "peaked": each row has one hot token
far above the rest, and drafts follow hot tokens along a chosen path, so
acceptance goes deep and every accept/reject decision has a wide margin (CPU
and GPU softmax round differently; a decision near a threshold could flip).
"""

from __future__ import annotations

import copy
import math

import torch
from check_common import Check, Sizes, chi_square_pvalue, compare, require
from check_attention import tree_named

from vllm_nfoxhead.core.acceptance import Acceptance, accept_greedy
from vllm_nfoxhead.core.format import HeadsConfig
from vllm_nfoxhead.core.heads import NFoxHeads
from vllm_nfoxhead.core.tree import TreeBuffers, TreeDrafter
from vllm_nfoxhead.core.tree_verify import verify_trees

FIELDS = ("accepted_nodes", "num_accepted", "bonus_token", "last_row", "tokens")


def peaked_case(buffers: TreeBuffers, batch: int, vocab: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(drafts [B, N] int64, logits [B, N+1, V] float32, constructed accept depth per request), on CPU.

    Row r's hot token gets +ln(V)+5 over N(0,1) noise (p(hot) > 0.9 at T <= 1). Request b follows a
    random leaf's path: its first a_b nodes carry their parent row's hot token, the next one a cold
    token; every other node a random cold token. One request has two nodes disabled (-1).
    """
    gen = torch.Generator().manual_seed(seed)
    n = buffers.num_nodes
    logits = torch.randn(batch, n + 1, vocab, generator=gen)
    hot = torch.randint(0, vocab, (batch, n + 1), generator=gen)
    logits.scatter_add_(2, hot[:, :, None], torch.full((batch, n + 1, 1), math.log(vocab) + 5.0))
    drafts = torch.randint(0, vocab, (batch, n), generator=gen)
    parent_row = buffers.parent + 1
    drafts = torch.where(drafts == hot[:, parent_row], (drafts + 1) % vocab, drafts)  # cold by default
    depths = []
    for b in range(batch):
        leaf = int(buffers.retrieve_paths[torch.randint(0, buffers.num_leaves, (1,), generator=gen)].max())
        path = [int(x) for x in buffers.node_paths[leaf] if x >= 0]
        a = int(torch.randint(0, len(path) + 1, (1,), generator=gen))
        for node in path[:a]:
            drafts[b, node] = hot[b, int(parent_row[node])]
        depths.append(a)
    if batch > 1:
        drafts[1, -2:] = -1
        depths[1] = 0  # a disabled node may cut its path: no lower bound
    return drafts, logits, depths


def same(got: Acceptance, want: Acceptance, what: str) -> None:
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        require(a.dtype == torch.long, f"{what}: {name} is {a.dtype}, expected int64")
        require(bool(torch.equal(a.cpu(), b.cpu())), f"{what}: {name} differs from the CPU reference:\n"
                                                     f"got  {a.cpu().tolist()}\nwant {b.cpu().tolist()}")


def on_device(result: Acceptance, device: str, what: str) -> None:
    for name in FIELDS:
        t = getattr(result, name)
        require(t.device.type == torch.device(device).type, f"{what}: {name} is on {t.device}, not {device}")


def check_greedy(check: Check, sizes: Sizes) -> None:
    """verify_trees with temperature 0 on the device == acceptance.accept_greedy on the CPU, exactly."""
    device, trees = sizes.device, ("mc_sim_7b_63", "wide_6", "chain_4")
    accepted = []
    for t, name in enumerate(trees):
        tree = tree_named(name)
        cpu_b, dev_b = tree.buffers("cpu"), tree.buffers(device)
        drafts, logits, depths = peaked_case(cpu_b, sizes.batch, sizes.vocab, seed=20 + t)
        temperature = torch.zeros(sizes.batch, device=device)
        got = verify_trees(dev_b, drafts.to(device), logits.to(device), temperature, None, None)
        on_device(got, device, name)
        same(got, accept_greedy(cpu_b, drafts, logits), name)
        require(all(int(a) >= d for a, d in zip(got.num_accepted.cpu(), depths)),
                f"{name}: fewer nodes accepted than drafted along the argmax path")
        accepted.append(int(got.num_accepted.sum()))
    check.detail["summary"] = f"{len(trees)} trees x {sizes.batch} requests, {sum(accepted)} nodes accepted"


def _settings(batch: int, vocab: int, device: str, greedy_every: int = 3):
    """Per-request temperature (every `greedy_every`-th greedy), top-k (vocab = off) and top-p (1 = off)."""
    temperature = torch.tensor([0.0 if b % greedy_every == 0 else 0.5 + 0.1 * (b % 5) for b in range(batch)])
    top_k = torch.tensor([vocab if b % 2 else 50 for b in range(batch)], dtype=torch.long)
    top_p = torch.tensor([1.0 if b % 4 == 1 else 0.9 for b in range(batch)])
    return temperature.to(device), top_k.to(device), top_p.to(device)


def check_typical(check: Check, sizes: Sizes) -> None:
    """mode="typical" on the device == the same call on the CPU, for a greedy/sampled mixed batch."""
    device = sizes.device
    tree = tree_named("mc_sim_16")
    cpu_b, dev_b = tree.buffers("cpu"), tree.buffers(device)
    drafts, logits, _ = peaked_case(cpu_b, sizes.batch, sizes.vocab, seed=31)
    t, k, p = _settings(sizes.batch, sizes.vocab, device)
    got = verify_trees(dev_b, drafts.to(device), logits.to(device), t, k, p, mode="typical")
    on_device(got, device, "typical")
    want = verify_trees(cpu_b, drafts, logits, t.cpu(), k.cpu(), p.cpu(), mode="typical")
    same(got, want, "typical")
    check.detail["summary"] = f"{sizes.batch} requests, accepted {got.num_accepted.tolist()}"


def _generators(seeds: list[int | None], device: str) -> list[torch.Generator | None]:
    """One generator per request: on the device, one on the CPU (allowed), None = global RNG."""
    gens = []
    for i, s in enumerate(seeds):
        if s is None:
            gens.append(None)
        else:
            where = "cpu" if i == 2 else device
            gens.append(torch.Generator(device=where).manual_seed(s))
    return gens


def check_generators(check: Check, sizes: Sizes) -> None:
    """Exact sampling on the device: results on the device, greedy rows equal the CPU greedy
    reference, a seeded request gives the same tokens again and alone as in the batch."""
    device = sizes.device
    tree = tree_named("mc_sim_16")
    cpu_b, dev_b = tree.buffers("cpu"), tree.buffers(device)
    drafts, logits, _ = peaked_case(cpu_b, sizes.batch, sizes.vocab, seed=41)
    d_drafts, d_logits = drafts.to(device), logits.to(device)
    t, k, p = _settings(sizes.batch, sizes.vocab, device)
    seeds = [100 + b if b != 4 else None for b in range(sizes.batch)]
    first = verify_trees(dev_b, d_drafts, d_logits, t, k, p, _generators(seeds, device))
    on_device(first, device, "sampled batch")
    again = verify_trees(dev_b, d_drafts, d_logits, t, k, p, _generators(seeds, device))
    greedy = [b for b in range(sizes.batch) if float(t[b]) == 0.0]
    seeded = [b for b in range(sizes.batch) if seeds[b] is not None]
    ref = accept_greedy(cpu_b, drafts[greedy], logits[greedy])
    for name in FIELDS:
        require(bool(torch.equal(getattr(first, name)[greedy].cpu(), getattr(ref, name))),
                f"greedy rows of a mixed batch: {name} differs from the CPU reference")
        require(bool(torch.equal(getattr(first, name)[seeded], getattr(again, name)[seeded])),
                f"same seeds, different {name}")
    for b in seeded:
        alone = verify_trees(dev_b, d_drafts[b : b + 1], d_logits[b : b + 1], t[b : b + 1], k[b : b + 1],
                             p[b : b + 1], _generators([seeds[b]], device) if b != 2 else
                             [torch.Generator().manual_seed(seeds[b])])
        require(bool(torch.equal(alone.tokens[0], first.tokens[b])),
                f"request {b} alone emitted {alone.tokens[0].tolist()}, in the batch {first.tokens[b].tolist()}")
    check.detail["summary"] = (f"{len(seeded)} seeded, {len(greedy)} greedy of {sizes.batch}; "
                               f"tokens per request {(first.num_accepted + 1).tolist()}")


def target_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """float64 sampling distribution of one row [V], written independently of tree_verify.

    Keep the top_k largest logits, then the most probable tokens until their mass reaches top_p
    (the largest always kept); renormalise. Logits are continuous random values: no ties.
    """
    x = logits.double() / temperature
    order = x.argsort(descending=True)
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[order[:top_k]] = True
    probs = torch.where(keep, x, float("-inf")).softmax(-1)
    sorted_p = probs[order]
    before = sorted_p.cumsum(0) - sorted_p  # mass of the more probable tokens
    nucleus = torch.zeros_like(keep)
    nucleus[order[before < top_p]] = True
    probs = torch.where(keep & nucleus, probs, 0.0)
    return probs / probs.sum()


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor, what: str) -> float:
    """p-value of emitted tokens [M] against probs [V]; tokens outside the support fail outright."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    require(float(counts[probs == 0].sum()) == 0, f"{what}: {int(counts[probs == 0].sum())} tokens drawn "
                                                  "outside the top-k/top-p set")
    m = int(counts.sum())
    expected = probs * m
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big & (probs > 0)].sum()[None]])
    exp = torch.cat([expected[big], expected[~big & (probs > 0)].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat = float(((obs - exp) ** 2 / exp).sum())
    return chi_square_pvalue(stat, len(obs) - 1)


def check_sampling_distribution(check: Check, sizes: Sizes) -> None:
    """Exact tree sampling is lossless: the first emitted token follows the root row's target
    distribution (temperature, top-k, top-p), and after entering node j the second follows row j+1's.
    Half the requests use the global RNG, half their own seeded generator; each half is tested."""
    device, vocab, trials = sizes.device, sizes.stat_vocab, sizes.stat_trials
    tree = tree_named("wide_6")
    buffers = tree.buffers(device)
    gen = torch.Generator().manual_seed(51)
    row_logits = torch.randn(buffers.num_nodes + 1, vocab, generator=gen) * 1.5  # [N+1, V]
    temperature, top_k, top_p = 0.8, max(2, vocab * 2 // 3), 0.9
    targets = torch.stack([target_reference(r, temperature, top_k, top_p) for r in row_logits])
    depth1 = [i for i in range(buffers.num_nodes) if int(buffers.depth[i]) == 1]
    drafts = torch.randint(0, vocab, (buffers.num_nodes,), generator=gen)
    ranked = targets[0].argsort(descending=True)
    for j, node in enumerate(depth1):  # depth-1 nodes carry the root's likeliest tokens: walks go in
        drafts[node] = ranked[j]
    torch.manual_seed(52)
    results = {}
    half = trials // 2
    for label, gens in (("global RNG", None), ("seeded generators", True)):
        generators = [torch.Generator(device=device).manual_seed(1000 + i) for i in range(half)] if gens else None
        out = verify_trees(buffers, drafts.expand(half, -1).contiguous().to(device),
                           row_logits.expand(half, -1, -1).contiguous().to(device),
                           torch.full((half,), temperature, device=device),
                           torch.full((half,), top_k, dtype=torch.long, device=device),
                           torch.full((half,), top_p, device=device), generators)
        on_device(out, device, label)
        tokens = out.tokens.cpu()
        p_first = _chi_square(tokens[:, 0], targets[0], f"{label}, first token")
        node = depth1[0]
        entered = tokens[:, 0] == drafts[node]
        p_second = _chi_square(tokens[entered, 1], targets[node + 1], f"{label}, token after node {node}")
        require(min(p_first, p_second) > 1e-4, f"{label}: emitted tokens do not follow the target "
                                               f"(chi-square p = {p_first:.2g}, {p_second:.2g})")
        results[label] = {"p_first": round(p_first, 4), "p_second": round(p_second, 4),
                          "entered_node": int(entered.sum()),
                          "mean_tokens": round(float(out.num_accepted.double().mean()) + 1, 3)}
    check.detail["results"] = results
    check.detail["summary"] = "; ".join(f"{k}: p={v['p_first']}, {v['p_second']}" for k, v in results.items())


def _random_heads(config: HeadsConfig, seed: int) -> NFoxHeads:
    heads = NFoxHeads(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return heads.eval()


@torch.inference_mode()
def check_heads(check: Check, sizes: Sizes) -> None:
    """NFoxHeads forward on the device (float32, no TF32) == on the CPU; tree drafting from the
    device's logits == the CPU's drafting of the same logits, Medusa and token-conditioned heads."""
    device, hidden, vocab = sizes.device, sizes.heads_hidden, sizes.heads_vocab
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(61)
    tokens = 5
    h = torch.randn(tokens, hidden, generator=gen)
    base_lm_head = torch.randn(vocab, hidden, generator=gen) * 0.02
    embed = torch.randn(vocab, hidden, generator=gen)
    tree = tree_named("mc_sim_16")
    worst = {}
    for label, shared, conditioning, layers in (("medusa", False, "none", 1), ("conditioned", True, "tokens", 2)):
        config = HeadsConfig(num_heads=3, num_layers=layers, hidden_size=hidden, vocab_size=vocab,
                             shared_lm_head=shared, conditioning=conditioning)
        cpu_heads = _random_heads(config, seed=62)
        dev_heads = copy.deepcopy(cpu_heads).to(device)
        ctx_tokens = torch.randint(0, vocab, (tokens, 3), generator=gen)
        context = embed[ctx_tokens] if conditioning == "tokens" else None
        lm = base_lm_head if shared else None
        want = cpu_heads(h, lm, context)
        got = dev_heads(h.to(device), None if lm is None else lm.to(device),
                        None if context is None else context.to(device))
        require(got.device.type == torch.device(device).type, f"{label}: logits on {got.device}")
        worst[label] = compare(got, want, 2e-3, f"{label} heads logits")
        drafter = TreeDrafter(tree)
        if conditioning == "none":
            drafted = drafter.draft(got)
            require(drafted.device.type == torch.device(device).type, f"drafts on {drafted.device}")
            require(bool(torch.equal(drafted.cpu(), drafter.draft(got.cpu()))), "tree drafts differ from the CPU's")
        else:
            d_h, d_embed, d_lm = h.to(device), embed.to(device), base_lm_head.to(device)

            def step(d, rows, ctx):  # the heads on the device, for either drafting run
                return dev_heads.head_logits(d, d_h[rows.to(device)], d_embed[ctx.to(device)], d_lm)

            first = ctx_tokens[:, 0]
            drafted = drafter.draft_conditioned(step, first.to(device))
            require(drafted.device.type == torch.device(device).type, f"drafts on {drafted.device}")
            on_cpu = drafter.draft_conditioned(lambda d, r, c: step(d, r, c).cpu(), first)
            require(bool(torch.equal(drafted.cpu(), on_cpu)), "conditioned tree drafts differ from the CPU's")
    check.detail["max_abs_error"] = {k: round(v, 7) for k, v in worst.items()}
    check.detail["summary"] = f"hidden {hidden}, vocab {vocab}, worst " + ", ".join(
        f"{k} {v:.2g}" for k, v in worst.items())


def check_sampler_step(check: Check, sizes: Sizes) -> None:
    """The plugin's TreeRejectionSampler on the device, as vLLM's runner calls it: a step with greedy
    and sampled tree requests (one tree only partly scheduled, two sharing a tree) and a chain request
    left to vLLM's sampler, then KV compaction of the accepted paths. Greedy requests must emit exactly
    the CPU reference's tokens, the chain row must stay vLLM's, the cache must equal a CPU compaction."""
    from check_kernels import plugin_vllm_imports
    from types import SimpleNamespace

    from vllm_nfoxhead.integration.tree_sampler import TreeRejectionSampler
    from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep, set_current_step
    from vllm_nfoxhead.core.kv_compaction import compaction_pairs

    device, vocab = sizes.device, sizes.vocab
    trees = {"A": tree_named("mc_sim_16"), "B": tree_named("wide_6")}
    # (kind, tree, drafts scheduled, temperature): vLLM marks greedy requests with temperature < 1e-5
    plan = [("tree", "A", 16, 0.0), ("chain", None, 3, 0.0), ("tree", "A", 10, 0.8), ("tree", "B", 6, -1.0),
            ("tree", "A", 16, 0.9), ("tree", "A", 16, 0.0)]
    counts = [n for _, _, n, _ in plan]
    rows_of, drafts_of, refs = [], [], {}
    for i, (kind, name, n, t) in enumerate(plan):
        if kind == "tree":
            buffers = trees[name].buffers("cpu")
            drafts, logits, _ = peaked_case(buffers, 1, vocab, seed=70 + i)
            drafts[:, n:] = -1  # nodes past n are not scheduled this step
            rows_of.append(logits[0, : n + 1])
            drafts_of.append(drafts[0, :n])
            if t < 1e-5:
                padded = torch.cat([logits[:, : n + 1], logits[:, n : n + 1].expand(-1, buffers.num_nodes - n, -1)], 1)
                refs[i] = accept_greedy(buffers, drafts, padded)
        else:
            gen = torch.Generator().manual_seed(70 + i)
            rows_of.append(torch.randn(n + 1, vocab, generator=gen))
            drafts_of.append(torch.randint(0, vocab, (n,), generator=gen))
    logits = torch.cat(rows_of).to(device)  # [sum(n+1), V]: per request its draft rows, then the bonus row
    metadata = SimpleNamespace(num_draft_tokens=counts, draft_token_ids=torch.cat(drafts_of).to(device))
    sampling = SimpleNamespace(
        all_greedy=False, temperature=torch.tensor([t for *_, t in plan], device=device),
        top_k=torch.tensor([vocab, vocab, 40, vocab, vocab, vocab], device=device),
        top_p=torch.tensor([1.0, 1.0, 0.95, 1.0, 0.9, 1.0], device=device),
        generators={2: torch.Generator(device=device).manual_seed(7)})
    chain_tokens = torch.tensor([5, 6, 7, 8], device=device)

    def vllm_sampler(meta, draft_probs, step_logits, sampling_metadata):  # vLLM's own result, stubbed
        out = torch.full((len(plan), max(counts) + 1), -1, dtype=torch.int32, device=device)
        out[1, :4] = chain_tokens.to(torch.int32)
        return SimpleNamespace(sampled_token_ids=out)

    # The step: query rows per request (root + scheduled nodes), slots in a paged cache.
    h_kv, d, block = 2, 16, 16
    ctxs = [20, 7, 33, 50, 3, 64]
    table = torch.randperm(64, generator=torch.Generator().manual_seed(3))[:60].view(6, 10)
    starts, slots = [0], []
    for i, n in enumerate(counts):
        pos = torch.arange(ctxs[i], ctxs[i] + n + 1)
        slots.append(table[i][pos // block] * block + pos % block)
        starts.append(starts[-1] + n + 1)
    slot_mapping = torch.cat(slots).to(device)
    requests = [TreeRequest(i, starts[i], ctxs[i], n, trees[name].buffers("cpu"), tree=trees[name])
                for i, (kind, name, n, _) in enumerate(plan) if kind == "tree"]
    step = TreeStep(requests, slot_mapping=slot_mapping)
    cache_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kv_cache = torch.randn(64, block, h_kv, 2 * d, generator=torch.Generator().manual_seed(4)).to(cache_dtype)
    kv_cache = kv_cache.to(device).transpose(1, 2)  # the Triton backend's logical view of an NHD cache
    before = kv_cache.cpu().clone()
    layer = SimpleNamespace()
    step.layers[id(layer)] = (layer, SimpleNamespace(), kv_cache)

    sampler = TreeRejectionSampler(vllm_sampler, SimpleNamespace(acceptance="exact", posterior_threshold=0.09,
                                                                 posterior_alpha=0.3))
    set_current_step(step)
    try:
        with plugin_vllm_imports():
            out = sampler(metadata, None, logits, sampling)
    finally:
        set_current_step(None)
    tokens = out.sampled_token_ids
    require(tokens.device.type == torch.device(device).type, f"sampled tokens on {tokens.device}")
    require(bool(torch.equal(tokens[1, :4].long(), chain_tokens)) and bool((tokens[1, 4:] == -1).all()),
            "the chain request's row was changed")
    for i, ref in refs.items():
        want = torch.full((tokens.shape[1],), -1, dtype=torch.long)
        want[: ref.tokens.shape[1]] = ref.tokens[0]
        require(bool(torch.equal(tokens[i].long().cpu(), want)),
                f"greedy request {i}: emitted {tokens[i].tolist()}, CPU reference {want.tolist()}")
    by_index = {r.batch_index: r for r in requests}
    for i, ref in refs.items():
        require(by_index[i].accepted == [int(x) for x in ref.accepted_nodes[0] if x >= 0],
                f"request {i}: accepted {by_index[i].accepted}")
    for req in requests:  # sampled requests: the emitted drafts are the accepted nodes' tokens
        i = req.batch_index
        emitted = tokens[i].long().cpu()
        num = len(req.accepted)
        require(bool(torch.equal(emitted[:num], drafts_of[i][req.accepted])) and int(emitted[num]) >= 0
                and bool((emitted[num + 1 :] == -1).all()), f"request {i}: tokens {emitted.tolist()} do not "
                                                           f"match its accepted nodes {req.accepted}")
    # KV compaction, recomputed on the CPU from the same accepted paths.
    want = before.transpose(1, 2).reshape(-1, h_kv, 2 * d).clone()
    flat_before = want.clone()
    moved = 0
    for req in requests:
        if req.accepted:
            src, dst = compaction_pairs(slot_mapping.cpu()[req.start + 1 : req.start + req.num_rows][None],
                                        torch.tensor([req.accepted]))
            want[dst] = flat_before[src]
            moved += int(src.numel())
    got = kv_cache.transpose(1, 2).reshape(-1, h_kv, 2 * d).cpu()
    require(moved > 0, "no accepted node needed moving: the case does not exercise compaction")
    require(bool(torch.equal(got, want)), "KV cache after compaction differs from the CPU reference")
    check.detail["accepted"] = {r.batch_index: r.accepted for r in requests}
    check.detail["summary"] = ("accepted nodes per tree request " +
                               ", ".join(f"{r.batch_index}:{len(r.accepted)}" for r in requests) +
                               f"; {moved} KV slots moved")
