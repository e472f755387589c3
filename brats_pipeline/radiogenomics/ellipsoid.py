"""The minimum-volume enclosing ellipsoid (MVEE) of a voxel mask, and the solid's convex hull.

The solid a mask stands for is the union of its voxel cubes: voxel ``(i, j, k)`` (array
indices, nibabel x, y, z order) is the cube ``[i-0.5, i+0.5] x [j-0.5, j+0.5] x [k-0.5, k+0.5]``
in index coordinates. Its MVEE is the MVEE of the cube corners, which is the MVEE of the
corners on the convex hull, so only the corners that can be hull vertices (those of the
first and last voxel of every column along the last axis) are collected and only the hull's
vertices are handed to Khachiyan's algorithm.

Everything is computed in index coordinates: an affine map ``A`` sends the MVEE of a set to
the MVEE of its image and multiplies every volume by ``|det A|``, so volume *ratios* (BEVR,
solidity) are the same in index and in physical (mm) space, whatever the voxel spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ellipsoid:
    """``{x : (x - centre)^T shape (x - centre) <= 1}`` in index coordinates.

    Attributes:
        centre: (d,) centre.
        shape: (d, d) symmetric positive-definite matrix.
    """

    centre: np.ndarray
    shape: np.ndarray

    @property
    def volume(self) -> float:
        """Volume in the coordinates' units (voxels for index coordinates)."""
        d = len(self.centre)
        unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
        return float(unit_ball / math.sqrt(np.linalg.det(self.shape)))

    @property
    def semi_axes(self) -> np.ndarray:
        """Semi-axis lengths, longest first."""
        return np.sort(1.0 / np.sqrt(np.linalg.eigvalsh(self.shape)))[::-1]

    def section(self, axis: int, position: float, n_points: int = 180) -> np.ndarray | None:
        """Outline of the cut with the plane ``x[axis] = position``: (n_points, d-1) points in the
        other axes' coordinates (in order), or ``None`` when the plane misses the ellipsoid."""
        d = len(self.centre)
        keep = [a for a in range(d) if a != axis % d]
        a11 = self.shape[np.ix_(keep, keep)]
        a12 = self.shape[keep, axis % d]
        a22 = self.shape[axis % d, axis % d]
        t = position - self.centre[axis % d]
        shift = -t * np.linalg.solve(a11, a12)
        level = 1.0 - a22 * t * t + t * t * float(a12 @ np.linalg.solve(a11, a12))
        if level <= 0:
            return None
        vals, vecs = np.linalg.eigh(a11 / level)
        angles = np.linspace(0, 2 * np.pi, n_points)
        circle = np.stack([np.cos(angles), np.sin(angles)], axis=1) / np.sqrt(vals)
        return self.centre[keep] + shift + circle @ vecs.T

    def projection(self, axis: int, n_points: int = 180) -> np.ndarray:
        """Outline of the shadow along ``axis`` (the ellipse the ellipsoid projects to): (n_points, d-1)."""
        d = len(self.centre)
        keep = [a for a in range(d) if a != axis % d]
        shadow = np.linalg.inv(np.linalg.inv(self.shape)[np.ix_(keep, keep)])
        vals, vecs = np.linalg.eigh(shadow)
        angles = np.linspace(0, 2 * np.pi, n_points)
        circle = np.stack([np.cos(angles), np.sin(angles)], axis=1) / np.sqrt(vals)
        return self.centre[keep] + circle @ vecs.T


