"""N4 bias-field correction (Tustison et al., IEEE TMI 2010) through SimpleITK, made fast.

The bias field is *estimated* on a shrunk copy of the image and *applied* at full resolution:

1. the image is cropped to the mask's bounding box grown by ``fit_margin_mm`` (the B-spline
   control-point lattice then spans the head or brain, not the air around it);
2. the crop is shrunk by ``shrink_factor`` (only along axes whose spacing is finer than
   ``shrink_factor`` times the finest spacing, so 5.5 mm slices are not thinned out further)
   and N4 fits the field there; the run time is proportional to the number of mask voxels
   left after shrinking times the number of iterations;
3. the B-spline log bias field is evaluated on the **full-resolution** crop
   (``GetLogBiasFieldAsImage``), extended beyond the crop by repeating its border values, and
   the image is divided by its exponential.

Intensities must be positive inside the mask (MR magnitude images are).

Non-uniformity is measured by :func:`nonuniformity`: the coefficient of variation of a
low-pass (Gaussian, normalised-convolution) copy of the image inside the mask. Tissue
contrast is mostly high-frequency and averages out; a smooth bias field does not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class N4Config:
    """Settings of :func:`n4_bias_correct`.

    Args:
        shrink_factor: estimate the field on an image shrunk by up to this factor per axis
            (5 on 1 mm data: the field is fitted on 5 mm voxels).
        fit_margin_mm: fit the field on the mask's bounding box grown by this margin (mm);
            ``None``: on the whole image.
        iterations: maximum iterations per fitting level; the number of levels is its length
            and the control-point grid doubles at each level.
        control_points: control points per axis at the first level (>= spline_order + 1).
        spline_order: B-spline order of the bias field.
        convergence_threshold: stop a level when the change of the coefficient of variation
            of the corrected log-intensities falls below this.
        histogram_bins: bins of the log-intensity histogram that is sharpened.
        bias_fwhm: full width at half maximum of the Gaussian deconvolved from the histogram.
        wiener_noise: Wiener filter noise of the sharpening.
    """

    shrink_factor: int = 5
    fit_margin_mm: float | None = 20.0
    iterations: tuple[int, ...] = (50, 50, 50, 50)
    control_points: int = 4
    spline_order: int = 3
    convergence_threshold: float = 1e-3
    histogram_bins: int = 200
    bias_fwhm: float = 0.15
    wiener_noise: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "iterations", tuple(int(i) for i in self.iterations))
        if self.fit_margin_mm is not None and self.fit_margin_mm < 0:
            raise ValueError(f"N4 fit_margin_mm must be >= 0 or None, got {self.fit_margin_mm}")
        if self.shrink_factor < 1:
            raise ValueError(f"N4 shrink_factor must be >= 1, got {self.shrink_factor}")
        if not self.iterations or min(self.iterations) < 1:
            raise ValueError(f"N4 iterations must be one or more positive counts, got {self.iterations}")
        if self.spline_order < 1:
            raise ValueError(f"N4 spline_order must be >= 1, got {self.spline_order}")
        if self.control_points < self.spline_order + 1:
            raise ValueError(
                f"N4 control_points must be >= spline_order + 1 = {self.spline_order + 1}, got {self.control_points}"
            )
        if self.histogram_bins < 2 or self.bias_fwhm <= 0 or self.convergence_threshold < 0:
            raise ValueError(
                f"bad N4 settings: histogram_bins={self.histogram_bins}, bias_fwhm={self.bias_fwhm}, "
                f"convergence_threshold={self.convergence_threshold}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class N4Result:
    """Output of :func:`n4_bias_correct`.

    Attributes:
        corrected: bias-corrected image (``sitkFloat32``), same grid as the input.
        log_bias: log bias field on the full-resolution grid (``image = corrected * exp(log_bias)``),
            or ``None`` unless requested.
        mask: the mask the field was fitted in (``sitkUInt8``, full resolution).
        shrink: shrink factor used per axis (x, y, z).
        fit_box: index and size (x, y, z voxels) of the box the field was fitted in, or ``None``.
        seconds: wall time of the correction.
    """

    corrected: Any
    log_bias: Any | None
    mask: Any
    shrink: tuple[int, int, int]
    fit_box: tuple[tuple[int, ...], tuple[int, ...]] | None
    seconds: float

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for a sidecar."""
        box = None if self.fit_box is None else {"index_xyz": list(self.fit_box[0]), "size_xyz": list(self.fit_box[1])}
        return {"shrink_xyz": list(self.shrink), "fit_box": box, "seconds": round(self.seconds, 3)}


def shrink_factors(spacing: Sequence[float], shrink_factor: int) -> tuple[int, int, int]:
    """Per-axis shrink (x, y, z) that brings voxels towards ``shrink_factor`` times the finest spacing.

    ``(0.9, 0.9, 5.5)`` mm with 4 -> ``(4, 4, 1)``: thick slices are not thinned out further.
    """
    finest = min(spacing)
    return tuple(max(1, min(shrink_factor, int(round(shrink_factor * finest / s)))) for s in spacing)  # type: ignore[return-value]


