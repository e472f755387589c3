"""Batched random augmentation on the device the batch lives on (GPU path).

Per-sample stock transforms dominate a GPU training step (``Rand3DElasticd`` alone costs
0.1 s per 4×128³ sample on an H100, and ``RandGaussianNoised`` draws its noise with numpy on
the CPU). :class:`BatchAugment` instead works on a whole batch with torch, 3D
``(B, C, X, Y, Z)`` or 2D ``(B, C, X, Y)`` (slices; rotation in-plane), with the same settings:

* every spatial transform of a sample — flips, transpose, rot90, rotation, scaling, shear,
  shift and the random elastic field of :mod:`~brats_pipeline.data.elastic` (amplitude or
  α/σ form, in voxels, the same as the per-sample CPU path's) — is composed into **one
  sampling grid** per sample, and image and label are resampled in one ``grid_sample`` each (image
  bilinear; label region channels bilinear then thresholded at 0.5; class indices — the
  softmax mode, ``classes`` — one-hot, bilinear, then the most likely class, so labels stay
  exact classes, as nnU-Net's per-label interpolation of segmentations). A sample that drew only
  exact permutations (flips, transpose, rot90; with ``spatial_prob`` 0.5 about half of them)
  is its centre window permuted and copied — what the grid would sample, without the
  interpolation's cost;
* intensity scale/shift, gamma, Gaussian noise and Gaussian smoothing are drawn with torch
  on the device and applied in place on the output.

It runs on any device (the tests run it on the CPU). The input may be larger than
``out_size`` (the data module crops a margin around each patch); the output is the centre
``out_size`` window after transformation, so rotations do not pull in empty corners.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from brats_pipeline.data.augmentation_config import AugmentationConfig
from brats_pipeline.data.elastic import (
    centred_voxels,
    elastic_displacement,
    grid_from_voxels,
    smooth_displacement,
)


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from angles in radians: (B, 1) in-plane -> (B, 2, 2); (B, 3) about x, y, z -> Rz @ Ry @ Rx."""
    if angles.shape[-1] == 1:
        c, s = torch.cos(angles[:, 0]), torch.sin(angles[:, 0])
        return torch.stack([c, -s, s, c], -1).view(-1, 2, 2)
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def _shear_matrices(factors: torch.Tensor) -> torch.Tensor:
    """(B, D, D) shear matrices from the off-diagonal entries of ``factors`` (B, D, D), by MONAI's own
    ``create_shear`` — the CPU path's ``RandAffined`` definition with whichever MONAI is installed
    (>= 1.6 composes one elementary shear per factor, determinant 1; older ones set the off-diagonals)."""
    from monai.transforms.utils import create_shear

    dims = factors.shape[-1]
    off = ~torch.eye(dims, dtype=torch.bool, device=factors.device)
    coefs = factors[:, off].double().cpu().tolist()  # row-major: MONAI's coefficient order
    mats = [torch.as_tensor(create_shear(dims, c, backend="torch")[:dims, :dims]) for c in coefs]
    return torch.stack(mats).to(device=factors.device, dtype=factors.dtype)


class Draws(NamedTuple):
    """One batch's random spatial draws: output voxel ``x`` (centred) samples the input at
    ``(linear @ ((discrete @ x) * spacing) + offset) / spacing`` (+ the elastic field), in voxels."""

    linear: torch.Tensor  # (B, D, D) rotation @ shear @ scaling, physical (identity where not drawn)
    offset: torch.Tensor  # (B, D) the shift in mm, turned by rotation @ shear
    discrete: torch.Tensor  # (B, D, D) signed permutation in voxels: flips, transpose, rot90
    moved: torch.Tensor  # (B,) bool: drew a rotation/scaling/shear/shift


def _permute(window: torch.Tensor, discrete: torch.Tensor) -> torch.Tensor:
    """``window`` (C, *size) resampled by the signed permutation ``discrete`` (D, D), exactly."""
    dims = discrete.shape[0]
    flips = [1 + k for k in range(dims) if discrete[k].sum() < 0]
    order = [int(discrete[:, j].abs().argmax()) for j in range(dims)]  # output axis j reads input axis order[j]
    out = window.flip(flips) if flips else window
    return out.permute(0, *(1 + k for k in order)) if order != list(range(dims)) else out


