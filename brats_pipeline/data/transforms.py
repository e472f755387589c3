"""MONAI dictionary transforms: one deterministic list, random lists kept apart.

Keys: ``image`` (C×X×Y×Z float, channels in the task's modality order) and ``label``. After
loading, ``label`` is the task's label map (1×X×Y×Z); the last deterministic step,
:class:`LabelsToRegionsd`, turns it into region channels (R×X×Y×Z float, e.g. TC, WT, ET),
which is what the networks are trained on.

* :func:`deterministic_transforms` — check the files' headers (:mod:`~brats_pipeline.data.input_files`:
  errors name the file at fault), load, channel-first, optional orientation and spacing,
  crop to the head, channel-wise z-score over non-zero voxels, labels to regions. Cached by
  the data module; validation and inference reuse it.
* :func:`patch_sampling` — the cheap random step that always runs on the CPU: sample patches
  from a cached volume (label-balanced positive/negative or uniform).
* :func:`cpu_augmentation` — per-sample random transforms (flips, rotation, scaling, shear,
  elastic, intensity scale/shift, gamma, noise, smoothing; 2D or 3D) for machines without a
  GPU: stock MONAI transforms, and :class:`RandElasticd` for the elastic deformation.
  :class:`brats_pipeline.data.augment.BatchAugment` does the same on whole batches on tensors.

The elastic deformation has one definition, :func:`brats_pipeline.data.elastic.elastic_displacement`,
used by both paths:
``elastic_magnitude`` is in voxels (see :class:`AugmentationConfig`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from monai.transforms import MapTransform

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.input_files import (
    SOURCES_SUFFIX,
    CheckFinited,
    CheckHeadersd,
    NamedLoadImaged,
    SourceFilesd,
    source_name,
)


@dataclass
class AugmentationConfig:
    """Which random transforms run, and their ranges (defaults follow the seed papers / nnU-Net).

    Probabilities are per sample. Angles in degrees (3D: about each axis; 2D: in-plane),
    ``scale`` as a fraction (0.1 = ±10 %), ``shear`` as a fraction of the other axes' offsets.

    Elastic deformation (both paths, :func:`~brats_pipeline.data.elastic.elastic_displacement`): ``elastic_control_points``
    per axis, spread evenly over the patch, corners included; each moves by a displacement
    drawn uniformly in ``[-elastic_magnitude, elastic_magnitude]`` **voxels** along each axis,
    and the field is linearly interpolated in between. So no voxel moves more than
    ``elastic_magnitude`` voxels along any axis, and the mean displacement (vector length)
    is about half of it, 2D or 3D: 2 voxels for the default 4 (measured on both paths in
    ``tests/brats_pipeline/test_augment.py``). Voxels, not mm: the field lives on the grid.
    """

    flip_prob: float = 0.5
    spatial_prob: float = 0.5
    rotate_deg: float = 20.0
    scale: float = 0.1
    shear: float = 0.05
    elastic_prob: float = 0.3
    elastic_magnitude: float = 4.0
    elastic_control_points: int = 5
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.8, 1.2)
    noise_prob: float = 0.2
    noise_std: float = 0.1
    smooth_prob: float = 0.2
    smooth_sigma: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {name} must be in [0, 1], got {value}")
        if self.elastic_magnitude < 0:
            raise ValueError(f"elastic_magnitude must be >= 0 voxels, got {self.elastic_magnitude}")
        if self.elastic_control_points < 2:
            raise ValueError(f"elastic_control_points must be >= 2 per axis, got {self.elastic_control_points}")

    @classmethod
    def none(cls) -> AugmentationConfig:
        """Every random transform off (patch sampling still happens)."""
        return cls(flip_prob=0, spatial_prob=0, elastic_prob=0, intensity_prob=0, gamma_prob=0, noise_prob=0, smooth_prob=0)

    @classmethod
    def from_any(cls, value: AugmentationConfig | Mapping[str, Any] | None) -> AugmentationConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        unknown = set(value) - set(asdict(cls()))
        if unknown:
            raise ValueError(f"unknown augmentation options {sorted(unknown)}; known: {sorted(asdict(cls()))}")
        return cls(**dict(value))


class LabelsToRegionsd(MapTransform):
    """Label map (1×X×Y×Z, the task's values) -> region channels (R×X×Y×Z float32).

    Unknown label values raise ``ValueError`` naming the source file. A MONAI ``MapTransform``,
    so ``CacheDataset`` caches through it.
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task) -> None:
        super().__init__(keys)
        self.task = get_task(task)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.keys:
            label = d[key]
            source = source_name(label, key)
            arr = torch.as_tensor(label)
            if arr.is_floating_point():
                arr = arr.round()
            try:
                regions = self.task.labels_to_regions(arr.to(torch.int64)).to(torch.float32)
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from err
            d[key] = MetaTensor(regions, meta=label.meta) if isinstance(label, MetaTensor) else regions
        return d


