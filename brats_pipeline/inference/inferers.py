"""The one place an inferer is built: 3D sliding windows, 2D slice by slice, 2.5D slabs.

Every inferer takes whole volumes ``(B, C, X, Y, Z)`` and a network, and returns region
logits ``(B, R, X, Y, Z)`` on the same grid, whatever the network's dimensionality:

* 3D network: MONAI ``SlidingWindowInferer`` with ``roi_size`` (x, y, z) windows;
* 2D network: MONAI ``SliceInferer``: every slice along ``slice_axis`` (0 = x, 1 = y, 2 = z)
  goes through the network on its own (tiled by ``roi_size`` in-plane windows when the slice is
  larger), and the outputs are stacked back into the volume;
* 2.5D network (``context = k > 0``): :class:`ContextSliceInferer`: each slice with its ``k``
  neighbours on each side as channels (:func:`brats_pipeline.data.slices.stack_context`, edge
  slices repeated), then as 2D.

Used by :class:`~brats_pipeline.module.BratsSegmentationModule` (validation) and
:class:`~brats_pipeline.inference.Predictor`; a MONAI bundle can name :func:`build_inferer` as
its ``inferer`` (``"_target_": "brats_pipeline.inference.inferers.build_inferer"``).

What the inferer needs from the networks is read off them here too: :func:`shared_spatial_dims`
(the dimensionality of an ensemble) and :func:`slice_context` (a 2D network's 2.5D neighbours, from
its input channels); :func:`inferer_settings` describes any inferer, built here or injected (manifests,
resume keys).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from torch import nn

from brats_pipeline.constants import Task
from brats_pipeline.data.slices import check_context, check_slice_axis, in_plane, stack_context
from brats_pipeline.inference.outputs import average_probabilities, tta_flips

BLEND_MODES = ("gaussian", "constant")


class ContextSliceInferer(SliceInferer):
    """2.5D inference: a 2D network fed each slice with ``context`` neighbours each side as channels.

    The volume's ``C`` channels become ``C * (2 * context + 1)`` (channel ``c * (2k + 1) + j`` is
    modality ``c`` of slice ``i - k + j``, edge slices repeated; the order the training slabs
    have), then MONAI's :class:`~monai.inferers.SliceInferer` runs the network slice by slice.

    Args:
        spatial_dim: the slice axis, 0, 1 or 2 (x, y, z).
        context: neighbours on each side (at least 1; 0 is plain ``SliceInferer``).
        *args: ``SliceInferer`` / ``SlidingWindowInferer`` arguments (``roi_size`` of 2 in-plane sizes, ...).
        **kwargs: as ``*args``.
    """

    def __init__(self, spatial_dim: int = 2, context: int = 1, *args: Any, **kwargs: Any) -> None:
        if check_context(context) < 1:
            raise ValueError(f"ContextSliceInferer needs context >= 1, got {context!r}; use SliceInferer for 2D")
        super().__init__(check_slice_axis(spatial_dim), *args, **kwargs)
        self.context = context

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        """Logits ``(B, R, X, Y, Z)`` for volumes ``inputs`` ``(B, C, X, Y, Z)``."""
        plain = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        return super().__call__(stack_context(plain, self.spatial_dim, self.context), network, *args, **kwargs)


class MirrorInferer(Inferer):
    """Test-time mirroring as an inferer: the mean probability over the volume and its mirror images.

    ``inferer`` runs on the volume and on every combination of mirrors along ``mirror_axes``
    (spatial axes, 0 = x; each output mirrored back); the probabilities (``activation``: sigmoid
    or softmax) are averaged as :class:`~brats_pipeline.inference.Predictor`'s ``tta_axes`` average
    them (:func:`~brats_pipeline.inference.outputs.average_probabilities`, one implementation), and
    returned as logits of that mean (``logit(p)``; softmax: ``log p``), so a bundle's
    ``postprocessing`` (``Activationsd``) and the ``Predictor`` it is injected into both see the
    averaged probabilities, and MONAI Label, ``monai.bundle run`` and ``brats-infer`` agree. Window
    settings (``roi_size``, ``spatial_dim``, ``context``, ...) are the wrapped inferer's.

    Args:
        inferer: the inferer to mirror (e.g. :func:`build_inferer`'s).
        mirror_axes: spatial axes to mirror (e.g. ``[0]``: left-right for RAS or the LGG volumes).
        activation: ``sigmoid`` (region channels) or ``softmax`` (classes).
    """

    def __init__(self, inferer: Callable[..., Any], mirror_axes: Sequence[int] = (0,), activation: str = "sigmoid") -> None:
        super().__init__()
        axes = tuple(int(a) for a in mirror_axes)
        if not axes or len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
            raise ValueError(f"mirror_axes must be distinct spatial axes among 0 (x), 1 (y), 2 (z), got {tuple(mirror_axes)}")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}")
        self.inferer, self.mirror_axes, self.activation = inferer, axes, activation

    def __getattr__(self, name: str) -> Any:  # window settings: the wrapped inferer's
        if name in ("inferer", "mirror_axes", "activation") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        def run(_: int, flip: tuple[int, ...]) -> torch.Tensor:
            x = inputs.flip(flip) if flip else inputs
            out = self.inferer(x, network, *args, **kwargs)
            return (out.flip(flip) if flip else out).float()

        mean = average_probabilities(run, 1, tta_flips(self.mirror_axes), self.activation)
        if self.activation == "softmax":
            return torch.log(mean)
        return torch.logit(mean)


def build_inferer(
    spatial_dims: int = 3,
    roi_size: Sequence[int] = (128, 128, 128),
    sw_batch_size: int = 4,
    overlap: float = 0.5,
    mode: str = "gaussian",
    slice_axis: int = 2,
    context: int = 0,
    cache_roi_weight_map: bool = False,
) -> Inferer:
    """The inferer for a network of ``spatial_dims`` over whole volumes ``(B, C, X, Y, Z)``.

    Args:
        spatial_dims: the network's: 3 (volumes) or 2 (slices; 2.5D with ``context > 0``).
        roi_size: window size in voxels: (x, y, z) for 3D; for 2D the two in-plane sizes (in
            axis order), or (x, y, z) of which the slice axis' entry is ignored.
        sw_batch_size: windows (for 2D: slices, or in-plane tiles) per forward pass.
        overlap: overlap fraction of neighbouring windows, in ``[0, 1)`` (in-plane for 2D).
        mode: blending of overlapping windows, ``gaussian`` or ``constant``.
        slice_axis: 2D only: the axis slices are taken across, 0, 1 or 2 (x, y, z).
        context: 2D only: neighbouring slices on each side stacked as channels (2.5D).
        cache_roi_weight_map: 3D only: compute the blending weights once (MONAI option).

    Returns:
        ``SlidingWindowInferer`` (3D), ``SliceInferer`` (2D) or :class:`ContextSliceInferer` (2.5D).

    Raises:
        ValueError: a bad value, named (e.g. ``context`` with a 3D network). This is the one check of
            the window settings: :class:`~brats_pipeline.inference.Predictor` (its ``blend_mode`` is
            ``mode`` here) and the training module build their inferers here.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if isinstance(sw_batch_size, bool) or int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size (windows per forward pass) must be at least 1, got {sw_batch_size!r}")
    if not 0 <= float(overlap) < 1:
        raise ValueError(f"overlap (of neighbouring windows) must be in [0, 1), got {overlap}")
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blend mode {mode!r} (blend_mode); choose one of {BLEND_MODES}")
    check_slice_axis(slice_axis)
    check_context(context)
    common = {"sw_batch_size": int(sw_batch_size), "overlap": float(overlap), "mode": mode}
    if spatial_dims == 3:
        roi = tuple(int(s) for s in roi_size)
        if len(roi) != 3 or min(roi) < 1:
            raise ValueError(f"roi_size must be three positive sizes (x, y, z) for a 3D network, got {tuple(roi_size)}")
        if context:
            raise ValueError(f"context={context} (2.5D slabs) needs a 2D network; this one is 3D")
        return SlidingWindowInferer(roi_size=roi, cache_roi_weight_map=cache_roi_weight_map, **common)
    roi = in_plane(roi_size, slice_axis, "roi_size")
    if context:
        return ContextSliceInferer(slice_axis, context, roi_size=roi, **common)
    return SliceInferer(spatial_dim=slice_axis, roi_size=roi, **common)


#: inferer attributes that decide what it computes (MONAI ``SlidingWindowInferer``/``SliceInferer`` and ours)
INFERER_FIELDS = ("roi_size", "sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval",
                  "spatial_dim", "context", "with_coord", "mirror_axes")


def inferer_settings(inferer: Any) -> dict[str, Any]:
    """What an inferer computes with, JSON-friendly: ``class`` and those of :data:`INFERER_FIELDS` it has.

    Works on any inferer, built by :func:`build_inferer` or injected (a bundle's, any MONAI
    ``Inferer``, a plain function: its qualified name), so two inferers that differ in a window
    setting describe differently (the resume key of :mod:`~brats_pipeline.inference.batch`).
    """
    import functools

    described = inferer.func if isinstance(inferer, functools.partial) else inferer
    if isinstance(described, Inferer) or not hasattr(described, "__qualname__"):  # an object: its class
        described = type(described)
    settings: dict[str, Any] = {"class": f"{described.__module__}.{described.__qualname__}"}
    if isinstance(inferer, functools.partial):  # MONAI's "_mode_": "callable"
        settings["arguments"] = _plain({**dict(enumerate(inferer.args)), **inferer.keywords})
    for field in INFERER_FIELDS:
        if hasattr(inferer, field):
            settings[field] = _plain(getattr(inferer, field))
    return settings


def _plain(value: Any) -> Any:
    """``value`` as JSON (enums by value, sequences as lists, scalars as numbers, other objects as text)."""
    from enum import Enum

    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def shared_spatial_dims(networks: Sequence[nn.Module], spatial_dims: int | None) -> int:
    """The dimensionality shared by ``networks`` (read off their convolutions unless given)."""
    from brats_pipeline.networks import spatial_dims_of

    if spatial_dims is not None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        return int(spatial_dims)
    dims = {spatial_dims_of(n, default=0) for n in networks} - {0}
    if len(dims) > 1:
        raise ValueError(f"ensemble members must share one dimensionality, got {sorted(dims)}D networks")
    return dims.pop() if dims else 3


def slice_context(network: nn.Module, task: Task, context: int | None) -> int:
    """2.5D neighbours per side of a 2D network: given, or from its input channels (``modalities * (2k + 1)``)."""
    from brats_pipeline.networks import input_channels_of

    n = len(task.modalities)
    channels = input_channels_of(network)
    if context is None:
        if channels is None or channels == n:
            return 0
        if channels % n or (channels // n) % 2 == 0:
            raise ValueError(
                f"{type(network).__name__} takes {channels} input channels; task {task.name} has {n} modalities, "
                f"so a 2D network needs {n} (2D) or {n} x (2k + 1) (2.5D with k neighbours each side)"
            )
        return (channels // n - 1) // 2
    if channels is not None and channels != n * (2 * int(context) + 1):
        raise ValueError(
            f"context={context} feeds {n * (2 * int(context) + 1)} channels ({n} modalities x {2 * int(context) + 1} slices), "
            f"but {type(network).__name__} takes {channels}"
        )
    return int(context)


__all__ = ["BLEND_MODES", "INFERER_FIELDS", "ContextSliceInferer", "build_inferer", "inferer_settings", "shared_spatial_dims",
           "slice_context"]
