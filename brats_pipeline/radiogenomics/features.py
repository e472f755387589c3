"""Shape features of one tumour mask: volume, BEVR, solidity (3D) and the margin features (2D).

The tumour is every voxel whose label is in ``foreground`` (default: any nonzero label, i.e. the
whole tumour / FLAIR abnormality). Of it, ``components`` decides what is measured:

* ``"largest"`` (default): the **largest 26-connected component** only, as the published
  pipeline does (Buda et al. 2019 keep the largest connected component of every automatic
  segmentation before measuring). Every feature, volume included, is of that component. On the
  50 LGG patients, automatic masks carry up to 20 small false-positive specks each; with all
  components the specks inflate the enclosing ellipsoid and BEVR of predicted masks correlates
  with the manual one at Pearson 0.31, with the largest component at 0.88 (README).
* ``"all"``: every component together (a multifocal tumour is one tumour with a low BEVR).

``n_components`` counts the components of the whole mask and ``kept_fraction`` is the share of
its voxels that were measured, whichever the choice. 3D features (arrays are x, y, z as nibabel
reads them):

* ``volume_ml`` — voxel count x ``|det(affine[:3, :3])|`` / 1000. Depends on the voxel
  spacing: for the LGG data, whose affine is the identity, it is the voxel count / 1000.
* ``bevr`` — bounding ellipsoid volume ratio: volume of the solid (the union of the voxel
  cubes) / volume of its minimum-volume enclosing ellipsoid (Khachiyan's algorithm on the
  convex-hull vertices among the voxel *corners*, see :mod:`.ellipsoid`). In (0, 1]; exactly
  2/(π√3) ≈ 0.368 for any axis-aligned box; a voxelised ellipsoid gives less than 1 by a
  discretisation error that shrinks with its size (about 2.3 / radius in voxels, README).
  Affine-invariant.
* ``solidity`` — volume / volume of the convex hull of the same voxel corners. In (0, 1];
  1 for a box; affine-invariant.

2D features on the largest-area slice across the last axis (:mod:`.margin`): ``mf``
(margin fluctuation), ``asd`` (angular standard deviation), ``circularity``, ``elongation``,
plus ``slice_index``. None depends on the slice spacing.

An empty mask gets ``volume_ml = 0``, ``n_components = 0`` and NaN for every other feature; a
slice component under :data:`~.margin.MIN_PIXELS` pixels gets NaN 2D features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from brats_pipeline.radiogenomics.ellipsoid import Ellipsoid, hull_and_ellipsoid
from brats_pipeline.radiogenomics.margin import MarginMeasurement, margin_features

#: Features tested against subtypes, in report order.
FEATURES: tuple[str, ...] = ("bevr", "mf", "asd", "volume_ml", "solidity", "circularity", "elongation")
#: Features whose value does not depend on the (often unknown) slice spacing.
SLICE_SPACING_FREE: tuple[str, ...] = ("bevr", "mf", "asd", "solidity", "circularity", "elongation")
#: What :func:`shape_features` measures of a mask with several connected components.
COMPONENT_CHOICES: tuple[str, ...] = ("largest", "all")
#: Short descriptions for tables and figures.
FEATURE_LABELS: dict[str, str] = {
    "bevr": "bounding ellipsoid volume ratio",
    "mf": "margin fluctuation",
    "asd": "angular standard deviation",
    "volume_ml": "volume (ml by the affine)",
    "solidity": "solidity (volume / convex hull)",
    "circularity": "circularity 4πA/P² (largest slice)",
    "elongation": "elongation √(λmin/λmax) (largest slice)",
}


def foreground_mask(labels: np.ndarray, foreground: Sequence[int] | None = None) -> np.ndarray:
    """Boolean tumour mask: labels in ``foreground`` (``None``: any nonzero label)."""
    labels = np.asarray(labels)
    if foreground is None:
        return labels != 0
    values = [int(v) for v in foreground]
    if not values or 0 in values:
        raise ValueError(f"foreground labels must be nonzero label values, got {list(foreground)}")
    return np.isin(labels, values)


def measured_part(mask: np.ndarray, components: str = "largest") -> tuple[np.ndarray, int]:
    """What is measured of a 3D mask: ``(its largest 26-connected component or the whole mask, the
    mask's number of components)``; ties between components go to the first in array order.

    Raises:
        ValueError: an unknown ``components``.
    """
    from scipy import ndimage

    if components not in COMPONENT_CHOICES:
        raise ValueError(f"unknown components {components!r}; choose from {', '.join(COMPONENT_CHOICES)}")
    mask = np.asarray(mask) != 0
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if components == "largest" and n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask, int(n)


def shape_features(
    mask: np.ndarray,
    affine: np.ndarray | None = None,
    n_sectors: int = 12,
    window_fraction: float = 0.1,
    components: str = "largest",
    return_measurements: bool = False,
) -> dict[str, float] | tuple[dict[str, float], Ellipsoid | None, MarginMeasurement | None]:
    """All shape features of one 3D mask (see the module docstring for the definitions).

    Args:
        mask: (X, Y, Z) tumour mask (nonzero = tumour).
        affine: 4x4 voxel-to-mm affine (``None``: identity, 1 mm voxels).
        n_sectors: angular sectors of ASD.
        window_fraction: MF's moving-average window as a fraction of the boundary length.
        components: ``"largest"`` (the largest 26-connected component) or ``"all"``.
        return_measurements: also return the ellipsoid (index coordinates) and the 2D
            measurement, to draw how the features were measured.

    Returns:
        ``{feature: value}`` with the keys of :data:`FEATURES` plus ``n_voxels`` (measured),
        ``n_components`` (of the whole mask), ``kept_fraction`` and ``slice_index``; with
        ``return_measurements`` a tuple ``(features, ellipsoid or None, margin measurement or None)``.

    Raises:
        ValueError: a mask that is not 3D, an affine that is not 4x4 / singular, or an unknown
            ``components``.
    """
    mask = np.asarray(mask) != 0
    if mask.ndim != 3:
        raise ValueError(f"need a 3D mask (X, Y, Z), got shape {mask.shape}")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"affine must be a finite, invertible 4x4 matrix, got {affine.tolist()}")
    nan = float("nan")
    total = int(mask.sum())
    mask, n_components = measured_part(mask, components)
    n_voxels = int(mask.sum())
    out: dict[str, float] = {"n_voxels": n_voxels, "volume_ml": n_voxels * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0,
                             "n_components": n_components, "kept_fraction": n_voxels / total if total else nan}
    out.update({k: nan for k in ("bevr", "solidity", "slice_index", "mf", "asd", "circularity", "elongation")})
    ellipsoid = margin = None
    if n_voxels:
        hull_volume, ellipsoid = hull_and_ellipsoid(mask)
        out["bevr"] = n_voxels / ellipsoid.volume
        out["solidity"] = n_voxels / hull_volume
        margin = margin_features(mask, affine, n_sectors=n_sectors, window_fraction=window_fraction)
        if margin is not None:
            out.update(slice_index=margin.slice_index, mf=margin.mf, asd=margin.asd,
                       circularity=margin.circularity, elongation=margin.elongation)
    if return_measurements:
        return out, ellipsoid, margin
    return out


def is_missing(value: Any) -> bool:
    """True for ``None`` and NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))
