"""Small building blocks shared by the hand-written networks (2D or 3D by ``spatial_dims``)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from torch import nn

#: Default normalisation and activation of the hand-written 3D networks (MONAI factory names).
NORM: tuple = ("instance", {"affine": True})
ACT: tuple = ("relu", {"inplace": True})


def conv_norm_act(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    norm: str | tuple | None = NORM,
    act: str | tuple | None = ACT,
) -> nn.Module:
    """Same-padded convolution -> norm -> activation (no bias: the norm has one)."""
    return Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        norm=norm,
        act=act,
        bias=norm is None,
    )


def double_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    norm: str | tuple | None = NORM,
    act: str | tuple | None = ACT,
) -> nn.Sequential:
    """The U-Net level: (3x3[x3] conv -> norm -> activation) twice."""
    return nn.Sequential(
        conv_norm_act(spatial_dims, in_channels, out_channels, norm=norm, act=act),
        conv_norm_act(spatial_dims, out_channels, out_channels, norm=norm, act=act),
    )


def max_pool(spatial_dims: int) -> nn.Module:
    """2x[2x]2 max-pooling (halves every spatial size)."""
    return Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)


def up_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """2x[2x]2 transposed convolution with stride 2 (doubles every spatial size)."""
    return Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)


def pointwise_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """1x1[x1] convolution with bias (the logits head)."""
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)


def axis_kernel(spatial_dims: int, axis: int, size: int) -> tuple[int, ...]:
    """Kernel of ``size`` along ``axis`` and 1 elsewhere: ``axis_kernel(3, 1, 5) == (1, 5, 1)``."""
    return tuple(size if d == axis else 1 for d in range(spatial_dims))


def factorised_conv(
    spatial_dims: int, in_channels: int, out_channels: int, size: int, axes: Sequence[int]
) -> nn.Sequential:
    """A k x k[x k] convolution factorised into one 1-D convolution per axis, in ``axes`` order.

    2D ``axes=(0, 1)`` is the k x 1 -> 1 x k pair; 3D ``axes=(0, 1, 2)`` is
    k x 1 x 1 -> 1 x k x 1 -> 1 x 1 x k. Plain convolutions (no norm or activation in between),
    so the chain is a separable linear filter; the first maps ``in_channels`` to ``out_channels``.
    """
    layers = []
    channels = in_channels
    for axis in axes:
        layers.append(
            Convolution(
                spatial_dims,
                channels,
                out_channels,
                kernel_size=axis_kernel(spatial_dims, axis, size),
                conv_only=True,
            )
        )
        channels = out_channels
    return nn.Sequential(*layers)


def check_features(features: Sequence[int], name: str = "features", min_levels: int = 2) -> tuple[int, ...]:
    """Validate a per-level channel list: at least ``min_levels`` positive ints."""
    feats = tuple(features)
    if len(feats) < min_levels or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feats):
        raise ValueError(f"{name} must be at least {min_levels} positive ints, got {features!r}")
    return feats
