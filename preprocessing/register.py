"""Rigid (optionally affine) registration of one modality to a reference modality.

Mattes mutual information (multi-modal: T1 vs FLAIR is fine), regular-step gradient descent
with parameter scales from physical shifts, four resolution levels (shrink 8, 4, 2, 1 along
the finely sampled axes only, so thick slices are not thinned out; Gaussian smoothing 8, 4, 2,
0 mm: the heavy smoothing of the coarse levels widens the capture range, which thick-slice
clinical scans need), the metric sampled in the reference's foreground mask. If the result
is worse than the start (by the full-resolution metric), the start is kept. The result is a SimpleITK transform that maps
points of the **reference (fixed) space to the moving image's space**, which is exactly what
:func:`preprocessing.resample.resample_to_grid` needs to put the moving image on any grid in
the reference space (e.g. the reference resampled to 1 mm) with a single interpolation.

Initialisation: ``"header"`` (identity: the scanner coordinates of sequences of one session
already agree up to patient motion; the default), ``"geometry"`` (align the centres of the two
fields of view) or ``"moments"`` (align the centres of mass).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TRANSFORMS = ("rigid", "affine")
INITIALISATIONS = ("header", "geometry", "moments")


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of :func:`register_to_reference`.

    Args:
        transform: ``"rigid"`` (6 parameters) or ``"affine"`` (12; fitted after a rigid stage).
        initialization: ``"header"``, ``"geometry"`` or ``"moments"`` (module docstring).
        histogram_bins: bins of the Mattes mutual information.
        sampling_percentage: fraction (0-1] of fixed voxels sampled (random, seeded) per iteration.
        iterations: maximum gradient-descent iterations per level.
        max_step_mm: first optimiser step at full resolution (mm of the largest voxel shift);
            multiplied by the level's shrink factor.
        relaxation: factor the step shrinks by each time the gradient turns back; a level
            ends when the step is 1/1000 of its first one.
        shrink_factors: per level, from coarse to fine.
        smoothing_sigmas_mm: Gaussian smoothing per level (mm).
        min_samples: at least this many fixed voxels are sampled per iteration at every level
            (the percentage is raised on small, coarse levels, where 20 % of a few thousand voxels
            would make the metric too noisy to follow).
        min_level_size: a level is never shrunk below this many voxels along an axis (a 64-voxel
            image is shrunk by at most 2, not 8).
        seed: random sampling seed (reproducible results).
    """

    transform: str = "rigid"
    initialization: str = "header"
    histogram_bins: int = 32
    sampling_percentage: float = 0.2
    iterations: int = 100
    max_step_mm: float = 1.0
    relaxation: float = 0.8
    shrink_factors: tuple[int, ...] = (8, 4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (8.0, 4.0, 2.0, 0.0)
    min_samples: int = 20000
    min_level_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shrink_factors", tuple(int(s) for s in self.shrink_factors))
        object.__setattr__(self, "smoothing_sigmas_mm", tuple(float(s) for s in self.smoothing_sigmas_mm))
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; choose one of {TRANSFORMS}")
        if self.initialization not in INITIALISATIONS:
            raise ValueError(f"unknown initialization {self.initialization!r}; choose one of {INITIALISATIONS}")
        if not 0.0 < self.sampling_percentage <= 1.0:
            raise ValueError(f"sampling_percentage must be in (0, 1], got {self.sampling_percentage}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas_mm) or not self.shrink_factors:
            raise ValueError(
                f"shrink_factors {self.shrink_factors} and smoothing_sigmas_mm {self.smoothing_sigmas_mm} "
                "must have one entry per level"
            )
        if not 0.0 < self.relaxation < 1.0:
            raise ValueError(f"relaxation must be in (0, 1), got {self.relaxation}")
        if min(self.shrink_factors) < 1 or self.iterations < 1 or self.histogram_bins < 4:
            raise ValueError(
                f"bad registration settings: shrink_factors={self.shrink_factors}, iterations={self.iterations}, "
                f"histogram_bins={self.histogram_bins}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class RegistrationResult:
    """Output of :func:`register_to_reference`.

    Attributes:
        transform: fixed (reference) space -> moving space.
        metric_initial: Mattes MI metric (negative MI; lower is better) at the initial transform.
        metric_final: the same metric at the result.
        stop_conditions: the optimiser's stop condition per stage.
        seconds: wall time.
    """

    transform: Any
    metric_initial: float
    metric_final: float
    stop_conditions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """JSON-ready summary: transform type, parameters, metric values."""
        return {
            "transform": transform_record(self.transform),
            "metric_initial": round(self.metric_initial, 6),
            "metric_final": round(self.metric_final, 6),
            "stop_conditions": self.stop_conditions,
            "seconds": round(self.seconds, 3),
        }


def transform_record(transform: Any) -> dict[str, Any]:
    """Name, parameters and fixed parameters of a SimpleITK transform (JSON-ready)."""
    import SimpleITK as sitk

    if transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform)
        return {"name": "CompositeTransform", "transforms": [transform_record(transform.GetNthTransform(i)) for i in range(transform.GetNumberOfTransforms())]}
    return {
        "name": transform.GetName(),
        "parameters": [float(p) for p in transform.GetParameters()],
        "fixed_parameters": [float(p) for p in transform.GetFixedParameters()],
    }


def image_centre(image: Any) -> tuple[float, float, float]:
    """Physical (LPS, mm) centre of an image's field of view."""
    centre = [(n - 1) / 2.0 for n in image.GetSize()]
    return image.TransformContinuousIndexToPhysicalPoint(centre)


def initial_transform(fixed: Any, moving: Any, initialization: str = "header") -> Any:
    """A rigid (Euler 3D) starting transform, rotating about the fixed image's centre."""
    import SimpleITK as sitk

    if initialization == "header":
        transform = sitk.Euler3DTransform()
        transform.SetCenter(image_centre(fixed))
        return transform
    mode = {
        "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY,
        "moments": sitk.CenteredTransformInitializerFilter.MOMENTS,
    }
    if initialization not in mode:
        raise ValueError(f"unknown initialization {initialization!r}; choose one of {INITIALISATIONS}")
    return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode[initialization])


def _sampling_percentage(config: RegistrationConfig, level_fixed: Any, level_mask: Any | None) -> float:
    """The configured percentage, raised so that at least ``config.min_samples`` voxels are drawn."""
    import SimpleITK as sitk

    if level_mask is not None:
        voxels = int(sitk.GetArrayViewFromImage(level_mask).astype(bool).sum())
    else:
        voxels = int(np.prod(level_fixed.GetSize()))
    return float(min(1.0, max(config.sampling_percentage, config.min_samples / max(voxels, 1))))


def _method(config: RegistrationConfig, fixed_mask: Any | None, max_step_mm: float, sampling: float) -> Any:
    """One resolution level: Mattes MI, regular-step gradient descent, physical-shift scales."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, config.seed)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=max_step_mm,
        minStep=1e-3 * max_step_mm,
        numberOfIterations=config.iterations,
        relaxationFactor=config.relaxation,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def level_factors(image: Any, shrink: int, min_level_size: int = 1) -> tuple[int, int, int]:
    """Per-axis shrink factors of one pyramid level.

    Spacing-aware like :func:`preprocessing.n4.shrink_factors` (5.5 mm slices of a 0.9 mm
    in-plane scan are not thinned out when the in-plane axes are shrunk by 4), and no axis is
    shrunk below ``min_level_size`` voxels (a 64-voxel axis is shrunk by 2, not 8).
    """
    from preprocessing.n4 import shrink_factors

    factors = shrink_factors(image.GetSpacing(), shrink)
    return tuple(max(1, min(f, n // max(int(min_level_size), 1))) for f, n in zip(factors, image.GetSize()))  # type: ignore[return-value]


def pyramid_level(image: Any, shrink: int, sigma_mm: float, is_mask: bool = False, min_level_size: int = 1) -> Any:
    """``image`` smoothed by ``sigma_mm`` and shrunk by the factors of :func:`level_factors`."""
    import SimpleITK as sitk

    factors = level_factors(image, shrink, min_level_size)
    if not is_mask and sigma_mm > 0:
        variance = [float(max(sigma_mm**2 - (s / 2.0) ** 2, 0.0)) for s in image.GetSpacing()]
        image = sitk.DiscreteGaussian(image, variance, 32, 0.01, True)
    return sitk.Shrink(image, list(factors)) if max(factors) > 1 else image


def _run_levels(fixed: Any, moving: Any, transform: Any, config: RegistrationConfig, fixed_mask: Any | None) -> str:
    """Optimise ``transform`` in place from the coarsest to the finest level; return the last stop condition."""
    stop = ""
    for requested, sigma in zip(config.shrink_factors, config.smoothing_sigmas_mm):
        shrink = max(level_factors(fixed, requested, config.min_level_size))
        level_fixed = pyramid_level(fixed, requested, sigma, min_level_size=config.min_level_size)
        level_moving = pyramid_level(moving, requested, sigma, min_level_size=config.min_level_size)
        level_mask = None
        if fixed_mask is not None:
            level_mask = pyramid_level(fixed_mask, requested, 0.0, is_mask=True, min_level_size=config.min_level_size)
        max_step = config.max_step_mm * shrink  # mm; shrinks by `relaxation` each time the gradient turns back
        method = _method(config, level_mask, max_step, _sampling_percentage(config, level_fixed, level_mask))
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(level_fixed, level_moving)
        stop = f"level shrink {shrink}: {method.GetOptimizerStopConditionDescription()}"
    return stop


def metric_value(fixed: Any, moving: Any, transform: Any, fixed_mask: Any | None = None, bins: int = 32) -> float:
    """Mattes MI metric (negative mutual information, lower = more similar) of ``moving`` under ``transform``.

    Evaluated on every voxel of the fixed image (or its mask), at full resolution.
    """
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.NONE)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)))


def _as_affine(rigid: Any) -> Any:
    """The same mapping as a rigid transform, as an ``AffineTransform`` (same centre)."""
    import SimpleITK as sitk

    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return affine


def register_to_reference(
    moving: Any,
    fixed: Any,
    config: RegistrationConfig | None = None,
    fixed_mask: Any | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (the reference modality) with Mattes mutual information.

    Args:
        moving: the modality to align (3D, any grid).
        fixed: the reference modality (3D).
        config: settings (:class:`RegistrationConfig` defaults if ``None``).
        fixed_mask: optional binary mask on the fixed grid; the metric is sampled inside it.

    Returns:
        :class:`RegistrationResult` whose transform maps fixed-space points to moving space.

    Raises:
        RuntimeError: the optimiser failed (e.g. the images do not overlap), with SimpleITK's reason.
    """
    import SimpleITK as sitk

    config = config or RegistrationConfig()
    start = time.perf_counter()
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    if fixed_mask is not None:
        fixed_mask = sitk.Cast(fixed_mask, sitk.sitkUInt8)
    transform = initial_transform(fixed, moving, config.initialization)
    metric_initial = metric_value(fixed, moving, transform, fixed_mask, config.histogram_bins)

    stops = []
    try:
        stops.append("rigid " + _run_levels(fixed, moving, transform, config, fixed_mask))
    except RuntimeError as exc:
        raise RuntimeError(f"rigid registration failed: {str(exc).strip().splitlines()[-1]}") from exc
    result: Any = transform

    if config.transform == "affine":
        affine = _as_affine(transform)
        try:
            stops.append("affine " + _run_levels(fixed, moving, affine, config, fixed_mask))
        except RuntimeError as exc:
            raise RuntimeError(f"affine registration failed: {str(exc).strip().splitlines()[-1]}") from exc
        result = affine

    metric_final = metric_value(fixed, moving, result, fixed_mask, config.histogram_bins)
    if metric_final > metric_initial:  # lost: keep the start rather than make things worse
        stops.append("result worse than the initial alignment; kept the initial transform")
        result, metric_final = initial_transform(fixed, moving, config.initialization), metric_initial
        if config.transform == "affine":
            result = _as_affine(result)
    return RegistrationResult(result, metric_initial, metric_final, stops, time.perf_counter() - start)


def mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 32) -> float:
    """Mutual information (nats) of two intensity arrays of one shape, inside ``mask``.

    A plain joint-histogram estimate, independent of ITK, for checking alignment.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        a, b = a[np.asarray(mask, dtype=bool)], b[np.asarray(mask, dtype=bool)]
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = joint / max(joint.sum(), 1.0)
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())


def transform_displacement(transform: Any, points: Sequence[Sequence[float]]) -> np.ndarray:
    """Where ``transform`` sends each physical point (N x 3, mm): handy to compare two transforms."""
    return np.array([transform.TransformPoint([float(c) for c in p]) for p in points])
