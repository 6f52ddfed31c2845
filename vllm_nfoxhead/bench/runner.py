"""Run one method at several concurrencies on one engine and measure it.

Concurrency c means at most c requests in flight: requests are fed to the
engine as earlier ones finish (continuous batching), as a server would see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from .methods import Method


@dataclass
class RunResult:
    method: str
    concurrency: int
    seconds: float
    num_tokens: int
    acceptance_length: float | None  # tokens per verification step (1 + accepted / drafts)
    per_position_acceptance: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)


def spec_counters(llm: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode"):
            values[m.name] = list(m.values) if hasattr(m, "values") else m.value
    return values


def generate_at(llm: Any, prompts: list[list[int]], params: Any, concurrency: int,
                label: str) -> tuple[list[list[int]], float]:
    """Token ids per prompt and wall seconds, keeping `concurrency` requests in flight."""
    engine = llm.llm_engine
    pending = list(enumerate(prompts))
    outputs: dict[int, list[int]] = {}
    bar = tqdm(total=len(prompts), desc=label, leave=False, unit="req")
    start = time.perf_counter()
    in_flight = 0
    while pending or in_flight:
        while pending and in_flight < concurrency:
            i, ids = pending.pop(0)
            engine.add_request(str(i), {"prompt_token_ids": ids}, params)
            in_flight += 1
        for out in engine.step():
            if out.finished:
                outputs[int(out.request_id)] = list(out.outputs[0].token_ids)
                in_flight -= 1
                bar.update(1)
    seconds = time.perf_counter() - start
    bar.close()
    return [outputs[i] for i in range(len(prompts))], seconds


def run_method(method: Method, engine_kwargs: dict[str, Any], prompts: list[list[int]],
               params: Any, concurrencies: list[int]) -> list[RunResult]:
    from vllm import LLM

    llm = LLM(**engine_kwargs, speculative_config=method.speculative_config,
              max_num_seqs=max(concurrencies))
    try:
        generate_at(llm, prompts[:1], params, 1, f"{method.name} warm-up")
        results = []
        for c in concurrencies:
            before = spec_counters(llm)
            outputs, seconds = generate_at(llm, prompts, params, c, f"{method.name} c={c}")
            results.append(measure(method, c, seconds, outputs, before, spec_counters(llm)))
        return results
    finally:
        llm.llm_engine.engine_core.shutdown()


def measure(method: Method, c: int, seconds: float, outputs: list[list[int]],
            before: dict[str, Any], after: dict[str, Any]) -> RunResult:
    def delta(name: str) -> Any:
        a, b = after.get(name, 0), before.get(name, 0)
        return [x - y for x, y in zip(a, b)] if isinstance(a, list) else a - b

    drafts = delta("vllm:spec_decode_num_drafts")
    accepted = delta("vllm:spec_decode_num_accepted_tokens")
    per_pos = delta("vllm:spec_decode_num_accepted_tokens_per_pos") or []
    return RunResult(
        method=method.name, concurrency=c, seconds=seconds,
        num_tokens=sum(len(o) for o in outputs),
        acceptance_length=(1 + accepted / drafts) if drafts else None,
        per_position_acceptance=[round(x / drafts, 4) for x in per_pos] if drafts else [],
        outputs=outputs,
    )
