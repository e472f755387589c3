"""The machine at hand: CPU model, native bf16, cores, and the precision rule (one home).

Precision rule: bf16 autocast on CUDA, and on a CPU only where it has native bf16 dot
products (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``: Intel Sapphire Rapids and
later, AMD Zen 4 and later); fp32 otherwise. Without them bf16 autocast is emulated and 25-35x
slower than fp32 (``../shared/notes/cpu-training-costs.md``). Name the CPU
(:func:`cpu_model_name`) beside every figure.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: CPU flags that make bf16 autocast fast (native bf16 dot products).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

__all__ = [
    "NATIVE_BF16_FLAGS",
    "cores_available",
    "cpu_flags",
    "cpu_has_native_bf16",
    "cpu_model_name",
    "lightning_precision_for",
    "reuse_freed_memory",
]

#: glibc ``mallopt`` parameters (``malloc.h``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model_name() -> str:
    """The CPU's model name (``lscpu``'s 'Model name'), or the platform's processor string."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith(("flags", "features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True where the CPU has AMX-BF16 or AVX512-BF16 (bf16 autocast is fast there)."""
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def cores_available() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def lightning_precision_for(precision: str | int | None, accelerator: str | None) -> tuple[str | int | None, str | None]:
    """Apply the precision rule to a Lightning ``precision`` for a run on ``accelerator``.

    A bf16 precision asked for on a CPU run (``accelerator`` ``cpu``, or ``auto`` without CUDA)
    of a CPU without native bf16 becomes ``32-true``; anything else is kept. So a config can say
    ``bf16-mixed`` and run fast everywhere: bf16 on GPUs and AMX / AVX512-BF16 CPUs, fp32 on others.

    Args:
        precision: the configured Lightning precision (e.g. ``bf16-mixed``, ``32-true``).
        accelerator: the configured accelerator (``cpu``, ``gpu``, ``cuda``, ``auto``, ...).

    Returns:
        ``(precision to use, a one-line note when it was changed or chosen, else None)``.
    """
    import torch

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    fast_bf16 = (not on_cpu) or cpu_has_native_bf16()
    if on_cpu and isinstance(precision, str) and precision.startswith("bf16") and not fast_bf16:
        return "32-true", (f"precision {precision} -> 32-true: {cpu_model_name()} has no native bf16 "
                           "(AMX / AVX512-BF16), where bf16 autocast is 25-35x slower than fp32")
    return precision, None


def reuse_freed_memory() -> bool:
    """Keep freed memory for the next tensor of the same size (glibc only; a no-op elsewhere).

    glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and returns it with ``munmap`` when freed, so each large tensor of a training step
    (a batch of 16 × 9 × 256² floats is 38 MiB; activations, gradients) is faulted in and zeroed
    page by page again, every step. Raising the mmap and trim thresholds (``mallopt``; what the
    PyTorch CPU performance guides reach for jemalloc/tcmalloc to do) serves them from the heap
    and keeps freed memory for reuse: copying that batch costs 2.5 ms instead of 20 ms (1 thread,
    AMD EPYC). The process keeps its peak memory until it exits. Numerics are unchanged.
    ``BRATS_MALLOC_REUSE=0`` turns it off.

    Returns:
        Whether the thresholds were set.
    """
    if os.environ.get("BRATS_MALLOC_REUSE", "1") == "0" or platform.system() != "Linux":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