def min_volume_ellipsoid(points: np.ndarray, tol: float = 1e-5, max_iter: int = 100_000) -> Ellipsoid:
    """Minimum-volume enclosing ellipsoid of ``points`` by Khachiyan's algorithm.

    Khachiyan's barycentric coordinate ascent (Todd & Yildirim 2007, with their away steps)
    stops when every point's scaled Mahalanobis distance is within ``(1 + tol)`` of ``d + 1``,
    i.e. the ellipsoid's volume is within a factor ``(1 + tol)^(d/2)`` of the minimum. The
    result is then scaled so that every point lies inside (the returned ellipsoid encloses).
    On very symmetric point sets (a voxelised ball) the iteration can stall just above a tight
    ``tol``; after ``max_iter`` iterations a result within 1e-3 is accepted, a worse one raises.

    Args:
        points: (n, d) points spanning d dimensions (n > d).
        tol: relative optimality tolerance (1e-5: volume within 1.5e-5 of the minimum in 3D).
        max_iter: iteration cap.

    Raises:
        ValueError: fewer than d + 1 points, non-finite points, or points in a lower-dimensional
            flat (no ellipsoid of positive volume encloses them).
        RuntimeError: no convergence within ``max_iter``.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] <= p.shape[1] or not np.isfinite(p).all():
        raise ValueError(f"need more than d finite points in d dimensions, got an array of shape {p.shape}")
    n, d = p.shape
    q = np.vstack([p.T, np.ones(n)])
    if np.linalg.matrix_rank(q) < d + 1:
        raise ValueError(f"the {n} points lie in a lower-dimensional flat: no enclosing ellipsoid of positive volume")
    u = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        x = (q * u) @ q.T
        m = np.einsum("ij,ij->j", q, np.linalg.solve(x, q))
        j = int(np.argmax(m))
        support = u > 0
        k = int(np.flatnonzero(support)[np.argmin(m[support])])
        if m[j] <= (d + 1) * (1 + tol):
            break
        if m[j] - (d + 1) >= (d + 1) - m[k]:  # Khachiyan's step toward the farthest point
            step = (m[j] - d - 1) / ((d + 1) * (m[j] - 1))
            u *= 1 - step
            u[j] += step
        else:  # away step: move weight off the nearest support point
            drop = -u[k] / (1 - u[k])  # the most weight that can leave: u_k becomes 0
            step = max((m[k] - d - 1) / ((d + 1) * (m[k] - 1)), drop) if m[k] > 1 else drop
            u *= 1 - step
            u[k] += step
            u[u < 1e-15] = 0.0
    else:
        if m[j] > (d + 1) * (1 + 1e-3):
            raise RuntimeError(f"Khachiyan's algorithm did not converge in {max_iter} iterations "
                               f"(relative gap {m[j] / (d + 1) - 1:.2g})")
    centre = p.T @ u
    cov = (p.T * u) @ p - np.outer(centre, centre)
    shape = np.linalg.inv(cov) / d
    diff = p - centre
    worst = float(np.max(np.einsum("ij,jk,ik->i", diff, shape, diff)))
    return Ellipsoid(centre, shape / max(worst, 1.0))


def hull_candidate_corners(mask: np.ndarray) -> np.ndarray:
    """Voxel corners that can be vertices of the convex hull of a 3D mask's voxel cubes.

    A hull vertex is an end of the solid's intersection with the line through it along the
    last axis, so its voxel is the first or last foreground voxel of its column: only those
    voxels' corners are returned (index coordinates, voxel centres at integers), unique, (n, 3).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"need a 3D mask, got {mask.ndim}D")
    if not mask.any():
        return np.zeros((0, 3))
    lo = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[0]) for k in range(3)]
    hi = [int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[-1]) + 1 for k in range(3)]
    box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    x, y = np.nonzero(box.any(axis=2))
    first = np.argmax(box[x, y, :], axis=1)
    last = box.shape[2] - 1 - np.argmax(box[x, y, ::-1], axis=1)
    centres = np.concatenate([np.stack([x, y, first], 1), np.stack([x, y, last], 1)]).astype(np.int64) + np.asarray(lo)
    offsets = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.int64)
    corners = np.unique((centres[:, None, :] + offsets[None]).reshape(-1, 3), axis=0)
    return corners.astype(np.float64) - 0.5


def hull_and_ellipsoid(mask: np.ndarray, tol: float = 1e-5) -> tuple[float, Ellipsoid]:
    """Convex-hull volume and MVEE of the solid a non-empty 3D mask stands for (index units)."""
    from scipy.spatial import ConvexHull

    corners = hull_candidate_corners(mask)
    if len(corners) == 0:
        raise ValueError("empty mask: no hull or ellipsoid")
    hull = ConvexHull(corners)
    return float(hull.volume), min_volume_ellipsoid(corners[hull.vertices], tol)
