"""Foreground masks, cropping to the foreground and z-score intensity normalisation.

All functions take and return SimpleITK images (LPS geometry, z, y, x in memory); bounding
boxes and margins are in voxels, **x, y, z** order (SimpleITK index order).

Mask methods (:func:`foreground_mask`):

* ``"nonzero"``: voxels that are not exactly zero, the BraTS convention for skull-stripped data;
* ``"otsu"``: Otsu threshold, largest connected component, holes filled in 3D and slice by
  slice along z: the head (or brain, if skull-stripped) of a raw scan whose air is noise;
* ``"auto"``: ``"nonzero"`` when at least :data:`AUTO_ZERO_FRACTION` of the voxels are exactly
  zero (the background of a skull-stripped volume), otherwise ``"otsu"``.

No skull stripping is done here: on a raw scan the mask is the head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MASK_METHODS = ("auto", "otsu", "nonzero")

#: ``"auto"`` masking picks ``"nonzero"`` when at least this fraction of voxels is exactly 0.
AUTO_ZERO_FRACTION = 0.25


def _check_method(method: str) -> None:
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r}; choose one of {MASK_METHODS}")


def resolve_mask_method(image: Any, method: str = "auto") -> str:
    """``"auto"`` -> ``"nonzero"`` or ``"otsu"`` for ``image`` (see module docstring); others unchanged."""
    import SimpleITK as sitk

    _check_method(method)
    if method != "auto":
        return method
    values = sitk.GetArrayViewFromImage(image)
    return "nonzero" if float(np.mean(values == 0)) >= AUTO_ZERO_FRACTION else "otsu"


def foreground_mask(image: Any, method: str = "auto") -> Any:
    """Binary foreground mask (``sitkUInt8``, 1 inside) on the grid of ``image``.

    Args:
        image: a 3D SimpleITK image.
        method: ``"auto"``, ``"otsu"`` or ``"nonzero"`` (module docstring).

    Raises:
        ValueError: unknown method, or the mask is empty.
    """
    import SimpleITK as sitk
    from scipy.ndimage import binary_fill_holes

    method = resolve_mask_method(image, method)
    if method == "nonzero":
        mask = sitk.Cast(sitk.NotEqual(image, 0), sitk.sitkUInt8)
    else:
        mask = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, 128)
        mask = largest_component(mask)
        mask = sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1)
        values = sitk.GetArrayFromImage(mask).astype(bool)  # z, y, x: fill each axial (z) slice
        for k in range(values.shape[0]):
            values[k] = binary_fill_holes(values[k])
        filled = sitk.GetImageFromArray(values.astype(np.uint8))
        filled.CopyInformation(mask)
        mask = filled
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError(f"empty foreground mask ({method}) for an image of size {image.GetSize()}")
    return mask


def largest_component(mask: Any) -> Any:
    """Keep the largest 26-connected component of a binary mask (``sitkUInt8``)."""
    import SimpleITK as sitk

    labels = sitk.ConnectedComponent(sitk.Cast(mask, sitk.sitkUInt8), True)
    labels = sitk.RelabelComponent(labels, sortByObjectSize=True)
    return sitk.Cast(sitk.Equal(labels, 1), sitk.sitkUInt8)


def bounding_box(mask: Any, margin: int | Sequence[int] = 0) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Index and size (x, y, z voxels) of the mask's bounding box grown by ``margin``, clipped to the image.

    Raises:
        ValueError: the mask is empty or a margin is negative.
    """
    import SimpleITK as sitk

    margin = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    if (margin < 0).any():
        raise ValueError(f"crop margin must be >= 0 voxels, got {tuple(margin)}")
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        raise ValueError("cannot crop to an empty foreground mask")
    box = np.asarray(stats.GetBoundingBox(1))  # x0, y0, z0, sx, sy, sz
    size = np.asarray(mask.GetSize())
    lo = np.maximum(box[:3] - margin, 0)
    hi = np.minimum(box[:3] + box[3:] + margin, size)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo)  # type: ignore[return-value]


def crop(image: Any, index: Sequence[int], size: Sequence[int]) -> Any:
    """Crop ``image`` to the box ``index``/``size`` (x, y, z voxels); the origin moves so world positions stay."""
    import SimpleITK as sitk

    return sitk.RegionOfInterest(image, [int(s) for s in size], [int(i) for i in index])


