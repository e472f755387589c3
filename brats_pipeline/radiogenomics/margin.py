"""Two-dimensional margin features on the slice with the largest tumour area: MF, ASD, circularity, elongation.

Definitions (Mazurowski et al., J Neuro-Oncology 2017; Czarnek et al. 2017, made explicit here):

* **slice**: the slice, across the volume's *last* array axis (axial for the LGG data), with
  the most tumour voxels (of the mask handed in: :func:`~.features.shape_features` hands in the
  largest 3D component by default); ties go to the lowest index. On it, the **largest 8-connected
  component** is kept and its holes are filled (a margin is one closed outer curve).
* **boundary**: the 0.5 iso-contour (marching squares, sub-pixel) of the component smoothed by
  a Gaussian of :data:`SIGMA` = 1 pixel (which removes the pixel staircase: a digital disc gets
  circularity 0.99 instead of 0.90), measured in millimetres through the affine's two in-plane
  columns and resampled to ``n_samples`` points equally spaced by arc length (``s`` = position
  along the boundary).
* **centroid**: the mean position of the component's pixel centres.
* **radial distance** ``r(s)`` = distance from the centroid to the boundary point; ``r̄`` its mean.
* **margin fluctuation (MF)** = std(``r - smooth(r)``) / ``r̄``, with ``smooth`` a circular moving
  average (``scipy.ndimage.uniform_filter1d``, wrapping) over a window of ``window_fraction`` of
  the boundary length, rounded to an odd number of samples (default 1/10: 37 of 360 samples).
* **angular standard deviation (ASD)**: the plane around the centroid is cut into
  ``n_sectors`` equal angular sectors (default 12 of 30°, starting at the first in-plane axis);
  ASD = mean over sectors (with ≥ 2 boundary samples) of std(``r / r̄``) within the sector,
  averaged over ``n_phases`` rotations of the sector grid by fractions of a sector (default 4,
  which makes ASD nearly independent of how the head is rotated in the plane).
* **circularity** = 4π·area / perimeter² of the boundary polygon (1 for a disc).
* **elongation** = sqrt(λ_minor / λ_major) of the covariance of the component's pixel centres
  in mm (1 for a disc, → 0 for a line; pyradiomics' definition).

All four are dimensionless and do not change with the slice spacing, a translation, an
in-plane rotation (to the tolerance stated in the README) or an isotropic in-plane scaling;
they use the in-plane spacing from the affine, so they are not invariant to anisotropic
in-plane scaling. A component under ``min_pixels`` pixels gives NaN for all four.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Smallest component (pixels) whose margin is measured.
MIN_PIXELS = 10
#: Gaussian smoothing (pixels) of the component before its iso-contour is traced.
SIGMA = 1.0


@dataclass
class MarginMeasurement:
    """How the 2D features of one mask were measured (for the numbers and for pictures).

    Attributes:
        slice_index: index along the slice axis (the last axis).
        component: (X, Y) bool, the kept component with holes filled.
        boundary: (n, 2) boundary samples in index coordinates of the slice.
        centroid: (2,) centroid in index coordinates.
        radial: (n,) radial distance in mm; ``smoothed``: its moving average.
        sector: (n,) sector of each sample in the first phase of the grid.
        sector_edges: sector boundary angles (radians, in the in-plane mm frame, first phase).
        mf, asd, circularity, elongation: the features.
        area_mm2, perimeter_mm: of the boundary polygon.
    """

    slice_index: int
    component: np.ndarray
    boundary: np.ndarray
    centroid: np.ndarray
    radial: np.ndarray
    smoothed: np.ndarray
    sector: np.ndarray
    sector_edges: np.ndarray
    mf: float
    asd: float
    circularity: float
    elongation: float
    area_mm2: float
    perimeter_mm: float


def largest_slice(mask: np.ndarray) -> int:
    """Index along the last axis of the slice with the most foreground voxels (lowest on ties)."""
    areas = np.asarray(mask, dtype=bool).reshape(-1, mask.shape[-1]).sum(axis=0)
    return int(np.argmax(areas))


def largest_component_2d(slice_mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask, holes filled (lowest label on ties)."""
    from scipy import ndimage

    labels, n = ndimage.label(slice_mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(slice_mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _inplane_frame(affine: np.ndarray | None) -> np.ndarray:
    """2x2 matrix taking in-plane index offsets (axes 0, 1) to an orthonormal mm frame of the plane."""
    if affine is None:
        return np.eye(2)
    cols = np.asarray(affine, dtype=np.float64)[:3, :2]
    _, r = np.linalg.qr(cols)
    return r * np.sign(np.diag(r))[:, None]  # positive diagonal: axes keep their direction


def _resample_closed(points: np.ndarray, frame: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Resample a closed polyline (index coords) to ``n`` points equally spaced in mm; returns (points, length mm)."""
    closed = np.vstack([points, points[:1]]) if not np.allclose(points[0], points[-1]) else points
    seg = np.linalg.norm(np.diff(closed @ frame.T, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(cum[-1])
    s = np.arange(n) * length / n
    return np.stack([np.interp(s, cum, closed[:, k]) for k in range(2)], axis=1), length


def _polygon_area(points_mm: np.ndarray) -> float:
    x, y = points_mm[:, 0], points_mm[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def margin_features(
    mask: np.ndarray,
    affine: np.ndarray | None = None,
    n_sectors: int = 12,
    window_fraction: float = 0.1,
    n_samples: int = 360,
    n_phases: int = 4,
    min_pixels: int = MIN_PIXELS,
) -> MarginMeasurement | None:
    """Measure MF, ASD, circularity and elongation on the largest-area slice of a 3D mask.

    Args:
        mask: (X, Y, Z) foreground mask (nonzero = tumour); slices are taken across the last axis.
        affine: 4x4 voxel-to-mm affine (its first two columns give the in-plane geometry);
            ``None``: 1 mm square pixels.
        n_sectors: angular sectors of ASD (≥ 2).
        window_fraction: moving-average window of MF as a fraction of the boundary length, in (0, 1).
        n_samples: boundary samples (≥ 3 * n_sectors).
        n_phases: rotations of the sector grid averaged in ASD (≥ 1).
        min_pixels: smallest component measured.

    Returns:
        The measurement, or ``None`` when the mask is empty or the slice's largest component
        has fewer than ``min_pixels`` pixels.

    Raises:
        ValueError: a mask that is not 3D, or a bad parameter (naming it).
    """
    from scipy import ndimage
    from skimage import measure

    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"need a 3D mask (X, Y, Z), got shape {mask.shape}")
    if n_sectors < 2:
        raise ValueError(f"n_sectors must be at least 2, got {n_sectors}")
    if not 0 < window_fraction < 1:
        raise ValueError(f"window_fraction must be in (0, 1), got {window_fraction}")
    if n_samples < 3 * n_sectors:
        raise ValueError(f"n_samples must be at least 3 * n_sectors = {3 * n_sectors}, got {n_samples}")
    if n_phases < 1:
        raise ValueError(f"n_phases must be at least 1, got {n_phases}")
    mask = mask != 0
    if not mask.any():
        return None
    z = largest_slice(mask)
    comp = largest_component_2d(mask[:, :, z])
    if comp.sum() < min_pixels:
        return None
    frame = _inplane_frame(affine)
    soft = ndimage.gaussian_filter(np.pad(comp, 4).astype(np.float64), SIGMA)
    contours = measure.find_contours(soft, 0.5)
    outline = max(contours, key=len) - 4.0
    boundary, perimeter = _resample_closed(outline, frame, n_samples)
    pixels = np.argwhere(comp).astype(np.float64)
    centroid = pixels.mean(axis=0)
    rel = (boundary - centroid) @ frame.T
    radial = np.linalg.norm(rel, axis=1)
    mean_r = float(radial.mean())
    window = max(3, int(round(window_fraction * n_samples)) | 1)  # odd, centred
    smoothed = ndimage.uniform_filter1d(radial, window, mode="wrap")  # circular moving average
    mf = float(np.std(radial - smoothed) / mean_r)
    angles = np.arctan2(rel[:, 1], rel[:, 0]) % (2 * np.pi)
    width = 2 * np.pi / n_sectors
    norm_r = radial / mean_r
    asds = []
    for phase in range(n_phases):
        sector = (((angles - phase * width / n_phases) % (2 * np.pi)) // width).astype(int) % n_sectors
        stds = [np.std(norm_r[sector == s]) for s in range(n_sectors) if np.count_nonzero(sector == s) >= 2]
        asds.append(float(np.mean(stds)))
        if phase == 0:
            first_sector = sector
    area = _polygon_area(boundary @ frame.T)
    cov = np.cov((pixels @ frame.T).T) if len(pixels) > 1 else np.zeros((2, 2))
    eig = np.clip(np.linalg.eigvalsh(cov), 0, None)
    elongation = float(np.sqrt(eig[0] / eig[1])) if eig[1] > 0 else float("nan")
    return MarginMeasurement(
        slice_index=z, component=comp, boundary=boundary, centroid=centroid, radial=radial, smoothed=smoothed,
        sector=first_sector, sector_edges=np.arange(n_sectors) * width, mf=mf, asd=float(np.mean(asds)),
        circularity=float(4 * np.pi * area / perimeter**2), elongation=elongation, area_mm2=area, perimeter_mm=perimeter,
    )
