"""Input checks the metrics share: masks as boolean numpy arrays, voxel spacing in mm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _to_numpy_mask(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != bool:
        if x.size and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{what} must be boolean (or 0/1), got values {np.unique(x)[:5].tolist()}...")
        x = x.astype(bool)
    return x


def mask_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``truth`` as boolean numpy masks of one shape (named in the errors)."""
    p, t = _to_numpy_mask(pred, "pred"), _to_numpy_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    return p, t


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must be {ndim} positive numbers (mm per voxel along X, Y, Z), got {spacing!r}"
        )
    return sp
