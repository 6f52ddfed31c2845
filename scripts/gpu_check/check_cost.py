"""Verification-cost table for a Llama-3-8B-shaped model, as tree_builder --cost-table reads it.

{N: time to score N+1 tokens (root + N tree nodes) after `context` cached tokens
 / time to score 1 token}, like `python -m vllm_nfoxhead.tools.verify_cost` on CPU, but
measured here with a minimal decoder in plain torch (random bf16 weights: speed
does not depend on the values) whose attention is vLLM's Triton kernel over a
paged KV cache, called as vLLM's Triton backend calls it (split-K "3D" kernel
for up to 8 query rows) and followed, for a branching tree, by the plugin's own
`fix_tree_rows_triton` (a second kernel call with the tree as qq_bias).

Execution mirrors vLLM's default CUDA graph mode (PIECEWISE): everything
between two attention calls is one CUDA graph, attention runs eagerly between
them. Timed with CUDA events after a warm-up; the median of `repeats` steps.
If graph capture fails the table is measured eagerly (the report says which).
On CPU (--interpret) the same code runs eagerly at toy size, only to exercise it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from check_attention import ACCURACIES
from check_common import Check, Sizes, dtype_of, require
from check_kernels import load_unified_attention, plugin_vllm_imports

from vllm_nfoxhead.integration.tree_step import TreeRequest, TreeStep, is_chain
from vllm_nfoxhead.integration.triton_tree_attention import fix_tree_rows_triton, paged_kv
from vllm_nfoxhead.core.tree_search import build_tree

SEGMENTS_3D = 16  # vLLM's NUM_PAR_SOFTMAX_SEGMENTS
THRESHOLD_3D = 128  # vLLM's MIN_LAUNCH_GRID_SIZE_2D; seq_threshold_3D = this // num_kv_heads
MAX_3D_ROWS = 8  # vLLM's MAX_3D_QUERY_LEN


class Decoder:
    """Llama decoder: RMSNorm, fused QKV, RoPE, GQA attention (vLLM's kernel), SwiGLU MLP, LM head."""

    def __init__(self, cfg: dict[str, int], dtype: torch.dtype, device: str, max_tokens: int,
                 split_k: bool = True) -> None:
        self.cfg, self.dtype, self.device, self.split_k = cfg, dtype, device, split_k
        h, hq, hkv, d, inter, v = (cfg[k] for k in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"))
        gen = torch.Generator(device=device).manual_seed(0)

        def w(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=device).normal_(0, 0.02, generator=gen)

        def ones() -> torch.Tensor:
            return torch.ones(h, dtype=dtype, device=device)

        self.embed, self.lm_head = w(v, h), w(v, h)
        self.layers = [dict(qkv=w((hq + 2 * hkv) * d, h), o=w(h, hq * d), gate_up=w(2 * inter, h), down=w(h, inter),
                            ln1=ones(), ln2=ones()) for _ in range(cfg["layers"])]
        self.norm = torch.ones(h, dtype=dtype, device=device)
        self.scale = d ** -0.5
        block = cfg["block_size"]
        self.max_len = cfg["context"] + max_tokens
        self.num_blocks = -(-self.max_len // block) + 1
        # Per layer, the Triton backend's logical [num_blocks, H_kv, block, 2D] view of an NHD cache.
        self.kv_caches = [w(self.num_blocks, block, hkv, 2 * d).transpose(1, 2) for _ in self.layers]
        self.block_table = torch.randperm(self.num_blocks, device="cpu")[None, : self.num_blocks - 1].to(
            torch.int32).to(device)
        inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        angles = torch.outer(torch.arange(self.max_len + 256, dtype=torch.float32), inv)
        self.cos = torch.cat([angles.cos()] * 2, -1).to(dtype).to(device)
        self.sin = torch.cat([angles.sin()] * 2, -1).to(dtype).to(device)
        rows_3d = max(1, THRESHOLD_3D // hkv) * MAX_3D_ROWS
        self.segm_out = torch.empty(rows_3d, hq, SEGMENTS_3D, triton_pow2(d), dtype=torch.float32, device=device)
        self.segm_max = torch.empty(rows_3d, hq, SEGMENTS_3D, dtype=torch.float32, device=device)
        self.segm_sum = torch.empty(rows_3d, hq, SEGMENTS_3D, dtype=torch.float32, device=device)

    # ------------------------------------------------------------ one step's static inputs

    def step_inputs(self, n: int) -> SimpleNamespace:
        """Static device tensors for a step scoring n+1 tokens after `context` cached ones, and the
        plugin's TreeStep for the best n-node tree (None when that tree is a chain, as vLLM's runner does)."""
        ctx, block, dev = self.cfg["context"], self.cfg["block_size"], self.device
        t = n + 1
        positions = torch.arange(ctx, ctx + t)
        step = None
        if n >= 1:
            tree = build_tree(ACCURACIES, n).tree
            buffers = tree.buffers("cpu")
            positions = ctx + buffers.position_offsets
            if not is_chain(buffers.parent.tolist()):
                step = TreeStep([TreeRequest(0, 0, ctx, n, buffers, tree=tree)])
        slots_pos = torch.arange(ctx, ctx + t)  # nodes take consecutive slots (tree_step.build_step)
        table = self.block_table[0].cpu().long()
        slots = table[slots_pos // block] * block + slots_pos % block
        gen = torch.Generator().manual_seed(n)
        return SimpleNamespace(
            n=n, tokens=torch.randint(0, self.cfg["vocab"], (t,), generator=gen).to(dev),
            positions=positions.to(dev), slot_mapping=slots.to(dev),
            cu=torch.tensor([0, t], dtype=torch.int32, device=dev),
            seq_lens=torch.tensor([ctx + t], dtype=torch.int32, device=dev), max_seq=ctx + t, step=step,
            metadata=SimpleNamespace(block_table=self.block_table, slot_mapping=slots.to(dev), rswa_window=None),
        )

    # ------------------------------------------------------------ the model, in segments

    def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(self.dtype) * weight

    def pre_attention(self, i: int, s: SimpleNamespace, buf: SimpleNamespace) -> None:
        """Layer i up to attention: buf.x (residual stream) -> buf.q, K/V written to the paged cache."""
        hq, hkv, d = self.cfg["heads"], self.cfg["kv_heads"], self.cfg["head_dim"]
        layer = self.layers[i]
        qkv = self.rms(buf.x, layer["ln1"]) @ layer["qkv"].T
        q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        cos, sin = self.cos[s.positions][:, None], self.sin[s.positions][:, None]
        q, k = (rope(t.view(t.shape[0], -1, d), cos, sin) for t in (q, k))
        buf.q.copy_(q)
        buf.k, buf.v = k, v.view(-1, hkv, d)
        cache, block = self.kv_caches[i], self.cfg["block_size"]
        cache[s.slot_mapping // block, :, s.slot_mapping % block] = torch.cat([k, buf.v], dim=-1)

    def attention(self, i: int, s: SimpleNamespace, buf: SimpleNamespace) -> None:
        """vLLM's backend call (causal), then the plugin's tree fix-up for a branching tree."""
        d, hkv = self.cfg["head_dim"], self.cfg["kv_heads"]
        unified = load_unified_attention()
        key_cache, value_cache = paged_kv(self.kv_caches[i], d)
        ones = self.ones
        split_k = dict(seq_threshold_3D=max(1, THRESHOLD_3D // hkv), num_par_softmax_segments=SEGMENTS_3D,
                       softmax_segm_output=self.segm_out, softmax_segm_max=self.segm_max,
                       softmax_segm_expsum=self.segm_sum) if self.split_k else {}
        unified.unified_attention(
            q=buf.q, k=key_cache, v=value_cache, out=buf.attn, cu_seqlens_q=s.cu, max_seqlen_q=s.n + 1,
            seqused_k=s.seq_lens, max_seqlen_k=s.max_seq, softmax_scale=self.scale, causal=True,
            window_size=(-1, -1), block_table=self.block_table, softcap=0, q_descale=None,
            k_descale=ones.expand(1, hkv), v_descale=ones.expand(1, hkv), **split_k)
        if s.step is not None:
            fix_tree_rows_triton(self.impl, self.layer_ns, buf.q, buf.k, buf.v, self.kv_caches[i], s.metadata,
                                 buf.attn, s.step)

    def post_attention(self, i: int, buf: SimpleNamespace) -> None:
        layer = self.layers[i]
        x = buf.x + buf.attn.view(buf.attn.shape[0], -1) @ layer["o"].T
        gate, up = (self.rms(x, layer["ln2"]) @ layer["gate_up"].T).chunk(2, dim=-1)
        buf.x.copy_(x + (F.silu(gate) * up) @ layer["down"].T)

    def prepare(self) -> None:
        d = self.cfg["head_dim"]
        self.ones = torch.ones(1, device=self.device)
        self.impl = SimpleNamespace(attn_type="decoder", head_size=d, scale=self.scale, sliding_window=None,
                                    alibi_slopes=None, logits_soft_cap=None, sinks=None, kv_cache_dtype="auto",
                                    kv_sharing_target_layer_name=None, use_td=False)
        self.layer_ns = SimpleNamespace(_k_scale=self.ones, _v_scale=self.ones)

    def buffers(self, s: SimpleNamespace) -> SimpleNamespace:
        t, h, hq, d = s.n + 1, self.cfg["hidden"], self.cfg["heads"], self.cfg["head_dim"]
        return SimpleNamespace(x=torch.empty(t, h, dtype=self.dtype, device=self.device),
                               q=torch.empty(t, hq, d, dtype=self.dtype, device=self.device),
                               attn=torch.empty(t, hq, d, dtype=self.dtype, device=self.device),
                               logits=torch.empty(t, self.cfg["vocab"], dtype=self.dtype, device=self.device),
                               k=None, v=None)

    def segments(self, s: SimpleNamespace, buf: SimpleNamespace) -> list:
        """Callables between attention calls: [embed + pre 0, post 0 + pre 1, ..., post L-1 + head]."""
        last = len(self.layers) - 1

        def first() -> None:
            buf.x.copy_(self.embed[s.tokens])
            self.pre_attention(0, s, buf)

        def middle(i: int):
            def run() -> None:
                self.post_attention(i, buf)
                self.pre_attention(i + 1, s, buf)
            return run

        def final() -> None:
            self.post_attention(last, buf)
            buf.logits.copy_(self.rms(buf.x, self.norm) @ self.lm_head.T)

        return [first] + [middle(i) for i in range(last)] + [final]


def triton_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Runner:
    """One step = segments with attention between them; eager, or segments as CUDA graphs."""

    def __init__(self, model: Decoder, n: int, graphs: bool) -> None:
        self.model, self.s = model, model.step_inputs(n)
        self.buf = model.buffers(self.s)
        self.segs = model.segments(self.s, self.buf)
        self.graphs: list[torch.cuda.CUDAGraph] | None = None
        if graphs:
            self.step()  # eager warm-up: Triton compiles, the plugin caches this step's groups
            torch.cuda.synchronize()
            pool = torch.cuda.graph_pool_handle()
            captured = []
            for seg in self.segs:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    seg()
                captured.append(g)
            self.graphs = captured

    def step(self) -> None:
        m, s, buf = self.model, self.s, self.buf
        for i, seg in enumerate(self.segs):
            if self.graphs is not None:
                self.graphs[i].replay()
            else:
                seg()
            if i < len(m.layers):
                m.attention(i, s, buf)


def median_ms(fn: Callable[[], object], repeats: int, cuda: bool, warmup: int = 2) -> float:
    """Median wall time of fn() in ms over `repeats` calls (CUDA events on a GPU), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def measure(sizes: Sizes, graphs: bool, split_k: bool) -> tuple[dict[int, float], dict]:
    """{n: median ms of one step scoring n+1 tokens}, n = 0 (plain decoding) and sizes.cost_sizes,
    and extras: with graphs, the plain step as ONE full CUDA graph (attention inside, as vLLM's default
    FULL_AND_PIECEWISE mode runs plain decoding; the plugin's tree steps need PIECEWISE)."""
    cuda = sizes.device == "cuda"
    model = Decoder(sizes.cost_model, dtype_of(sizes.cost_dtype), sizes.device, max(sizes.cost_sizes) + 1,
                    split_k=split_k)
    model.prepare()
    times, extra = {}, {}
    with plugin_vllm_imports(), _grouping_without_numpy():
        for n in (0, *sizes.cost_sizes):
            runner = Runner(model, n, graphs)
            times[n] = median_ms(runner.step, sizes.cost_repeats, cuda, sizes.cost_warmup)
            require(bool(torch.isfinite(runner.buf.logits).all()), f"n={n}: non-finite logits")
            del runner
        if graphs:
            try:
                runner = Runner(model, 0, graphs=False)
                runner.step()
                torch.cuda.synchronize()
                whole = torch.cuda.CUDAGraph()
                with torch.cuda.graph(whole):
                    runner.step()
                extra["plain_step_full_graph_ms"] = round(median_ms(whole.replay, sizes.cost_repeats, cuda), 4)
                del whole, runner
            except Exception as exc:  # noqa: BLE001 - an extra; the table does not depend on it
                extra["plain_step_full_graph_error"] = repr(exc)[:300]
    return times, extra


@contextlib.contextmanager
def _grouping_without_numpy():
    """The plugin's group_by_mask keys masks by Tensor.numpy() bytes; vLLM always brings numpy, the GPU
    machine might not. Then (only then) group by the mask's values as a tuple: same groups."""
    try:
        importlib.import_module("numpy")
    except ImportError:
        from vllm_nfoxhead.integration import triton_tree_attention as tta

        original = tta.group_by_mask

        def group_by_mask(requests):
            groups = {}
            for req in requests:
                groups.setdefault((req.num_rows, tuple(req.mask.flatten().tolist())), []).append(req)
            return list(groups.values())

        tta.group_by_mask = group_by_mask
        try:
            yield
        finally:
            tta.group_by_mask = original
        return
    yield


def sampler_ms(sizes: Sizes) -> dict[str, dict[int, float]]:
    """Median ms of verify_trees for one request (the Llama-3 vocabulary), greedy and sampled."""
    from vllm_nfoxhead.core.tree_verify import verify_trees

    cuda, dev, vocab = sizes.device == "cuda", sizes.device, sizes.cost_model["vocab"]
    out: dict[str, dict[int, float]] = {"greedy": {}, "sampled": {}}
    for n in sizes.cost_sizes:
        tree = build_tree(ACCURACIES, n).tree
        buffers = tree.buffers(dev)
        logits = torch.randn(1, n + 1, vocab, device=dev)
        drafts = torch.randint(0, vocab, (1, n), device=dev)
        for label, t in (("greedy", 0.0), ("sampled", 0.8)):
            args = (buffers, drafts, logits, torch.full((1,), t, device=dev),
                    torch.full((1,), 50, dtype=torch.long, device=dev), torch.full((1,), 0.9, device=dev))
            out[label][n] = round(median_ms(lambda: verify_trees(*args), max(3, sizes.cost_repeats // 3), cuda), 4)
    return out


def check_cost_table(check: Check, sizes: Sizes, out_dir: Path) -> None:
    """Measure, write cost_table.json, and have tree_builder --cost-table read it."""
    attempts = [("piecewise CUDA graphs", True, sizes.cost_split_k), ("eager", False, sizes.cost_split_k)]
    if sizes.device != "cuda":
        attempts = attempts[1:]
    if sizes.cost_split_k:
        attempts.append(("eager, 2D kernel only", False, False))
    errors = {}
    for mode, graphs, split_k in attempts:  # one-shot run: fall back rather than lose the table
        try:
            times, extra = measure(sizes, graphs, split_k)
            break
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            errors[mode] = repr(exc)[:800]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    else:
        raise RuntimeError(f"every way of measuring failed: {errors}")
    if errors:
        check.detail["fallback_errors"] = errors
    check.detail.update(extra)
    base = times[0]
    table = {str(n): round(times[n] / base, 4) for n in sizes.cost_sizes}
    path = out_dir / "cost_table.json"
    path.write_text(json.dumps(table, indent=2) + "\n")
    check.detail.update(mode=mode, model=sizes.cost_model, dtype=sizes.cost_dtype,
                        step_ms={str(n): round(t, 4) for n, t in times.items()}, cost_table=table,
                        file=path.name)
    if sizes.device == "cuda":
        check.detail["sampler_ms"] = sampler_ms(sizes)
    check.detail["tree_builder"] = builder_choice(path)
    require(all(c > 0 for c in table.values()), "non-positive cost")
    chosen = check.detail["tree_builder"]
    check.detail["summary"] = (f"{mode}{' (after a fallback, see report)' if errors else ''}; "
                               f"plain step {base:.3g} ms; cost " +
                               " ".join(f"{n}:{c:.2f}" for n, c in table.items()) +
                               f"; tree_builder picks {chosen.get('nodes')} nodes" +
                               (f"; plain step as one full graph {extra['plain_step_full_graph_ms']:.3g} ms"
                                if "plain_step_full_graph_ms" in extra else ""))


def builder_choice(cost_path: Path) -> dict:
    """`python -m vllm_nfoxhead.tools.tree_builder --accuracies ... --cost-table cost_path`, in-process."""
    from vllm_nfoxhead.tools import tree_builder

    heads = Path(__file__).resolve().parents[2] / "heads" / "smollm2-nfoxhead"
    accuracies = str(heads) if (heads / "config.json").is_file() else None
    if accuracies is None:
        accuracies = str(cost_path.with_name("accuracies_example.json"))
        Path(accuracies).write_text(json.dumps(ACCURACIES))
    buffer = __import__("io").StringIO()
    with contextlib.redirect_stdout(buffer):
        code = tree_builder.main(["--accuracies", accuracies, "--cost-table", str(cost_path)])
    require(code == 0, f"tree_builder --cost-table {cost_path.name} exited {code}")
    result = json.loads(buffer.getvalue())
    return {"accuracies": Path(accuracies).name, "nodes": result["nodes"],
            "expected_tokens_per_step": result["expected_tokens_per_step"],
            "tokens_per_unit_time": result.get("tokens_per_unit_time"), "tree": result["tree"]}
