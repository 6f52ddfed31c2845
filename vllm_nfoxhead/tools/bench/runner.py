"""Run methods at several concurrencies and measure them.

Concurrency c means at most c requests in flight: requests are fed to the
engine as earlier ones finish (continuous batching), as a server would see.

Two schedules. `run_method` runs one engine at a time, all prompts per
concurrency. `run_interleaved` starts every method's engine at once and
alternates them over small groups of prompts (the order reversed every other
group), so each method sees the same machine speed: on shared CPUs the speed of
identical runs drifts by 15-20% over minutes, which swamps the differences a
benchmark is after when methods run one after another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from vllm_nfoxhead.core.errors import NFoxHeadError
from vllm_nfoxhead.tools.bench.methods import Method


@dataclass
class RunResult:
    method: str
    concurrency: int
    seconds: float
    num_tokens: int
    acceptance_length: float | None  # tokens per verification step (1 + accepted / drafts)
    per_position_acceptance: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    round: int = 0  # interleaved runs: speed-ups compare with the baseline of the same round


class SpecCounts:
    """One engine's speculative-decoding counts, summed from the stats it records each step.

    vLLM's Prometheus counters (what `LLM.get_metrics` reads) cannot tell engines
    apart: each new engine re-registers them (PrometheusStatLogger.__init__ calls
    unregister_vllm_metrics), so with several engines in one process only the newest
    one's counts would be readable. This wraps the engine's own
    `StatLoggerManager.record` (vllm/v1/metrics/loggers.py), bench-only.
    `reset()` before a measured phase, read the fields after it."""

    def __init__(self, llm: Any) -> None:
        manager = llm.llm_engine.logger_manager
        if manager is None:
            raise NFoxHeadError("the benchmark's engines need stats", "start them with disable_log_stats=False")
        self.reset()
        record = manager.record

        def counting_record(*args: Any, **kwargs: Any) -> Any:
            stats = kwargs.get("scheduler_stats", args[0] if args else None)
            spec = getattr(stats, "spec_decoding_stats", None)
            if spec is not None:
                self.add(spec.num_drafts, spec.num_accepted_tokens, list(spec.num_accepted_tokens_per_pos))
            return record(*args, **kwargs)

        manager.record = counting_record

    def reset(self) -> None:
        self.drafts = 0
        self.accepted = 0
        self.per_position: list[int] = []  # accepted drafts at position 0, 1, ...

    def add(self, drafts: int, accepted: int, per_position: list[int]) -> None:
        self.drafts += drafts
        self.accepted += accepted
        self.per_position += [0] * (len(per_position) - len(self.per_position))
        for i, n in enumerate(per_position):
            self.per_position[i] += n


def spec_counts(llm: Any) -> SpecCounts:
    """The counts attached to `llm` by `start_engine`."""
    return llm._nfoxhead_spec_counts


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


def start_engine(method: Method, engine_kwargs: dict[str, Any], concurrencies: list[int]) -> Any:
    """A vLLM engine for `method`, counting its own speculative decoding (`spec_counts`)."""
    from vllm import LLM

    llm = LLM(**engine_kwargs, speculative_config=method.speculative_config, max_num_seqs=max(concurrencies))
    llm._nfoxhead_spec_counts = SpecCounts(llm)
    return llm


def stop_engine(llm: Any) -> None:
    llm.llm_engine.engine_core.shutdown()


def run_method(method: Method, engine_kwargs: dict[str, Any], prompts: list[list[int]],
               params: Any, concurrencies: list[int]) -> list[RunResult]:
    llm = start_engine(method, engine_kwargs, concurrencies)
    try:
        generate_at(llm, prompts[:1], params, 1, f"{method.name} warm-up")
        results = []
        for c in concurrencies:
            spec_counts(llm).reset()
            outputs, seconds = generate_at(llm, prompts, params, c, f"{method.name} c={c}")
            results.append(measure(method, c, seconds, outputs, spec_counts(llm)))
        return results
    finally:
        stop_engine(llm)


# vLLM's worker busy-polls its input queue for 1 s after its last step
# (shm_broadcast's SpinCondition), taking a core another engine would need.
SETTLE_S = 1.2


def prompt_groups(num_prompts: int, concurrency: int) -> list[range]:
    """Consecutive index ranges of about 2 * concurrency prompts: the unit the methods alternate on."""
    n = max(1, round(num_prompts / (2 * concurrency)))
    bounds = [round(i * num_prompts / n) for i in range(n + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def alternating(methods: list[Method], groups: list[range]) -> Iterator[tuple[Method, range]]:
    """Every method on every group, the method order reversed on odd groups (ABBA)."""
    for g, group in enumerate(groups):
        for method in (methods if g % 2 == 0 else methods[::-1]):
            yield method, group


def run_interleaved(methods: list[Method], engine_kwargs: dict[str, Any], prompts: list[list[int]],
                    params: Any, concurrencies: list[int], settle_s: float = SETTLE_S,
                    max_engines: int | None = None) -> list[RunResult]:
    """One result per (method, c, round); methods[0] is the baseline, run in every round.

    As many engines run at once as memory allows (measured on the baseline's
    engine) or `max_engines`; the other methods are split into rounds that each
    alternate with the baseline, so every speed-up compares runs minutes apart at most."""
    baseline, others = methods[0], methods[1:]
    before = available_memory()
    base_llm = start_warm(baseline, engine_kwargs, prompts, params, concurrencies)
    try:
        size = max(1, (max_engines or engines_that_fit(before - available_memory())) - 1)
        results: list[RunResult] = []
        for r in range(0, max(len(others), 1), size):
            chunk = others[r:r + size]
            engines = {baseline.name: base_llm}
            try:
                for method in tqdm(chunk, desc=f"round {r // size + 1}: starting engines", unit="engine"):
                    engines[method.name] = start_warm(method, engine_kwargs, prompts, params, concurrencies)
                for res in alternate_round([baseline, *chunk], engines, prompts, params, concurrencies, settle_s):
                    res.round = r // size
                    results.append(res)
            finally:
                for name, llm in engines.items():
                    if name != baseline.name:
                        stop_engine(llm)
        return results
    finally:
        stop_engine(base_llm)


def start_warm(method: Method, engine_kwargs: dict[str, Any], prompts: list[list[int]], params: Any,
               concurrencies: list[int]) -> Any:
    llm = start_engine(method, engine_kwargs, concurrencies)
    generate_at(llm, prompts[:1], params, 1, f"{method.name} warm-up")
    return llm


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 where it cannot be read)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def engines_that_fit(footprint: int, reserve: int = 3 << 29) -> int:
    """How many engines of `footprint` bytes fit next to the one running, keeping `reserve` free."""
    if footprint <= 0:
        return 2
    return 1 + max(1, (available_memory() - reserve) // footprint)


def alternate_round(methods: list[Method], engines: dict[str, Any], prompts: list[list[int]], params: Any,
                    concurrencies: list[int], settle_s: float) -> list[RunResult]:
    """The methods' running engines alternating over prompt groups, per concurrency."""
    results = []
    for c in concurrencies:
        for m in methods:
            spec_counts(engines[m.name]).reset()
        outputs: dict[str, list[list[int]]] = {m.name: [[] for _ in prompts] for m in methods}
        seconds = dict.fromkeys(outputs, 0.0)
        for method, group in tqdm(list(alternating(methods, prompt_groups(len(prompts), c))),
                                  desc=f"c={c}", unit="run"):
            time.sleep(settle_s)
            outs, secs = generate_at(engines[method.name], [prompts[i] for i in group], params, c,
                                     f"{method.name} c={c}")
            seconds[method.name] += secs
            for i, out in zip(group, outs):
                outputs[method.name][i] = out
        results += [measure(m, c, seconds[m.name], outputs[m.name], spec_counts(engines[m.name])) for m in methods]
    return results


def measure(method: Method, c: int, seconds: float, outputs: list[list[int]], counts: SpecCounts) -> RunResult:
    """A RunResult from the outputs, wall seconds and the speculative counts of the run."""
    drafts, accepted, per_pos = counts.drafts, counts.accepted, counts.per_position
    return RunResult(
        method=method.name, concurrency=c, seconds=seconds,
        num_tokens=sum(len(o) for o in outputs),
        acceptance_length=(1 + accepted / drafts) if drafts else None,
        per_position_acceptance=[round(x / drafts, 4) for x in per_pos] if drafts else [],
        outputs=outputs,
    )
