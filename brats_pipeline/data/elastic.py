"""The one elastic deformation of both augmentation paths, amplitude in voxels.

:func:`elastic_displacement` turns uniform random numbers on a coarse grid of control points
into a displacement field: each control point moves by up to ``magnitude`` voxels along each
axis, linearly interpolated in between (see :class:`~brats_pipeline.data.transforms.AugmentationConfig`).
``BatchAugment`` (whole batches on tensors) adds it to its sampling grid; :class:`RandElasticd`
applies it to one sample in MONAI's per-sample (CPU) pipeline. 2D (X, Y) or 3D (X, Y, Z).
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

    The field is :func:`elastic_displacement`'s, as in ``BatchAugment``; random numbers come
    from MONAI's ``self.R`` (``set_determinism``/``set_random_state`` apply).

    Args:
        keys: the keys to deform (same spatial shape).
        prob: probability of deforming a sample.
        magnitude: largest displacement along an axis, in voxels.
        control_points: control points per axis.
        mode: interpolation per key (``bilinear`` or ``nearest``).
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        prob: float = 0.3,
        magnitude: float = 4.0,
        control_points: int = 5,
        mode: str | Sequence[str] = "bilinear",
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if magnitude < 0 or control_points < 2:
            raise ValueError(f"elastic magnitude must be >= 0 and control points >= 2, got {magnitude}, {control_points}")
        self.magnitude, self.control_points = float(magnitude), int(control_points)
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(self.mode) != len(self.keys) or set(self.mode) - {"bilinear", "nearest"}:
            raise ValueError(f"mode must be 'bilinear'/'nearest', one per key {self.keys}, got {mode}")
        self._unit: np.ndarray | None = None

    def randomize(self, dims: int) -> None:  # type: ignore[override]
        super().randomize(None)
        shape = (1, dims) + (self.control_points,) * dims
        self._unit = self.R.random_sample(shape).astype(np.float32) if self._do_transform else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        d = dict(data)
        size = tuple(d[self.keys[0]].shape[1:])
        if len(size) not in (2, 3):
            raise ValueError(f"RandElasticd expects C×X×Y or C×X×Y×Z, got shape {tuple(d[self.keys[0]].shape)}")
        self.randomize(len(size))
        if self._unit is None or self.magnitude == 0:
            return d
        disp = elastic_displacement(torch.from_numpy(self._unit), self.magnitude, size)
        grid = grid_from_voxels(centred_voxels(size) + disp[0], size)[None]
        for key, mode in zip(self.keys, self.mode):
            value = d[key]
            if tuple(value.shape[1:]) != size:
                raise ValueError(f"RandElasticd: {key!r} has shape {tuple(value.shape)}, {self.keys[0]!r} {size}")
            arr = torch.as_tensor(value.as_tensor() if isinstance(value, MetaTensor) else value)
            out = F.grid_sample(arr[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=True)[0].to(arr.dtype)
            d[key] = MetaTensor(out, meta=value.meta) if isinstance(value, MetaTensor) else out
        return d

