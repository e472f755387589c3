"""Reorientation to a canonical orientation and resampling to a target voxel spacing.

Canonical orientation (:data:`CANONICAL`): **RAS**: voxel index x increases towards the
patient's Right, y towards Anterior, z towards Superior. It is what nibabel's
``as_closest_canonical`` and MONAI's ``Orientation(axcodes="RAS")`` produce, and what
``nibabel.aff2axcodes`` reports as ``('R', 'A', 'S')`` for the written NIfTI. ``"LPS"`` (x to
Left, y to Posterior, z to Superior: the DICOM/ITK identity direction, used by the BraTS
files) is the other supported choice. Letters always name where an axis points *to*, in
nibabel, MONAI and SimpleITK's ``DICOMOrient`` alike. Reorienting only permutes and flips voxel axes
(no interpolation); an oblique acquisition stays oblique (its axes are the closest match).

Spacing and sizes are **x, y, z** (SimpleITK index order) in mm. Images are interpolated with
a cubic B-spline (default) or linearly, labels with nearest neighbour or label-Gaussian.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The default output orientation of the pipeline (see module docstring).
CANONICAL = "RAS"
ORIENTATIONS = ("RAS", "LPS")
IMAGE_INTERPOLATORS = ("bspline", "linear", "nearest")
LABEL_INTERPOLATORS = ("nearest", "label_gaussian")


def _interpolator(name: str) -> int:
    import SimpleITK as sitk

    table = {
        "bspline": sitk.sitkBSpline,
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "label_gaussian": sitk.sitkLabelGaussian,
    }
    if name not in table:
        raise ValueError(f"unknown interpolator {name!r}; choose one of {tuple(table)}")
    return table[name]


def _check_orientation(orientation: str) -> str:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"unknown orientation {orientation!r}; choose one of {ORIENTATIONS}")
    return orientation


def reorient(image: Any, orientation: str = CANONICAL) -> Any:
    """Permute/flip the voxel axes of ``image`` so they point along ``orientation`` (``"RAS"`` or ``"LPS"``).

    World positions of all voxels are unchanged; only the storage order changes.
    """
    import SimpleITK as sitk

    return sitk.DICOMOrient(image, _check_orientation(orientation))


def orientation_of(image: Any) -> str:
    """Three-letter code (nibabel style: where each index axis points to) of ``image``'s closest orientation."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # columns: axes in LPS
    letters = []
    for axis in range(3):
        column = direction[:, axis]
        k = int(np.argmax(np.abs(column)))
        positive = column[k] > 0
        letters.append(("L", "P", "S")[k] if positive else ("R", "A", "I")[k])
    return "".join(letters)


def output_grid(
    image: Any, spacing: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, ...]]:
    """Size, origin and direction of ``image``'s field of view sampled at ``spacing`` (x, y, z mm).

    The new grid keeps the direction and the centre of the field of view; its size is
    ``round(size * old_spacing / spacing)`` per axis, so the physical extent
    (``size * spacing``) changes by less than one new voxel.
    """
    spacing = np.asarray(_check_spacing(spacing), dtype=np.float64)
    old_size = np.asarray(image.GetSize(), dtype=np.float64)
    old_spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    new_size = np.maximum(1, np.round(old_size * old_spacing / spacing)).astype(int)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(image.GetOrigin()) + direction @ ((old_size - 1) * old_spacing / 2.0)
    origin = centre - direction @ ((new_size - 1) * spacing / 2.0)
    return tuple(int(v) for v in new_size), tuple(float(v) for v in origin), image.GetDirection()  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(f"target spacing must be three positive sizes in mm (x, y, z), got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def make_reference_grid(image: Any, spacing: Sequence[float]) -> Any:
    """An empty image (``sitkUInt8``) with the grid of :func:`output_grid`: a resampling target."""
    import SimpleITK as sitk

    size, origin, direction = output_grid(image, spacing)
    grid = sitk.Image(list(size), sitk.sitkUInt8)
    grid.SetSpacing(_check_spacing(spacing))
    grid.SetOrigin(origin)
    grid.SetDirection(direction)
    return grid


def resample_to_grid(
    image: Any,
    reference: Any,
    transform: Any | None = None,
    interpolator: str = "bspline",
    default_value: float = 0.0,
) -> Any:
    """Resample ``image`` onto the grid of ``reference`` (size, spacing, origin, direction).

    Args:
        image: moving image.
        reference: image whose grid the output takes (its voxels are not used).
        transform: maps points of the reference space to the image's space (SimpleITK
            convention, the output of registration); ``None``: identity (header alignment).
        interpolator: ``"bspline"``, ``"linear"``, ``"nearest"`` or ``"label_gaussian"``.
        default_value: value of output voxels that fall outside ``image``.

    Returns:
        The resampled image, same pixel type as ``image``.
    """
    import SimpleITK as sitk

    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    return sitk.Resample(
        image, reference, transform, _interpolator(interpolator), float(default_value), image.GetPixelID()
    )


def resample_to_spacing(
    image: Any,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    interpolator: str = "bspline",
    antialias: bool = True,
) -> Any:
    """Resample ``image`` to ``spacing`` (x, y, z mm), keeping its field of view and direction.

    Args:
        image: 3D image.
        spacing: target voxel size in mm.
        interpolator: ``"bspline"``/``"linear"`` for images, ``"nearest"``/``"label_gaussian"``
            for labels.
        antialias: before downsampling an axis of an image (not with nearest/label
            interpolation), smooth it with a Gaussian of sigma
            ``sqrt(new^2 - old^2) / 2`` mm to avoid aliasing (other axes are not smoothed).
    """
    import SimpleITK as sitk

    grid = make_reference_grid(image, spacing)
    source = image
    if antialias and interpolator in ("bspline", "linear"):
        old = np.asarray(image.GetSpacing())
        new = np.asarray(grid.GetSpacing())
        sigma = np.where(new > old * 1.01, np.sqrt(np.maximum(new**2 - old**2, 0.0)) / 2.0, 0.0)
        if sigma.max() > 0:
            pixel = image.GetPixelID()
            variance = [float(v) for v in sigma**2]
            source = sitk.DiscreteGaussian(sitk.Cast(image, sitk.sitkFloat32), variance, 32, 0.01, True)
            source = sitk.Cast(source, pixel) if pixel != sitk.sitkFloat32 else source
    return resample_to_grid(source, grid, interpolator=interpolator)
