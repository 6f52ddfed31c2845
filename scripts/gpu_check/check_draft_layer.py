"""The draft layer's serving path (core/layer_drafting.py, core/served_layer.py) on the check's device.

The proposer keeps each request's window of keys/values (`Windows`) and drafts
depth by depth through `LayerStep`; both must create every tensor on the
device of their inputs. With float64 weights the device and the CPU agree to
float32 rounding (the layer computes rotary angles in float32, as it does
in every dtype), far inside the gaps between the top
logits, so the drafted tokens must be identical; in bfloat16 the
per-depth outputs must stay close to the float64 reference on the same
(teacher-forced) contexts. The layer reads two feature layers besides the final
state (EAGLE-3's aux hidden states), so their norm and mix run on the device too.
"""

from __future__ import annotations

import copy

import torch
from check_attention import tree_named
from check_common import Check, Sizes, compare, require

from vllm_nfoxhead.core.draft_layer import DraftLayer, DraftLayerSpec
from vllm_nfoxhead.core.drafting import ChainDrafter
from vllm_nfoxhead.core.layer_drafting import LayerStep, Windows
from vllm_nfoxhead.core.served_layer import ServedLayer
from vllm_nfoxhead.core.tree import TreeDrafter

WINDOW = 4
ENTRIES = {"a": 7, "b": 2}  # "a" overflows the window (trimmed), "b" does not fill it
DEPTH = 4
FEATURE_LAYERS = (1, 2)  # entries are [n, 3H]: two aux states, then the final one


def _layer(hidden: int, heads: int, seed: int) -> DraftLayer:
    torch.manual_seed(seed)
    layer = DraftLayer(hidden, DraftLayerSpec(num_attention_heads=heads, intermediate_size=2 * hidden,
                                              window=WINDOW, feature_layers=FEATURE_LAYERS))
    with torch.no_grad():
        for p in layer.parameters():  # norms away from 1 so that they matter; weights at a 1/sqrt(H) scale
            p.normal_(1.0 if p.dim() == 1 else 0.0, 0.3 if p.dim() == 1 else hidden ** -0.5)
    return layer.eval()


def _windows(layer: ServedLayer, feats: dict[str, torch.Tensor], nexts: dict[str, torch.Tensor],
             embed: torch.Tensor) -> Windows:
    """Windows of both requests, the first entries one by one, the rest in one `extend` (as a step)."""
    windows = Windows(WINDOW)
    for r, f in feats.items():
        windows.append(r, layer, layer.entry(layer.features(f[:1]), embed[nexts[r][:1]]))
    windows.extend(layer, [(r, layer.entry(layer.features(f[1:]), embed[nexts[r][1:]]), None)
                           for r, f in feats.items()])
    return windows


def _step(layer: ServedLayer, windows: Windows, embed: torch.Tensor) -> LayerStep:
    return LayerStep(layer, windows, list(ENTRIES), lambda g: g @ embed.T, lambda ids: embed[ids])


@torch.inference_mode()
def check_draft_layer(check: Check, sizes: Sizes) -> None:
    device, hidden, vocab = sizes.device, sizes.heads_hidden, sizes.heads_vocab
    heads = max(2, hidden // 128)
    gen = torch.Generator().manual_seed(81)
    embed = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    parts = len(FEATURE_LAYERS) + 1
    feats = {r: torch.randn(n, parts * hidden, generator=gen, dtype=torch.float64) for r, n in ENTRIES.items()}
    nexts = {r: torch.randint(0, vocab, (n,), generator=gen) for r, n in ENTRIES.items()}
    first = torch.randint(0, vocab, (len(ENTRIES),), generator=gen)
    cpu_module = _layer(hidden, heads, seed=82).double()
    cpu_layer = ServedLayer(cpu_module)
    tree = tree_named("mc_sim_16")

    def run(layer: ServedLayer, dev: str, dtype: torch.dtype) -> tuple[Windows, torch.Tensor]:
        emb = embed.to(dev, dtype)
        windows = _windows(layer, {r: f.to(dev, dtype) for r, f in feats.items()},
                           {r: t.to(dev) for r, t in nexts.items()}, emb)
        return windows, emb

    cpu_windows, cpu_embed = run(cpu_layer, "cpu", torch.float64)
    dev_layer = ServedLayer(copy.deepcopy(cpu_module).to(device))
    dev_windows, dev_embed = run(dev_layer, device, torch.float64)
    for r in ENTRIES:
        require(dev_windows.keys[r].device.type == torch.device(device).type, f"window of {r} on the CPU")
        require(dev_windows.keys[r].shape[1] == min(ENTRIES[r], WINDOW), f"window of {r} not bounded")
        compare(dev_windows.keys[r], cpu_windows.keys[r], 1e-4, f"float64 window keys of {r}")
    want_tree = TreeDrafter(tree).draft_conditioned(_step(cpu_layer, cpu_windows, cpu_embed), first)
    got_tree = TreeDrafter(tree).draft_conditioned(_step(dev_layer, dev_windows, dev_embed), first.to(device))
    require(got_tree.device.type == torch.device(device).type, f"tree drafts on {got_tree.device}")
    require(bool(torch.equal(got_tree.cpu(), want_tree)), "float64 tree drafts differ from the CPU's")
    want_chain = ChainDrafter(DEPTH).draft_conditioned(_step(cpu_layer, cpu_windows, cpu_embed), first)
    got_chain = ChainDrafter(DEPTH).draft_conditioned(_step(dev_layer, dev_windows, dev_embed), first.to(device))
    require(bool(torch.equal(got_chain.cpu(), want_chain)), "float64 chain drafts differ from the CPU's")

    # bfloat16 on the device, teacher-forced along the CPU's chain: outputs per depth near float64's
    bf_layer = ServedLayer(copy.deepcopy(cpu_module).to(device, torch.bfloat16))
    bf_windows, bf_embed = run(bf_layer, device, torch.bfloat16)
    context = torch.cat([first.view(-1, 1), want_chain], dim=1)  # [B, 1 + DEPTH]
    rows = torch.arange(len(ENTRIES))
    ref, bf = _step(cpu_layer, cpu_windows, cpu_embed), _step(bf_layer, bf_windows, bf_embed)
    worst = 0.0
    for d in range(DEPTH):
        ref(d, rows, context[:, : d + 1])
        bf(d, rows.to(device), context[:, : d + 1].to(device))
        require(bf.g[d].dtype == torch.bfloat16, f"bfloat16 depth {d} computed in {bf.g[d].dtype}")
        worst = max(worst, compare(bf.g[d], ref.g[d], 0.15, f"bfloat16 depth {d} output"))
    check.detail["bf16_max_abs_error"] = round(worst, 5)
    check.detail["summary"] = (f"hidden {hidden}, {heads} heads, window {WINDOW}, feature layers "
                               f"{list(FEATURE_LAYERS)}; float64 tree and chain drafts "
                               f"equal the CPU's; bf16 outputs within {worst:.2g} of float64")
