"""``AugmentationConfig``: which random transforms run, and their ranges, for both augmentation paths.

One definition of each option, read by the per-sample CPU path
(:func:`brats_pipeline.data.transforms.cpu_augmentation`) and by the batched one
(:class:`brats_pipeline.data.augment.BatchAugment`); the elastic fields are
:mod:`brats_pipeline.data.elastic`'s, in voxels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class AugmentationConfig:
    """Which random transforms run, and their ranges (defaults follow the seed papers / nnU-Net).

    Probabilities are per sample. Every new option defaults to off; :meth:`paper_table` is the
    augmentation table of the seed paper (``configs/augmentation_paper_table.yaml``).

    Spatial, one random affine map per sample with ``spatial_prob`` (MONAI ``RandAffine``'s
    composition on both paths: output voxel ``x`` samples the input at ``R·Sh·(S·x + t)``,
    about the patch centre):

    * ``rotate_deg``: angles uniform in ±degrees (3D: about each axis; 2D: in-plane);
    * ``scale``: zoom factors ``S`` uniform in ``1 ± scale`` per axis (0.1 = ±10 %; a factor
      above 1 samples a larger field of view, so content shrinks by ``1/S``, as Keras'
      ``zoom_range`` does);
    * ``shear``: shear *factors* (the tangent of the shear angle) uniform in ±shear, one per
      ordered axis pair, made into ``Sh`` by MONAI's ``create_shear`` on both paths;
    * ``shift``: translation ``t`` uniform in ±``shift`` × the patch size along each axis, in
      voxels (0.1 = ±10 %, Keras' ``width_shift_range``/``height_shift_range``); like MONAI and
      Keras it is applied before rotation and shear, so with those on it turns with them.

    Exact array permutations, no interpolation (the patch's x-y plane must be square):
    ``flip_prob`` per axis; ``transpose_prob`` swaps x and y (Albumentations ``Transpose``);
    ``rot90_prob`` rotates the x-y plane by k·90°, k uniform in {1, 2, 3} (MONAI
    ``RandRotate90d``; Albumentations' ``RandomRotate90(p)`` draws k in {0..3}: ``rot90_prob``
    = 0.75·p). 2D slices in-plane; 3D patches in the x-y plane.

    Elastic deformation with ``elastic_prob``, one of two definitions (both paths,
    :mod:`~brats_pipeline.data.elastic`), in **voxels**, not mm (the field lives on the grid):

    * amplitude form (``elastic_alpha`` 0, the default): ``elastic_control_points`` per axis,
      spread evenly over the patch, corners included; each moves by a displacement drawn
      uniformly in ``[-elastic_magnitude, elastic_magnitude]`` voxels along each axis, linearly
      interpolated in between. No voxel moves more than ``elastic_magnitude`` along any axis,
      and the mean displacement (vector length) is about half of it, 2D or 3D: 2 voxels for
      the default 4 (measured on both paths in ``tests/brats_pipeline/test_augment.py``);
    * α/σ form (``elastic_alpha`` > 0; then ``elastic_magnitude`` and the control points are
      not used): Simard et al.'s field — one uniform number in [-1, 1) per voxel and axis,
      smoothed by a Gaussian of ``elastic_sigma`` voxels (truncated at 3σ, zeros outside) and
      multiplied by ``elastic_alpha`` voxels; MONAI's ``Rand3DElastic`` with ``sigma_range=(σ, σ)``,
      ``magnitude_range=(α, α)``. Each component has standard deviation
      ``α/√3 · (2σ√π)^(-D/2)`` away from the border: α 34, σ 4 gives 1.38 pixels in 2D, 0.37
      voxels in 3D (measured in ``tests/brats_pipeline/test_augmentation_table.py``).

    Intensity: ``intensity_scale`` multiplies each channel by a factor uniform in ``1 ±`` it
    (0.2: brightness 0.8-1.2) and ``intensity_shift`` adds ±it; ``gamma_range``: γ on the
    [min, max] range (BatchAugment: per channel; MONAI's ``RandAdjustContrastd``: one γ over all
    channels); Gaussian noise (std up to ``noise_std``) and smoothing (σ in voxels).
    """

    flip_prob: float = 0.5
    spatial_prob: float = 0.5
    rotate_deg: float = 20.0
    scale: float = 0.1
    shear: float = 0.05
    shift: float = 0.0
    transpose_prob: float = 0.0
    rot90_prob: float = 0.0
    elastic_prob: float = 0.3
    elastic_magnitude: float = 4.0
    elastic_control_points: int = 5
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0
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
        if self.elastic_alpha < 0 or self.elastic_sigma < 0 or (self.elastic_alpha > 0) != (self.elastic_sigma > 0):
            raise ValueError("elastic_alpha and elastic_sigma (voxels) are set together, both > 0 (0, 0: the amplitude "
                             f"form), got {self.elastic_alpha}, {self.elastic_sigma}")
        if not 0 <= self.shift < 1 or not 0 <= self.scale < 1:
            raise ValueError(f"shift and scale are fractions in [0, 1), got {self.shift}, {self.scale}")

    @property
    def permutes_plane(self) -> bool:
        """Whether transpose or rot90 may run (they need a square x-y plane)."""
        return self.transpose_prob > 0 or self.rot90_prob > 0

    @classmethod
    def paper_table(cls) -> AugmentationConfig:
        """The seed paper's augmentation table, from ``brats_pipeline/configs/augmentation_paper_table.yaml``."""
        import yaml

        path = Path(__file__).resolve().parents[1] / "configs" / "augmentation_paper_table.yaml"
        return cls.from_any(yaml.safe_load(path.read_text())["data"]["augmentation"])

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
