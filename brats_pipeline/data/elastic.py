"""The elastic deformations of both augmentation paths: one definition each, in voxels.

* :func:`elastic_displacement` (amplitude form, ``elastic_magnitude``): uniform random numbers
  on a coarse grid of control points; each control point moves by up to ``magnitude`` voxels
  along each axis, linearly interpolated in between.
* :func:`smooth_displacement` (α/σ form, ``elastic_alpha``/``elastic_sigma``): the classic
  definition of Simard et al. 2003, as MONAI's ``Rand3DElastic`` and the widely copied
  Keras-era ``elastic_transform`` (``gaussian_filter(..., mode="constant") * alpha``) write it:
  one uniform number in [-1, 1) per voxel and axis, smoothed by a Gaussian of σ voxels, times α.

See :class:`~brats_pipeline.data.transforms.AugmentationConfig`. ``BatchAugment`` (whole
batches on tensors) adds the field to its sampling grid; :class:`RandElasticd` applies it to
one sample in MONAI's per-sample (CPU) pipeline. 2D (X, Y) or 3D (X, Y, Z).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform


def elastic_displacement(unit: torch.Tensor, magnitude: float, size: Sequence[int]) -> torch.Tensor:
    """The elastic displacement field of both augmentation paths.

    Args:
        unit: (B, D, n, ..., n) uniform random numbers in [0, 1), a torch tensor: one per
            spatial axis and control point; the ``n`` control points per axis are spread
            evenly over the patch, corners included.
        magnitude: largest displacement along an axis, in voxels.
        size: the patch's D spatial sizes (x, y[, z]).

    Returns:
        (B, *size, D) displacement in voxels, component ``i`` along spatial axis ``i``: the
        control points move by ``(2 * unit - 1) * magnitude``, linearly interpolated between.
    """
    dims = unit.ndim - 2
    if dims not in (2, 3) or unit.shape[1] != dims or len(size) != dims:
        raise ValueError(f"elastic control grid {tuple(unit.shape)} does not fit a {len(size)}D patch {tuple(size)}")
    offsets = (2 * unit - 1) * magnitude
    field = F.interpolate(offsets, size=tuple(int(n) for n in size), mode="bilinear" if dims == 2 else "trilinear",
                          align_corners=True)
    return field.movedim(1, -1)


def smooth_displacement(unit: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """The α/σ elastic displacement field of both augmentation paths (Simard et al. 2003).

    Args:
        unit: (B, D, *size) uniform random numbers in [0, 1), one per voxel and spatial axis.
        alpha: scale of the smoothed field, in voxels.
        sigma: standard deviation of the Gaussian smoothing, in voxels.

    Returns:
        (B, *size, D) displacement in voxels: ``alpha * G_sigma * (2 * unit - 1)``, where
        ``G_sigma`` is MONAI's ``GaussianFilter(D, sigma, truncated=3.0)`` (normalised, zeros
        outside the patch) — exactly what ``Rand3DElastic`` does with ``sigma_range=(σ, σ)``,
        ``magnitude_range=(α, α)``. Away from the border (> 3σ) each component has standard
        deviation ``α / √3 · (2σ√π)^(-D/2)`` (white noise of variance 1/3 times the sum of the
        squared kernel), so the same α moves 2D slices more than 3D volumes; nearer the border
        the zeros outside pull it down.
    """
    from monai.networks.layers import GaussianFilter

    dims = unit.ndim - 2
    if dims not in (2, 3) or unit.shape[1] != dims:
        raise ValueError(f"elastic noise {tuple(unit.shape)} must be (B, D, *size) for a 2D or 3D patch")
    if sigma <= 0:
        raise ValueError(f"elastic sigma must be > 0 voxels, got {sigma}")
    smooth = GaussianFilter(dims, float(sigma), truncated=3.0).to(unit.device)
    return (smooth(2 * unit - 1) * alpha).movedim(1, -1)


def grid_from_voxels(src: torch.Tensor, in_size: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid from source positions in voxels, centred on the patch.

    Args:
        src: (B, *out_size, D) source positions, voxel offsets from the centre of the input
            patch, component ``i`` along spatial axis ``i``.
        in_size: the input's D spatial sizes.

    Returns:
        The normalised grid (``align_corners=True``), components in ``grid_sample``'s reversed order.
    """
    half = torch.tensor([max(n - 1, 1) / 2 for n in in_size], device=src.device, dtype=src.dtype)
    return (src / half).flip(-1)