def n4_bias_correct(
    image: Any,
    mask: Any | None = None,
    config: N4Config | None = None,
    return_log_bias: bool = False,
) -> N4Result:
    """Correct the intensity non-uniformity of one MR volume with N4.

    Args:
        image: 3D SimpleITK image (any scalar type; computed in float32).
        mask: binary mask (1 = fit the field here) on the image grid; ``None``: Otsu foreground
            (:func:`preprocessing.normalize.foreground_mask` with ``"otsu"``). Voxels <= 0 are
            always left out of the fit.
        config: N4 settings (:class:`N4Config` defaults if ``None``).
        return_log_bias: also return the full-resolution log bias field.

    Returns:
        :class:`N4Result`.

    Raises:
        ValueError: the mask has another grid than the image, or no positive voxel lies in it.
    """
    import SimpleITK as sitk

    from preprocessing.normalize import bounding_box, crop, foreground_mask

    config = config or N4Config()
    start = time.perf_counter()
    image = sitk.Cast(image, sitk.sitkFloat32)
    if mask is None:
        mask = foreground_mask(image, "otsu")
    elif mask.GetSize() != image.GetSize():
        raise ValueError(f"N4 mask size {mask.GetSize()} differs from image size {image.GetSize()}")
    else:
        mask = sitk.Cast(mask, sitk.sitkUInt8)
        mask.CopyInformation(image)
    mask = sitk.And(sitk.Cast(mask > 0, sitk.sitkUInt8), sitk.Cast(image > 0, sitk.sitkUInt8))
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError("N4: no voxel with positive intensity inside the mask")

    fit_image, fit_mask, box = image, mask, None
    if config.fit_margin_mm is not None:
        margin = [int(np.ceil(config.fit_margin_mm / s)) for s in image.GetSpacing()]
        box = bounding_box(mask, margin)
        fit_image, fit_mask = crop(image, *box), crop(mask, *box)
    shrink = shrink_factors(image.GetSpacing(), config.shrink_factor)
    small = sitk.Shrink(fit_image, list(shrink)) if max(shrink) > 1 else fit_image
    small_mask = sitk.Shrink(fit_mask, list(shrink)) if max(shrink) > 1 else fit_mask
    if not sitk.GetArrayViewFromImage(small_mask).any():  # a tiny mask can vanish when subsampled
        small, small_mask, shrink = fit_image, fit_mask, (1, 1, 1)

    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in config.iterations])
    corrector.SetNumberOfControlPoints([int(config.control_points)] * 3)
    corrector.SetSplineOrder(int(config.spline_order))
    corrector.SetConvergenceThreshold(float(config.convergence_threshold))
    corrector.SetNumberOfHistogramBins(int(config.histogram_bins))
    corrector.SetBiasFieldFullWidthAtHalfMaximum(float(config.bias_fwhm))
    corrector.SetWienerFilterNoise(float(config.wiener_noise))
    corrector.Execute(small, small_mask)

    log_bias = corrector.GetLogBiasFieldAsImage(fit_image)  # B-spline field evaluated at full resolution
    if box is not None:  # beyond the fitted box (background), repeat the field's border values
        index, size = box
        upper = [n - i - s for n, i, s in zip(image.GetSize(), index, size)]
        log_bias = sitk.ZeroFluxNeumannPad(log_bias, list(index), upper)
    log_bias.CopyInformation(image)
    corrected = sitk.Cast(sitk.Divide(image, sitk.Exp(log_bias)), sitk.sitkFloat32)
    corrected.CopyInformation(image)
    return N4Result(
        corrected=corrected,
        log_bias=sitk.Cast(log_bias, sitk.sitkFloat32) if return_log_bias else None,
        mask=mask,
        shrink=shrink,
        fit_box=box,
        seconds=time.perf_counter() - start,
    )


def lowpass(image: Any, mask: Any, sigma_mm: float = 10.0) -> np.ndarray:
    """Gaussian low-pass of the in-mask intensities (normalised convolution), z, y, x array.

    Voxels outside the mask do not leak in: ``G*(I·M) / G*M``.
    """
    import SimpleITK as sitk
    from scipy.ndimage import gaussian_filter

    values = sitk.GetArrayFromImage(image).astype(np.float64)
    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    sigma = [sigma_mm / s for s in reversed(image.GetSpacing())]  # z, y, x voxels
    num = gaussian_filter(np.where(inside, values, 0.0), sigma, mode="constant")
    den = gaussian_filter(inside.astype(np.float64), sigma, mode="constant")
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)


def nonuniformity(image: Any, mask: Any, sigma_mm: float = 10.0) -> float:
    """Intensity non-uniformity: coefficient of variation of the low-pass image inside ``mask``.

    Args:
        image: 3D image.
        mask: binary mask on its grid (e.g. the brain).
        sigma_mm: Gaussian sigma of the low-pass filter in mm.

    Returns:
        ``std / mean`` of :func:`lowpass` over the mask; scale invariant, lower is flatter.
    """
    import SimpleITK as sitk

    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    smooth = lowpass(image, mask, sigma_mm)[inside]
    return float(smooth.std() / abs(smooth.mean()))


def coefficient_of_variation(image: Any, mask: Any) -> float:
    """``std / mean`` of the raw intensities inside ``mask`` (tissue contrast included)."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask).astype(bool)].astype(np.float64)
    return float(values.std() / abs(values.mean()))
