"""The precision rule (brats_pipeline.devices) and the recipe's half-resolution network."""

from __future__ import annotations

import pytest
import torch

from brats_pipeline import devices
from brats_pipeline.networks import build_network, spatial_dims_of


@pytest.mark.parametrize(
    ("flags", "precision", "accelerator", "expected", "noted"),
    [
        (set(), "bf16-mixed", "cpu", "32-true", True),  # AVX2-only CPU: emulated bf16, never
        ({"avx512_bf16"}, "bf16-mixed", "cpu", "bf16-mixed", False),  # AMD Zen 4 / Intel with AVX512-BF16
        ({"amx_bf16"}, "bf16-true", "cpu", "bf16-true", False),
        (set(), "32-true", "cpu", "32-true", False),
        (set(), "bf16-mixed", "gpu", "bf16-mixed", False),  # not a CPU run
    ],
)
def test_precision_rule(monkeypatch, flags, precision, accelerator, expected, noted) -> None:
    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    chosen, note = devices.lightning_precision_for(precision, accelerator)
    assert chosen == expected
    assert (note is not None) == noted
    if noted:
        assert "no native bf16" in note and devices.cpu_model_name() in note


def test_this_cpu_is_named_and_counted() -> None:
    assert devices.cpu_model_name()
    assert devices.cores_available() >= 1


def test_unet2d_downsample_computes_at_half_resolution() -> None:
    torch.manual_seed(0)
    net = build_network("unet2d", 9, 1, downsample=2).eval()
    assert spatial_dims_of(net) == 2
    x = torch.randn(2, 9, 64, 96)
    with torch.no_grad():
        y = net(x)
        inner = net.net(torch.nn.functional.avg_pool2d(x, 2))  # what the U-Net itself sees: 32 x 48
    assert y.shape == (2, 1, 64, 96) and inner.shape == (2, 1, 32, 48)
    # the logits are the half-resolution ones, upsampled bilinearly to the input size
    assert torch.allclose(torch.nn.functional.interpolate(inner, size=(64, 96), mode="bilinear"), y, atol=1e-6)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), y, atol=1e-5)
    with pytest.raises(ValueError, match="downsample must be a positive integer"):
        build_network("unet2d", 3, 1, downsample=0)


def test_freed_memory_is_kept_for_reuse_on_glibc_unless_turned_off() -> None:
    """``reuse_freed_memory`` raises glibc's mmap/trim thresholds (brats-train and the benchmarks call it)."""
    import platform
    import subprocess
    import sys

    code = "from brats_pipeline.devices import reuse_freed_memory; print(reuse_freed_memory())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "BRATS_MALLOC_REUSE": "0"}).stdout.strip()
    assert off == "False"
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert on == "True"