def centred_voxels(size: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(*size, D) voxel coordinates relative to the patch centre (float32)."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2 for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


class RandElasticd(RandomizableTransform, MapTransform):
    """Random elastic deformation of one sample (C×X×Y or C×X×Y×Z): the per-sample (CPU) path.

    The field is :func:`elastic_displacement`'s, or :func:`smooth_displacement`'s when
    ``alpha > 0``, as in ``BatchAugment``; random numbers come from MONAI's ``self.R``
    (``set_determinism``/``set_random_state`` apply).

    Args:
        keys: the keys to deform (same spatial shape).
        prob: probability of deforming a sample.
        magnitude: largest displacement along an axis, in voxels (amplitude form).
        control_points: control points per axis (amplitude form).
        mode: interpolation per key (``bilinear`` or ``nearest``).
        alpha: > 0 selects the α/σ form instead: scale in voxels.
        sigma: Gaussian smoothing of the α/σ form, in voxels.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        prob: float = 0.3,
        magnitude: float = 4.0,
        control_points: int = 5,
        mode: str | Sequence[str] = "bilinear",
        alpha: float = 0.0,
        sigma: float = 0.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if magnitude < 0 or control_points < 2:
            raise ValueError(f"elastic magnitude must be >= 0 and control points >= 2, got {magnitude}, {control_points}")
        if alpha < 0 or (alpha > 0 and sigma <= 0):
            raise ValueError(f"elastic alpha must be >= 0 and sigma > 0 where alpha is, got {alpha}, {sigma}")
        self.magnitude, self.control_points = float(magnitude), int(control_points)
        self.alpha, self.sigma = float(alpha), float(sigma)
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(self.mode) != len(self.keys) or set(self.mode) - {"bilinear", "nearest"}:
            raise ValueError(f"mode must be 'bilinear'/'nearest', one per key {self.keys}, got {mode}")
        self._unit: np.ndarray | None = None

    def randomize(self, size: Sequence[int]) -> None:  # type: ignore[override]
        super().randomize(None)
        dims = len(size)
        shape = (1, dims, *size) if self.alpha > 0 else (1, dims) + (self.control_points,) * dims
        self._unit = self.R.random_sample(shape).astype(np.float32) if self._do_transform else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        d = dict(data)
        size = tuple(d[self.keys[0]].shape[1:])
        if len(size) not in (2, 3):
            raise ValueError(f"RandElasticd expects C×X×Y or C×X×Y×Z, got shape {tuple(d[self.keys[0]].shape)}")
        self.randomize(size)
        if self._unit is None or (self.magnitude == 0 and self.alpha == 0):
            return d
        unit = torch.from_numpy(self._unit)
        if self.alpha > 0:
            disp = smooth_displacement(unit, self.alpha, self.sigma)
        else:
            disp = elastic_displacement(unit, self.magnitude, size)
        grid = grid_from_voxels(centred_voxels(size) + disp[0], size)[None]
        for key, mode in zip(self.keys, self.mode):
            value = d[key]
            if tuple(value.shape[1:]) != size:
                raise ValueError(f"RandElasticd: {key!r} has shape {tuple(value.shape)}, {self.keys[0]!r} {size}")
            arr = torch.as_tensor(value.as_tensor() if isinstance(value, MetaTensor) else value)
            out = F.grid_sample(arr[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=True)[0].to(arr.dtype)
            d[key] = MetaTensor(out, meta=value.meta) if isinstance(value, MetaTensor) else out
        return d

