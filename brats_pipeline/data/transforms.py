"""MONAI dictionary transforms: one deterministic list, random lists kept apart.

Keys: ``image`` (C×X×Y×Z float, channels in the task's modality order) and ``label``. After
loading, ``label`` is the task's label map (1×X×Y×Z); the last deterministic step,
:class:`LabelsToRegionsd`, turns it into region channels (R×X×Y×Z float, e.g. TC, WT, ET),
which is what the networks are trained on, or in the softmax output mode
:class:`LabelsToClassesd` into class indices (1×X×Y×Z float; BraTS 2021 {0, 1, 2, 4} -> 0..3).

* :func:`deterministic_transforms` — check the files' headers (:mod:`~brats_pipeline.data.input_files`:
  errors name the file at fault), load, channel-first, optional orientation and spacing,
  crop to the head, channel-wise z-score over non-zero voxels, labels to regions. Cached by
  the data module; validation and inference reuse it.
* :func:`patch_sampling` — the cheap random step that always runs on the CPU: sample patches
  from a cached volume (label-balanced positive/negative or uniform).
* :func:`cpu_augmentation` — per-sample random transforms (flips, transpose, rot90, rotation,
  scaling, shear, shift, elastic, intensity scale/shift, gamma, noise, smoothing; 2D or 3D)
  for machines without a GPU: stock MONAI transforms where they exist.
  :class:`brats_pipeline.data.augment.BatchAugment` does the same on whole batches on tensors.

Each option has one definition for both paths
(:class:`~brats_pipeline.data.augmentation_config.AugmentationConfig`); the elastic fields are
:mod:`brats_pipeline.data.elastic`'s, in voxels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform, RandAffined, RandomizableTransform

from brats_pipeline.constants import Task, check_output_mode, get_task
from brats_pipeline.data.augmentation_config import AugmentationConfig
from brats_pipeline.data.input_files import (
    SOURCES_SUFFIX,
    CheckFinited,
    CheckHeadersd,
    NamedLoadImaged,
    SourceFilesd,
    source_name,
)
from brats_pipeline.data.modalities import modality_selection


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
                regions = self.convert(arr.to(torch.int64))
            except ValueError as err:
                raise ValueError(f"{source}: {err}") from err
            d[key] = MetaTensor(regions, meta=label.meta) if isinstance(label, MetaTensor) else regions
        return d

    def convert(self, label: Any) -> Any:
        """``(1, X, Y, Z)`` int64 label values -> the float32 target."""
        return self.task.labels_to_regions(label).float()


class LabelsToClassesd(LabelsToRegionsd):
    """Label map (1×X×Y×Z, the task's values) -> class indices (1×X×Y×Z float32): the softmax-mode target.

    Class ``i`` is label value ``task.label_values[i]`` (BraTS 2021 {0, 1, 2, 4} -> 0..3;
    :meth:`~brats_pipeline.constants.Task.labels_to_classes`). Errors as :class:`LabelsToRegionsd`'s.
    """

    def convert(self, label: Any) -> Any:
        return self.task.labels_to_classes(label).float()


def _spatial_size(value: Any) -> tuple[int, ...]:
    return tuple(value.peek_pending_shape() if hasattr(value, "peek_pending_shape") else value.shape[1:])


class CheckSquarePlaned(MapTransform):
    """Raise ``ValueError`` unless each key's x-y plane is square (what transpose and rot90 need)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            size = _spatial_size(d[key])
            if len(size) < 2 or size[0] != size[1]:
                raise ValueError(f"transpose/rot90 need a square x-y plane; {key!r} has spatial shape {size}")
        return d


class RandTransposed(RandomizableTransform, MapTransform):
    """Swap the first two spatial axes (x, y) with probability ``prob``: Albumentations' ``Transpose``.

    An exact permutation of the array (C×X×Y or C×X×Y×Z, X == Y); the same draw for every key.
    """

    def __init__(self, keys: str | Sequence[str], prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = d[key].transpose(1, 2).contiguous()
        return d


class RandShiftAffined(RandAffined):
    """MONAI ``RandAffined`` whose ``translate_range`` is ``shift`` × each sample's size along each axis (voxels).

    ``RandAffined`` takes its translation range in voxels, fixed when built; this sets it from
    the sample before each call, so ``shift`` 0.1 moves by up to 10 % of the patch.
    """

    def __init__(self, keys: str | Sequence[str], shift: float, **kwargs: Any) -> None:
        super().__init__(keys, **kwargs)
        self.shift = float(shift)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        size = _spatial_size(data[self.keys[0]])
        self.rand_affine.rand_affine_grid.translate_range = tuple(self.shift * int(n) for n in size)
        return super().__call__(data, lazy)


def loading_steps(task: str | Task, keys: Sequence[str] = ("image", "label")) -> list[Any]:
    """Check headers -> load channel-first -> select a modality subset -> float32 -> finite: the steps that read a case.

    Errors of the checks and the loader name the file at fault (:mod:`~brats_pipeline.data.input_files`).
    """
    from monai.transforms import DeleteItemsd, EnsureTyped

    task, keys = get_task(task), list(keys)
    return [
        SourceFilesd(keys),
        CheckHeadersd(keys, task),
        NamedLoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        *modality_selection(task),  # a modality subset: its channels of a 4D file of all (data/modalities.py)
        EnsureTyped(keys="image", dtype=np.float32, track_meta=True),
        CheckFinited(keys="image"),
        DeleteItemsd(keys=[f"{k}{SOURCES_SUFFIX}" for k in keys]),  # file lists would not collate into batches
    ]


class LoadCased(MapTransform):
    """Read a case (``image``: one file per modality or one 4D file; ``label``) with :func:`loading_steps`.

    The first step of a bundle's ``train#preprocessing``: one deterministic ``MapTransform`` (so
    ``CacheDataset`` caches through it) for the checks and the loader, whose errors name the file.

    Args:
        keys: ``["image", "label"]`` (training) or ``"image"``.
        task: the task (modalities in channel order, label values).
        modalities: read only these of the task's modalities (:mod:`brats_pipeline.data.modalities`).
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task, modalities: Sequence[str] | None = None) -> None:
        from brats_pipeline.data.modalities import select_modalities

        super().__init__(keys)
        self.task = select_modalities(get_task(task), modalities)
        self.steps = loading_steps(self.task, list(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for step in self.steps:
            d = step(d)
        return d


def deterministic_transforms(
    task: str | Task,
    with_label: bool = True,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
    crop_margin: int = 4,
    normalize: bool = True,
    output_mode: str = "sigmoid",
) -> Any:
    """The cached, deterministic part: check headers -> load -> orient -> resample -> crop -> normalise -> regions.

    Args:
        task: decides the label scheme (region conversion) and the modalities read (a subset of
            :func:`brats_pipeline.data.modalities.select_modalities` reads only its own).
        with_label: include ``label`` (training/validation) or not (inference).
        spacing: resample to this voxel size in mm (x, y, z); ``None`` keeps the data's grid
            (preprocessed data is already on its target grid).
        orientation: reorient to these axis codes (``None`` keeps the file's orientation).
        crop_foreground: crop to the bounding box of non-zero image voxels (+ ``crop_margin``).
        normalize: channel-wise z-score over non-zero voxels.
        output_mode: the label becomes region channels R×X×Y×Z (``sigmoid``,
            :class:`LabelsToRegionsd`) or class indices 1×X×Y×Z (``softmax``, :class:`LabelsToClassesd`).

    Returns:
        A ``monai.transforms.Compose``; ``Invertd`` can undo its spatial steps on predictions.
    """
    from monai.transforms import Compose, CropForegroundd, NormalizeIntensityd, Orientationd, Spacingd

    task = get_task(task)
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[Any] = loading_steps(task, keys)
    if orientation:
        steps.append(Orientationd(keys=keys, axcodes=orientation, labels=None))
    if spacing is not None:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        steps.append(Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes))
    if crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key="image", margin=crop_margin, allow_smaller=True))
    if normalize:
        steps.append(NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    if with_label:  # the target: region channels (sigmoid) or class indices (softmax)
        to_target = LabelsToClassesd if check_output_mode(output_mode) == "softmax" else LabelsToRegionsd
        steps.append(to_target(keys="label", task=task))
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

    Stock MONAI transforms (``RandFlipd``, ``RandRotate90d``, ``RandAffined`` — with
    :class:`RandShiftAffined` for ``shift``, a fraction of each sample's size — intensity ones),
    plus :class:`RandTransposed` (MONAI has no random transpose) and
    :class:`~brats_pipeline.data.elastic.RandElasticd` (the shared elastic definitions).
    ``label`` holds region channels or class indices (float); spatial transforms resample it
    with nearest neighbour so it stays exact (binary, resp. the classes).

    Args:
        config: :class:`AugmentationConfig` (or a mapping of its fields).
        spatial_dims: 3 for C×X×Y×Z samples, 2 for C×X×Y slices (rotation in-plane).
    """
    from monai.transforms import (
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandRotate90d,
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
    if cfg.permutes_plane:
        steps.append(CheckSquarePlaned(keys=keys))
    if cfg.transpose_prob > 0:
        steps.append(RandTransposed(keys=keys, prob=cfg.transpose_prob))
    if cfg.rot90_prob > 0:
        steps.append(RandRotate90d(keys=keys, prob=cfg.rot90_prob, max_k=3, spatial_axes=(0, 1)))
    if cfg.spatial_prob > 0:
        n_angles, n_shears = (3, 6) if spatial_dims == 3 else (1, 2)
        affine = dict(keys=keys, prob=cfg.spatial_prob, rotate_range=(rad,) * n_angles, scale_range=(cfg.scale,) * spatial_dims,
                      shear_range=(cfg.shear,) * n_shears, mode=("bilinear", "nearest"), padding_mode="zeros")
        steps.append(RandShiftAffined(shift=cfg.shift, **affine) if cfg.shift > 0 else RandAffined(**affine))
    if cfg.elastic_prob > 0 and (cfg.elastic_magnitude > 0 or cfg.elastic_alpha > 0):
        steps.append(
            RandElasticd(keys=keys, prob=cfg.elastic_prob, magnitude=cfg.elastic_magnitude,
                         control_points=cfg.elastic_control_points, mode=("bilinear", "nearest"),
                         alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma)
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