@dataclass(frozen=True)
class ZScoreStats:
    """What :func:`zscore` did to one image: clip limits and the mean/std it divided by."""

    mean: float
    std: float
    clip_low: float | None = None
    clip_high: float | None = None


def zscore(
    image: Any,
    mask: Any,
    clip_percentiles: Sequence[float] | None = None,
    zero_outside: bool = True,
) -> tuple[Any, ZScoreStats]:
    """Z-score intensities using the voxels inside ``mask``.

    Args:
        image: 3D image (any pixel type; the result is ``sitkFloat32``).
        mask: binary mask on the same grid.
        clip_percentiles: ``(low, high)`` percentiles (0-100) of the in-mask intensities to clip
            to before computing mean and std, or ``None`` for no clipping.
        zero_outside: set voxels outside the mask to 0 (the mean after normalisation).

    Returns:
        The normalised image and its :class:`ZScoreStats`.

    Raises:
        ValueError: bad percentiles, an empty mask, or zero variance inside the mask.
    """
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    if values.shape != inside.shape:
        raise ValueError(f"mask size {mask.GetSize()} differs from image size {image.GetSize()}")
    if not inside.any():
        raise ValueError("cannot normalise with an empty mask")
    low = high = None
    if clip_percentiles is not None:
        p_low, p_high = (float(p) for p in clip_percentiles)
        if not 0.0 <= p_low < p_high <= 100.0:
            raise ValueError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {(p_low, p_high)}")
        low, high = (float(v) for v in np.percentile(values[inside], [p_low, p_high]))
        values = np.clip(values, low, high)
    mean = float(values[inside].mean())
    std = float(values[inside].std())
    if not std > 0:
        raise ValueError("intensities are constant inside the foreground mask; cannot z-score")
    values = (values - mean) / std
    if zero_outside:
        values[~inside] = 0.0
    out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(image)
    return out, ZScoreStats(mean, std, low, high)


def normalize_images(
    images: Mapping[str, Any],
    mask: Any,
    crop_margin: int | Sequence[int] | None = 5,
    clip_percentiles: Sequence[float] | None = None,
    label: Any | None = None,
    coverage: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Any | None, Any, dict[str, Any]]:
    """Crop every image (and the label) to the mask's bounding box, then z-score each in the mask.

    Args:
        images: name -> image, all on the mask's grid.
        mask: foreground mask on that grid.
        crop_margin: voxels added around the bounding box (x, y, z or one int); ``None``: no crop.
        clip_percentiles: see :func:`zscore`.
        label: optional label map on the same grid, cropped like the images.
        coverage: name -> binary map of where that image has data (its field of view after
            registration); an image is normalised in ``mask & coverage`` and is 0 outside it,
            so voxels a sequence never imaged neither bias its statistics nor look like tissue.

    Returns:
        ``(images, label, mask, record)``: the normalised images, cropped label, cropped mask and
        a JSON-ready record of the crop box and per-image statistics.
    """
    import SimpleITK as sitk

    coverage = dict(coverage or {})
    record: dict[str, Any] = {"crop_margin": crop_margin, "clip_percentiles": clip_percentiles}
    if crop_margin is not None:
        index, size = bounding_box(mask, crop_margin)
        record["crop_index_xyz"], record["crop_size_xyz"] = list(index), list(size)
        mask = crop(mask, index, size)
        images = {name: crop(image, index, size) for name, image in images.items()}
        coverage = {name: crop(c, index, size) for name, c in coverage.items()}
        label = None if label is None else crop(label, index, size)
    out: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for name, image in images.items():
        where = mask
        if name in coverage:
            where = sitk.And(sitk.Cast(mask, sitk.sitkUInt8), sitk.Cast(coverage[name], sitk.sitkUInt8))
        out[name], s = zscore(image, where, clip_percentiles)
        stats[name] = s.__dict__
        if name in coverage:
            inside = sitk.GetArrayViewFromImage(mask).astype(bool)
            stats[name]["mask_coverage"] = round(float(sitk.GetArrayViewFromImage(where)[inside].mean()), 4)
    record["stats"] = stats
    return out, label, mask, record