class BatchAugment(torch.nn.Module):
    """Random spatial + intensity augmentation of a batch in one resampling pass, 2D or 3D.

    Args:
        config: :class:`AugmentationConfig` (or a mapping of its fields); the same settings
            serve 2D and 3D batches.
        out_size: output spatial size ((x, y) or (x, y, z)); ``None`` keeps the input size.
        spacing: voxel size in mm, one value per spatial axis, so rotations are rigid in
            physical space; ``None``: isotropic.
        classes: ``label`` holds class indices ``(B, 1, ...)`` in ``[0, classes)`` (softmax
            mode) instead of region channels; ``None``: region channels.

    Call with ``image`` (B, C, X, Y) or (B, C, X, Y, Z) float and optionally ``label`` region
    channels (or class indices, see ``classes``) of the same spatial shape; returns ``(image, label)``
    on the same device, label binary float (class indices: exact classes, in ``label``'s dtype). 2D batches get in-plane rotation, and flips, scaling, shear and elastic
    deformation along both axes.
    """

    def __init__(
        self,
        config: AugmentationConfig | Mapping[str, Any] | None = None,
        out_size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        classes: int | None = None,
    ) -> None:
        super().__init__()
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
            raise ValueError(f"BatchAugment classes must be an int >= 2 (class-index labels) or None, got {classes!r}")
        self.classes = classes
        self.config = AugmentationConfig.from_any(config)
        self.out_size = tuple(int(s) for s in out_size) if out_size is not None else None
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else None
        if self.out_size is not None and (len(self.out_size) not in (2, 3) or min(self.out_size) < 1):
            raise ValueError(f"BatchAugment out_size must be 2 or 3 positive sizes, got {self.out_size}")
        if self.spacing is not None and (len(self.spacing) not in (2, 3) or min(self.spacing) <= 0):
            raise ValueError(f"BatchAugment spacing must be 2 or 3 positive sizes in mm, got {self.spacing}")

    # ------------------------------------------------------------------ spatial
    def _affine(self, batch: int, out_size: Sequence[int], spacing: Sequence[float], device: torch.device) -> Draws:
        """Per-sample random maps (:class:`Draws`); random numbers only for the options that are on."""
        cfg = self.config
        dims = len(out_size)
        eye = torch.eye(dims, device=device).expand(batch, dims, dims).clone()
        linear, offset = eye, torch.zeros(batch, dims, device=device)
        moved = torch.zeros(batch, dtype=torch.bool, device=device)
        if cfg.spatial_prob > 0:
            on = (torch.rand(batch, device=device) < cfg.spatial_prob).float().view(-1, 1)
            n_angles = 3 if dims == 3 else 1
            angles = (torch.rand(batch, n_angles, device=device) * 2 - 1) * math.radians(cfg.rotate_deg) * on
            scales = 1 + (torch.rand(batch, dims, device=device) * 2 - 1) * cfg.scale * on
            factors = (torch.rand(batch, dims, dims, device=device) * 2 - 1) * cfg.shear * on.view(-1, 1, 1)
            shear = _shear_matrices(factors) if cfg.shear > 0 else eye
            turn = _rotation_matrices(angles) @ shear
            linear = turn @ torch.diag_embed(scales)
            if cfg.shift > 0:  # voxels of the output patch -> mm, turned with the rotation and shear (as MONAI)
                size = torch.tensor([float(n) for n in out_size], device=device)
                shift = (torch.rand(batch, dims, device=device) * 2 - 1) * cfg.shift * size * on
                offset = torch.einsum("bij,bj->bi", turn, shift * torch.tensor(spacing, device=device))
            moved = on.view(-1) > 0
        discrete = eye.clone()
        if cfg.flip_prob > 0:
            discrete = torch.diag_embed(torch.where(torch.rand(batch, dims, device=device) < cfg.flip_prob, -1.0, 1.0))
        if cfg.transpose_prob > 0:
            swap = torch.eye(dims, device=device)[[1, 0, *range(2, dims)]]
            discrete = torch.where((torch.rand(batch, device=device) < cfg.transpose_prob).view(-1, 1, 1), swap @ discrete, discrete)
        if cfg.rot90_prob > 0:
            quarter = torch.eye(dims, device=device)
            quarter[:2, :2] = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], device=device)  # torch.rot90 k=1, axes (x, y)
            turns = [torch.linalg.matrix_power(quarter, k) for k in range(4)]
            k = torch.randint(1, 4, (batch,), device=device) * (torch.rand(batch, device=device) < cfg.rot90_prob)
            discrete = torch.stack(turns)[k] @ discrete
        return Draws(linear, offset, discrete, moved)

    def _elastic(self, batch: int, size: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """(B, *size, D) displacement in voxels (:mod:`~brats_pipeline.data.elastic`'s), or ``None``."""
        cfg = self.config
        if cfg.elastic_prob <= 0 or (cfg.elastic_magnitude <= 0 and cfg.elastic_alpha <= 0):
            return None
        dims = len(size)
        on = (torch.rand(batch, device=device) < cfg.elastic_prob).float().view(-1, *([1] * (dims + 1)))
        if cfg.elastic_alpha > 0:
            unit = torch.rand(batch, dims, *size, device=device)
            return smooth_displacement(unit, cfg.elastic_alpha, cfg.elastic_sigma) * on
        unit = torch.rand(batch, dims, *(cfg.elastic_control_points,) * dims, device=device)
        return elastic_displacement(unit, cfg.elastic_magnitude, size) * on

    def _check_sizes(self, in_size: Sequence[int]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        dims = len(in_size)
        out_size = self.out_size or tuple(int(n) for n in in_size)
        spacing = self.spacing or (1.0,) * dims
        if len(out_size) != dims:
            raise ValueError(f"BatchAugment out_size {out_size} has {len(out_size)} axes, the batch {dims} ({tuple(in_size)})")
        if len(spacing) != dims:
            raise ValueError(f"BatchAugment spacing {spacing} has {len(spacing)} axes, the batch {dims} ({tuple(in_size)})")
        if self.config.permutes_plane and out_size[0] != out_size[1]:
            raise ValueError(f"transpose/rot90 need a square x-y plane; the output size is {out_size}")
        return out_size, spacing

    def sampling_grid(self, batch: int, in_size: Sequence[int], device: torch.device) -> torch.Tensor:
        """Normalised ``grid_sample`` grid (B, *out_size, D) mapping output voxels into the input (every sample)."""
        out_size, spacing = self._check_sizes(in_size)
        draws = self._affine(batch, out_size, spacing, device)
        return self._grid(draws, self._elastic(batch, out_size, device), in_size, out_size, spacing)

    @staticmethod
    def _grid(draws: Draws, disp: torch.Tensor | None, in_size: Sequence[int], out_size: Sequence[int],
              spacing_: Sequence[float]) -> torch.Tensor:
        spacing = torch.tensor(spacing_, device=draws.linear.device)
        mats = draws.linear @ (draws.discrete * spacing[:, None] / spacing[None, :])  # the permutation acts on voxels
        physical = centred_voxels(out_size, mats.device) * spacing
        src = torch.einsum("bij,...j->b...i", mats, physical)
        if bool(draws.offset.any()):
            src = src + draws.offset.view(-1, *([1] * len(out_size)), len(out_size))
        src = src / spacing  # back to input voxels, centred
        if disp is not None:
            src = src + disp
        return grid_from_voxels(src, in_size)

    def _resample_label(self, label: torch.Tensor, grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One sample's label through ``grid``: region channels bilinear then > 0.5; class indices one-hot,
        bilinear, then the most likely class (padding: all 0 -> class 0). Returned in ``label``'s dtype."""
        moving = label
        if self.classes is not None:
            moving = F.one_hot(label[:, 0].long(), self.classes).movedim(-1, 1)
        moved = F.grid_sample(moving.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        moved = moved.argmax(1, keepdim=True) if self.classes is not None else moved > 0.5
        return moved.to(label.dtype)

    # ---------------------------------------------------------------- intensity
    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        """Intensity transforms, **in place** on ``image`` (the tensor :meth:`forward` just made)."""
        cfg = self.config
        b, c = image.shape[:2]
        dev = image.device
        ones = (1,) * (image.ndim - 2)
        view, per_sample = (b, c, *ones), (b, 1, *ones)
        if cfg.intensity_prob > 0:
            on = torch.rand(b, device=dev) < cfg.intensity_prob
            scale = 1 + (torch.rand(view, device=dev) * 2 - 1) * cfg.intensity_scale
            shift = (torch.rand(view, device=dev) * 2 - 1) * cfg.intensity_shift
            _on_some(image, on, lambda x, i: x.mul_(scale[i]).add_(shift[i]))
        if cfg.gamma_prob > 0:
            lo, hi = cfg.gamma_range
            gamma = lo + torch.rand(view, device=dev) * (hi - lo)
            _on_some(image, torch.rand(b, device=dev) < cfg.gamma_prob, lambda x, i: _gamma(x, gamma[i]))
        if cfg.noise_prob > 0:
            std = torch.rand(per_sample, device=dev) * cfg.noise_std
            _on_some(image, torch.rand(b, device=dev) < cfg.noise_prob, lambda x, i: x.add_(torch.randn_like(x) * std[i]))
        if cfg.smooth_prob > 0:
            lo, hi = cfg.smooth_sigma
            sigma = lo + float(torch.rand(()).item()) * (hi - lo)
            _on_some(image, torch.rand(b, device=dev) < cfg.smooth_prob, lambda x, i: _gaussian_smooth(x, sigma))
        return image

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if image.ndim not in (4, 5):
            raise ValueError(f"BatchAugment expects image (B, C, X, Y) or (B, C, X, Y, Z), got shape {tuple(image.shape)}")
        if label is not None and (label.ndim != image.ndim or label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]):
            raise ValueError(f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}")
        if label is not None and self.classes is not None and (label.shape[1] != 1 or int(label.max()) >= self.classes):
            raise ValueError(f"BatchAugment(classes={self.classes}) expects class indices (B, 1, ...) in [0, {self.classes - 1}], "
                             f"got shape {tuple(label.shape)} with values up to {int(label.max())}")
        in_size = tuple(image.shape[2:])
        out_size, spacing = self._check_sizes(in_size)
        batch, device = image.shape[0], image.device
        draws = self._affine(batch, out_size, spacing, device)
        disp = self._elastic(batch, out_size, device)
        warped = draws.moved.clone()
        if disp is not None:
            warped |= disp.flatten(1).abs().amax(1) > 0
        margins = [n - m for n, m in zip(in_size, out_size)]
        if any(m < 0 or m % 2 for m in margins):  # the centre window is not on the input's voxels
            warped[:] = True
        out = image.new_empty((batch, image.shape[1], *out_size))
        out_label = None if label is None else label.new_empty((batch, label.shape[1], *out_size))
        # samples with a rotation, scaling, shear, shift or elastic field: one bilinear resampling each,
        # sample by sample from a view into its slot of the output (no gathered copy of the moved samples)
        index = warped.nonzero().flatten()
        if index.numel():
            grid = self._grid(Draws(*(t[index] for t in draws)), None if disp is None else disp[index],
                              in_size, out_size, spacing).to(image.dtype)
            for j, i in enumerate(index.tolist()):
                here = grid[j : j + 1]
                out[i : i + 1] = F.grid_sample(image[i : i + 1], here, mode="bilinear", padding_mode="zeros", align_corners=True)
                if label is not None:
                    out_label[i : i + 1] = self._resample_label(label[i : i + 1], here, image.dtype)
        # the others (flips, transpose, rot90 at most): the centre window, permuted, copied exactly
        # (what the grid would sample)
        window = (slice(None), *(slice(m // 2, m // 2 + n) for m, n in zip(margins, out_size)))
        discrete = draws.discrete.cpu()
        for i in (~warped).nonzero().flatten().tolist():
            out[i].copy_(_permute(image[i][window], discrete[i]))
            if label is not None:
                out_label[i].copy_(_permute(label[i][window], discrete[i]))
        return self._intensity(out), out_label


def _on_some(image: torch.Tensor, on: torch.Tensor, fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
    """``image[i] = fn(image[i], i)`` for each sample ``i`` where ``on`` (B,) holds, in place; no work on the others.

    ``fn`` gets a (1, C, ...) view of the sample and the slice ``i:i+1`` (to pick its drawn
    parameters); it may change the view in place or return a new tensor, which is copied in.
    """
    for i in on.nonzero().flatten().tolist():
        part = image[i : i + 1]
        result = fn(part, slice(i, i + 1))
        if result.data_ptr() != part.data_ptr():
            part.copy_(result)
    return image


def _gamma(image: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Gamma on each channel's [min, max] range, which it keeps (in place)."""
    view = (*image.shape[:2], *([1] * (image.ndim - 2)))
    flat = image.flatten(2)
    vmin, vmax = flat.amin(-1), flat.amax(-1)  # (torch.aminmax over a dim is ~15x slower on CPU)
    vmin, vrange = vmin.view(view), (vmax.view(view) - vmin.view(view)).clamp_min(1e-6)
    return image.sub_(vmin).div_(vrange).clamp_(0, 1).pow_(gamma).mul_(vrange).add_(vmin)


def _gaussian_smooth(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (sigma in voxels) of (B, C, X, Y[, Z]), channel by channel."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c, dims = image.shape[1], image.ndim - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    out = image
    for dim in range(dims):
        shape = [1] * (dims + 2)
        shape[2 + dim] = -1
        weight = kernel.view(shape).expand(c, *kernel.view(shape).shape[1:]).contiguous()
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - dim)] = pad[2 * (dims - 1 - dim) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=c)
    return out