def deterministic_transforms(
    task: str | Task,
    with_label: bool = True,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
    crop_margin: int = 4,
    normalize: bool = True,
) -> Any:
    """The cached, deterministic part: check headers -> load -> orient -> resample -> crop -> normalise -> regions.

    Args:
        task: decides the label scheme (region conversion).
        with_label: include ``label`` (training/validation) or not (inference).
        spacing: resample to this voxel size in mm (x, y, z); ``None`` keeps the data's grid
            (preprocessed data is already on its target grid).
        orientation: reorient to these axis codes (``None`` keeps the file's orientation).
        crop_foreground: crop to the bounding box of non-zero image voxels (+ ``crop_margin``).
        normalize: channel-wise z-score over non-zero voxels.

    Returns:
        A ``monai.transforms.Compose``; ``Invertd`` can undo its spatial steps on predictions.
    """
    from monai.transforms import (
        Compose,
        CropForegroundd,
        DeleteItemsd,
        EnsureTyped,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    task = get_task(task)
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[Any] = [  # errors of the checks and the loader name the file at fault (data/input_files.py)
        SourceFilesd(keys),
        CheckHeadersd(keys, task),
        NamedLoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        EnsureTyped(keys="image", dtype=np.float32, track_meta=True),
        CheckFinited(keys="image"),
        DeleteItemsd(keys=[f"{k}{SOURCES_SUFFIX}" for k in keys]),  # file lists would not collate into batches
    ]
    if orientation:
        steps.append(Orientationd(keys=keys, axcodes=orientation, labels=None))
    if spacing is not None:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        steps.append(Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes))
    if crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key="image", margin=crop_margin, allow_smaller=True))
    if normalize:
        steps.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    if with_label:
        steps.append(LabelsToRegionsd(keys="label", task=task))
    return Compose(steps)


def patch_sampling(
    patch_size: Sequence[int],
    num_samples: int = 2,
    pos_fraction: float = 0.67,
    label_balanced: bool = True,
) -> list[Any]:
    """Random patches from a cached volume (pads volumes smaller than the patch).

    Args:
        patch_size: (x, y, z) voxels.
        num_samples: patches per volume per epoch.
        pos_fraction: share of patches centred on tumour (any region) when ``label_balanced``.
        label_balanced: ``RandCropByPosNegLabeld``; otherwise uniform ``RandSpatialCropSamplesd``.
    """
    from monai.transforms import RandCropByPosNegLabeld, RandSpatialCropSamplesd, SpatialPadd

    if not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    keys = ["image", "label"]
    steps: list[Any] = [SpatialPadd(keys=keys, spatial_size=tuple(patch_size))]
    if label_balanced:
        steps.append(
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=tuple(patch_size), pos=pos_fraction,
                neg=1.0 - pos_fraction, num_samples=num_samples, image_key="image", image_threshold=-1e9,
                allow_smaller=True,
            )
        )
    else:
        steps.append(RandSpatialCropSamplesd(keys=keys, roi_size=tuple(patch_size), num_samples=num_samples, random_size=False))
    return steps


def cpu_augmentation(config: AugmentationConfig | Mapping[str, Any] | None = None, spatial_dims: int = 3) -> list[Any]:
    """Per-sample random transforms (the CPU path; ``BatchAugment`` does whole batches on tensors).

    Stock MONAI transforms, plus :class:`RandElasticd` (the shared elastic definition).
    ``label`` holds region channels (float); spatial transforms resample it with nearest
    neighbour so it stays binary.

    Args:
        config: :class:`AugmentationConfig` (or a mapping of its fields).
        spatial_dims: 3 for C×X×Y×Z samples, 2 for C×X×Y slices (rotation in-plane).
    """
    from monai.transforms import (
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    from brats_pipeline.data.elastic import RandElasticd

    cfg = AugmentationConfig.from_any(config)
    keys = ["image", "label"]
    rad = float(np.deg2rad(cfg.rotate_deg))
    steps: list[Any] = []
    if cfg.flip_prob > 0:
        steps += [RandFlipd(keys=keys, prob=cfg.flip_prob, spatial_axis=axis) for axis in range(spatial_dims)]
    if cfg.spatial_prob > 0:
        n_angles, n_shears = (3, 6) if spatial_dims == 3 else (1, 2)
        steps.append(
            RandAffined(
                keys=keys, prob=cfg.spatial_prob, rotate_range=(rad,) * n_angles, scale_range=(cfg.scale,) * spatial_dims,
                shear_range=(cfg.shear,) * n_shears, mode=("bilinear", "nearest"), padding_mode="zeros",
            )
        )
    if cfg.elastic_prob > 0 and cfg.elastic_magnitude > 0:
        steps.append(
            RandElasticd(keys=keys, prob=cfg.elastic_prob, magnitude=cfg.elastic_magnitude,
                         control_points=cfg.elastic_control_points, mode=("bilinear", "nearest"))
        )
    if cfg.intensity_prob > 0:
        steps += [
            RandScaleIntensityd(keys="image", factors=cfg.intensity_scale, prob=cfg.intensity_prob, channel_wise=True),
            RandShiftIntensityd(keys="image", offsets=cfg.intensity_shift, prob=cfg.intensity_prob, channel_wise=True),
        ]
    if cfg.gamma_prob > 0:
        steps.append(RandAdjustContrastd(keys="image", prob=cfg.gamma_prob, gamma=tuple(cfg.gamma_range)))
    if cfg.noise_prob > 0:
        steps.append(RandGaussianNoised(keys="image", prob=cfg.noise_prob, std=cfg.noise_std))
    if cfg.smooth_prob > 0:
        lo, hi = cfg.smooth_sigma
        steps.append(
            RandGaussianSmoothd(keys="image", prob=cfg.smooth_prob, sigma_x=(lo, hi), sigma_y=(lo, hi), sigma_z=(lo, hi))
        )
    return steps
