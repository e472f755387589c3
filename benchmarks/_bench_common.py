"""Helpers shared by the benchmarks: the CPU, threads, precision, and timing one step.

Precision rule (issue 19): bf16 autocast on CUDA, and on a CPU only where it has native
bf16 (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``); fp32 otherwise. On CPUs without
it, bf16 autocast is emulated and 25-35x slower than fp32 (see
``../shared/notes/cpu-training-costs.md``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# One home for the machine facts and the precision rule: brats_pipeline.devices.
from brats_pipeline.devices import (  # noqa: E402,F401  (re-exported for the benchmarks)
    NATIVE_BF16_FLAGS,
    cores_available,
    cpu_flags,
    cpu_has_native_bf16,
    cpu_model_name,
    reuse_freed_memory,
)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (default: the cores available); returns it."""
    n = cores_available() if threads is None else threads
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {threads!r}")
    torch.set_num_threads(n)
    return n


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA where there is one, else CPU), ``cpu`` or ``cuda[:i]``.

    Raises:
        ValueError: an unknown name, or ``cuda`` without a CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:index]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use auto, cpu or cuda[:index]")
    return device


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``fp32`` or ``bf16`` for ``device``: ``auto`` follows the rule in the module docstring."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` (a no-op context for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU), so timings cover the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device, precision: str, threads: int) -> dict[str, Any]:
    """What a figure was measured on: CPU model, flags that matter, GPU, versions, threads."""
    import monai

    info: dict[str, Any] = {
        "cpu_model": cpu_model_name(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores_available": cores_available(),
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "device": str(device),
        "precision": precision,
        "torch": torch.__version__,
        "monai": monai.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def set_up_compute(device_name: str, precision: str, threads: int | None) -> tuple[torch.device, str, int, dict[str, Any]]:
    """Resolve device and precision, set the threads, print one line naming the machine.

    Returns:
        ``(device, precision, threads, machine_info)``.

    Raises:
        ValueError: an unknown device or precision, or a bad thread count.
    """
    device = resolve_device(device_name)
    precision = resolve_precision(device, precision)
    threads = set_threads(threads)
    reused = reuse_freed_memory()  # every method of the run alike (brats-train does the same)
    info = {**machine_info(device, precision, threads), "malloc_reuse": reused}
    print(f"CPU: {info['cpu_model']} ({info['cores_available']} cores, native bf16: {info['cpu_native_bf16']}); "
          f"device {device}{' ' + info['gpu'] if 'gpu' in info else ''}; precision {precision}; torch threads {threads}",
          flush=True)
    return device, precision, threads, info


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Run ``step`` ``warmup`` + ``steps`` times; return the measured steps' (wall, CPU) seconds.

    CPU seconds are the process's CPU time (all its threads, ``time.process_time``).
    """
    if warmup < 0 or steps < 1:
        raise ValueError(f"need warmup >= 0 and steps >= 1, got warmup={warmup}, steps={steps}")
    walls, cpus = [], []
    for i in range(warmup + steps):
        sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        sync(device)
        if i >= warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return walls, cpus
