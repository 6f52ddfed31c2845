"""Benchmark output: a terminal table, a JSON file and a PNG plot of the speed-ups."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from vllm_nfoxhead.tools.bench.methods import Method
from vllm_nfoxhead.tools.bench.runner import RunResult


def rows(results: list[RunResult], methods: list[Method]) -> list[dict[str, Any]]:
    """One row per (method, concurrency), in `methods` order, with speed-up and output check against plain.

    Speed-ups compare with plain's run of the same round (interleaved runs); plain's
    own row sums its rounds."""
    plain = {(r.round, r.concurrency): r for r in results if r.method == "plain"}
    lossless = {m.name: m.lossless for m in methods}
    order = {m.name: i for i, m in enumerate(methods)}
    out = []
    for r in sorted(merge_baseline_rounds(results), key=lambda r: (order.get(r.method, len(order)), r.concurrency)):
        base = r if r.method == "plain" else plain[(r.round, r.concurrency)]
        out.append({
            "method": r.method, "concurrency": r.concurrency,
            "tokens_per_s": round(r.num_tokens / r.seconds, 2),
            "speedup": round((r.num_tokens / r.seconds) / (base.num_tokens / base.seconds), 3),
            "acceptance_length": None if r.acceptance_length is None else round(r.acceptance_length, 3),
            "per_position_acceptance": r.per_position_acceptance,
            "outputs_match_plain": r.outputs == base.outputs,
            "claims_lossless": lossless.get(r.method, True),
            "num_tokens": r.num_tokens, "seconds": round(r.seconds, 3), "round": r.round,
        })
    return out


def merge_baseline_rounds(results: list[RunResult]) -> list[RunResult]:
    """The results with plain's rounds at each concurrency summed into one new row (first round's outputs)."""
    merged: dict[int, RunResult] = {}
    rest = []
    for r in results:
        if r.method != "plain":
            rest.append(r)
        elif r.concurrency not in merged:
            merged[r.concurrency] = dataclasses.replace(r, round=0)
        else:
            m = merged[r.concurrency]
            m.num_tokens, m.seconds = m.num_tokens + r.num_tokens, m.seconds + r.seconds
    return [*merged.values(), *rest]


def table(report_rows: list[dict[str, Any]]) -> str:
    head = f"{'method':<36}{'conc':>5}{'tok/s':>10}{'speed-up':>10}{'accept len':>12}  {'= plain':<8}per-position acceptance"
    lines = [head, "-" * len(head)]
    for r in report_rows:
        acc = "-" if r["acceptance_length"] is None else f"{r['acceptance_length']:.2f}"
        pos = " ".join(f"{x:.2f}" for x in r["per_position_acceptance"][:8])
        lines.append(f"{r['method']:<36}{r['concurrency']:>5}{r['tokens_per_s']:>10.1f}"
                     f"{r['speedup']:>9.2f}x{acc:>12}  {str(r['outputs_match_plain']):<8}{pos}")
    return "\n".join(lines)


def write_json(path: Path, report_rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    path.write_text(json.dumps({"settings": settings, "results": report_rows}, indent=2) + "\n")


def plot(path: Path, report_rows: list[dict[str, Any]], title: str) -> None:
    """Speed-up over plain vLLM against concurrency, one line per method (the load curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in report_rows if r["method"] != "plain"))
    concs = sorted({r["concurrency"] for r in report_rows})
    by = {(r["method"], r["concurrency"]): r["speedup"] for r in report_rows}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m in methods:
        xs = [c for c in concs if (m, c) in by]
        ys = [by[(m, c)] for c in xs]
        ax.plot(xs, ys, marker="o", linestyle="--" if "policy-off" in m else "-", label=m)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(concs, [str(c) for c in concs])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("speed-up over plain vLLM (tokens/s ratio)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
