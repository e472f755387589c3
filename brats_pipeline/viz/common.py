"""Shared pieces of the figures: colours, the Agg pyplot, atomic PNG writes, RAS orientation,
plane slicing and the TP/FP/FN comparison map (see :mod:`brats_pipeline.viz`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: RGB colours of the prediction-vs-truth comparison classes.
COMPARISON_COLOURS = {"TP": (0.10, 0.75, 0.20), "FP": (0.90, 0.10, 0.10), "FN": (0.15, 0.45, 1.00)}
#: Colours of regions (label maps are coloured by the region each label owns).
REGION_COLOURS = {"WT": (0.20, 0.75, 0.25), "TC": (0.90, 0.15, 0.15), "ET": (1.00, 0.85, 0.10)}
_FALLBACK_COLOURS = ((0.60, 0.30, 0.90), (0.10, 0.70, 0.80), (0.95, 0.50, 0.10), (0.55, 0.55, 0.55))
PLANES = ("axial", "coronal", "sagittal")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    from preprocessing.io import atomic_path

    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- geometry helpers
def to_closest_ras(array: np.ndarray, affine: np.ndarray | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Permute/flip the first three axes of ``array`` to the closest RAS orientation (no resampling).

    Returns:
        ``(array, spacing)`` with spacing in mm along the new x, y, z.
    """
    import nibabel as nib

    array = np.asarray(array)
    if affine is None:
        return array, (1.0, 1.0, 1.0)
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = nib.orientations.apply_orientation(array, ornt)
    new_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        new_spacing[int(target)] = float(spacing[axis])
    return out, tuple(new_spacing)  # type: ignore[return-value]


def tumour_centre(*masks: Any) -> tuple[int, int, int]:
    """Voxel (x, y, z) at the centre of mass of the first non-empty mask (else the volume centre)."""
    from scipy.ndimage import center_of_mass

    shape = np.asarray(masks[0]).shape
    for mask in masks:
        m = np.asarray(mask) > 0
        if m.any():
            return tuple(int(round(c)) for c in center_of_mass(m))  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def plane_slice(volume: np.ndarray, plane: str, centre: Sequence[int]) -> np.ndarray:
    """The 2D slice of an x, y, z[, c] volume through ``centre``, transposed for ``imshow(origin="lower")``."""
    v = np.asarray(volume)
    if plane == "axial":
        s = v[:, :, centre[2]]
    elif plane == "coronal":
        s = v[:, centre[1], :]
    elif plane == "sagittal":
        s = v[centre[0], :, :]
    else:
        raise ValueError(f"unknown plane {plane!r}; choose one of {PLANES}")
    return np.swapaxes(s, 0, 1)


def _aspect(plane: str, spacing: Sequence[float]) -> float:
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def comparison_map(pred: Any, truth: Any) -> np.ndarray:
    """0 = TN, 1 = TP, 2 = FP (predicted, not true), 3 = FN (true, missed); same shape as the masks."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    out = np.zeros(p.shape, dtype=np.uint8)
    out[p & t] = 1
    out[p & ~t] = 2
    out[~p & t] = 3
    return out


def _comparison_rgba(comp: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    rgba = np.zeros((*comp.shape, 4), dtype=np.float32)
    for value, name in ((1, "TP"), (2, "FP"), (3, "FN")):
        rgba[comp == value] = (*COMPARISON_COLOURS[name], alpha)
    return rgba


def _label_colours(task: Any) -> dict[int, tuple[float, float, float]]:
    """Label value -> colour of the region that owns it."""
    colours: dict[int, tuple[float, float, float]] = {}
    for k, (channel, value) in enumerate(task._painting):
        name = task.regions[channel].name
        colours[int(value)] = REGION_COLOURS.get(name, _FALLBACK_COLOURS[k % len(_FALLBACK_COLOURS)])
    return colours


def _label_rgba(label: np.ndarray, colours: Mapping[int, tuple[float, float, float]], alpha: float = 0.55) -> np.ndarray:
    rgba = np.zeros((*label.shape, 4), dtype=np.float32)
    for value, colour in colours.items():
        rgba[label == value] = (*colour, alpha)
    return rgba


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    lo, hi = np.percentile(values, [1, 99.5]) if values.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def _legend(ax: Any, items: Mapping[str, tuple[float, float, float]]) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=n) for n, c in items.items()], loc="lower right", fontsize=7, framealpha=0.7)

