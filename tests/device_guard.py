"""A TorchFunctionMode that catches CPU-only habits in code meant to run on a GPU, on a CPU.

On a CPU machine every tensor is on the CPU, so a `torch.zeros(n)` that would
land on the host next to CUDA logits goes unnoticed until a GPU runs it. Inside
`DeviceGuard`:
  - a factory call (torch.tensor, zeros, full, arange, rand, ...) must name its
    device, and that device must be the step's: a factory that relies on the
    default device is how a CPU tensor sneaks into a GPU path;
  - host reads (.tolist, .item, .cpu, .numpy, .to("cpu")) are recorded with
    their sizes, so a test can bound what crosses to the host.
`paused()` lets code under test call vLLM's own sampler unguarded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

FACTORIES = {
    torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand,
    torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye, torch.empty_strided,
}
HOST_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy}


class DeviceViolation(AssertionError):
    """A tensor was created off the step's device, or without naming a device."""


class DeviceGuard(TorchFunctionMode):
    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.host_reads: list[tuple[str, int]] = []  # (function, elements) per host read
        self._paused = 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self._paused:
            self._check(func, args, kwargs)
        return func(*args, **kwargs)

    def _check(self, func: Any, args: tuple, kwargs: dict) -> None:
        name = getattr(func, "__name__", str(func))
        if func in FACTORIES:
            device = kwargs.get("device")
            if device is None:
                raise DeviceViolation(f"torch.{name} without device= (it would default to the CPU)")
            if torch.device(device).type != self.device.type:
                raise DeviceViolation(f"torch.{name} on {device}, the step runs on {self.device}")
        elif func in HOST_READS or (func is torch.Tensor.to and _to_cpu(args, kwargs)):
            if isinstance(args[0], torch.Tensor):
                self.host_reads.append((name, args[0].numel()))

    @property
    def largest_host_read(self) -> int:
        return max((n for _, n in self.host_reads), default=0)


def _to_cpu(args: tuple, kwargs: dict) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"
