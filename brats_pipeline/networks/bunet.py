"""BU-Net: U-Net with Residual Extended Skip (RES) blocks and a Wide-Context (WC) block.

Rehman, Cho, Kim, Chong. *BU-Net: Brain Tumor Segmentation Using Modified U-Net
Architecture.* Electronics 9(12):2203, 2020. doi:10.3390/electronics9122203.

The paper is 2D; its factorised N x 1 / 1 x N convolutions are generalised here to any
dimension as one 1-D convolution per axis (3D: k x 1 x 1, 1 x k x 1, 1 x 1 x k), so the same
module builds the 2D network of the paper and a 3D one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers.factories import Act, Norm
from torch import nn

from brats_pipeline.networks.blocks import (
    ACT,
    NORM,
    check_features,
    conv_norm_act,
    double_conv,
    factorised_conv,
    max_pool,
    pointwise_conv,
    up_conv,
)


def _norm_act(spatial_dims: int, channels: int, norm: str | tuple, act: str | tuple) -> nn.Sequential:
    norm_name, norm_args = (norm, {}) if isinstance(norm, str) else norm
    act_name, act_args = (act, {}) if isinstance(act, str) else act
    return nn.Sequential(
        Norm[norm_name, spatial_dims](channels, **norm_args),
        Act[act_name](**act_args),
    )


def _check_kernel(size: int, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"{what} must be a positive odd int, got {size!r}")
    return size


class ResidualExtendedSkip(nn.Module):
    """RES block: widens the receptive field of a skip connection.

    ``s = x + sum_k chain_k(x)`` where each ``chain_k`` is a factorised k x k[x k] convolution
    (k x 1 then 1 x k in 2D; k x 1 x 1, 1 x k x 1, 1 x 1 x k in 3D), one per ``k`` in
    ``kernel_sizes``, in parallel; then norm -> activation, and (3x3 conv -> norm -> act),
    (3x3 conv -> norm -> act), (1x1 conv -> norm -> act). Channels are kept.

    Args:
        spatial_dims: 2 or 3.
        channels: input and output channels.
        kernel_sizes: odd sizes of the parallel factorised convolutions.
        norm: normalisation.
        act: activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        kernel_sizes: Sequence[int] = (3, 5),
        norm: str | tuple = NORM,
        act: str | tuple = ACT,
    ) -> None:
        super().__init__()
        if not kernel_sizes:
            raise ValueError("RES block needs at least one kernel size")
        axes = tuple(range(spatial_dims))
        self.paths = nn.ModuleList(
            factorised_conv(spatial_dims, channels, channels, _check_kernel(k, "RES kernel size"), axes)
            for k in kernel_sizes
        )
        self.merge = _norm_act(spatial_dims, channels, norm, act)
        self.convs = nn.Sequential(
            conv_norm_act(spatial_dims, channels, channels, 3, norm, act),
            conv_norm_act(spatial_dims, channels, channels, 3, norm, act),
            conv_norm_act(spatial_dims, channels, channels, 1, norm, act),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape as ``x``."""
        s = x
        for path in self.paths:
            s = s + path(x)
        return self.convs(self.merge(s))


class WideContext(nn.Module):
    """WC block: large receptive field at the bottleneck at low cost.

    Two parallel factorised k x k[x k] convolutions visiting the axes in opposite orders
    (2D: k x 1 -> 1 x k and 1 x k -> k x 1; 3D: k x 1 x 1 -> 1 x k x 1 -> 1 x 1 x k and
    1 x 1 x k -> 1 x k x 1 -> k x 1 x 1), summed, then norm -> activation.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd length of the 1-D convolutions.
        norm: normalisation.
        act: activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 7,
        norm: str | tuple = NORM,
        act: str | tuple = ACT,
    ) -> None:
        super().__init__()
        k = _check_kernel(kernel_size, "WC kernel_size")
        axes = tuple(range(spatial_dims))
        self.forward_path = factorised_conv(spatial_dims, in_channels, out_channels, k, axes)
        self.reverse_path = factorised_conv(spatial_dims, in_channels, out_channels, k, axes[::-1])
        self.merge = _norm_act(spatial_dims, out_channels, norm, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, out_channels, *spatial)``."""
        return self.merge(self.forward_path(x) + self.reverse_path(x))


class BUNet(nn.Module):
    """BU-Net (Rehman et al., Electronics 2020): U-Net + RES skips + WC bottleneck.

    Architecture (``features = (f0, ..., fL)``, default ``(16, 32, 64, 128, 256)``):

    * encoder level ``i < L``: (3x3 conv -> norm -> ReLU) x 2 to ``f_i``, 2x max-pool;
    * bottleneck: (3x3 conv -> norm -> ReLU) x 2 to ``f_L``, then a :class:`WideContext`
      block;
    * each skip passes through a :class:`ResidualExtendedSkip` block before the decoder;
    * decoder level ``i``: 2x transposed conv to ``f_i``, concatenated with the RES output,
      (3x3 conv -> norm -> ReLU) x 2;
    * 1x1 conv to the logits.

    The paper trains it with weighted cross-entropy + Dice (``build_loss("wce_dice")``).
    Input sizes must be multiples of ``2**L`` (16).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        features: channels per level, bottleneck last.
        res_kernel_sizes: kernel sizes of the parallel factorised paths of the RES blocks.
        wc_kernel_size: kernel size of the WC block.
        norm: normalisation.
        act: activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        res_kernel_sizes: Sequence[int] = (3, 5),
        wc_kernel_size: int = 7,
        norm: str | tuple = NORM,
        act: str | tuple = ACT,
    ) -> None:
        super().__init__()
        feats = check_features(features)
        levels = len(feats) - 1
        self.encoders = nn.ModuleList()
        channels = in_channels
        for f in feats[:-1]:
            self.encoders.append(double_conv(spatial_dims, channels, f, norm=norm, act=act))
            channels = f
        self.pool = max_pool(spatial_dims)
        self.bottleneck = nn.Sequential(
            double_conv(spatial_dims, feats[-2], feats[-1], norm=norm, act=act),
            WideContext(spatial_dims, feats[-1], feats[-1], wc_kernel_size, norm=norm, act=act),
        )
        self.skips = nn.ModuleList(
            ResidualExtendedSkip(spatial_dims, feats[i], res_kernel_sizes, norm=norm, act=act)
            for i in range(levels)
        )
        self.ups = nn.ModuleList(up_conv(spatial_dims, feats[i + 1], feats[i]) for i in range(levels))
        self.decoders = nn.ModuleList(
            double_conv(spatial_dims, 2 * feats[i], feats[i], norm=norm, act=act) for i in range(levels)
        )
        self.head = pointwise_conv(spatial_dims, feats[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for ``x`` of shape ``(B, in_channels, *spatial)``."""
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        # deepest level first; TorchScript indexes a ModuleList only in a loop over it, hence
        # the level test inside
        for level in range(len(skips) - 1, -1, -1):
            for i, (up, skip, decoder) in enumerate(zip(self.ups, self.skips, self.decoders)):
                if i == level:
                    x = decoder(torch.cat([up(x), skip(skips[i])], dim=1))
        return self.head(x)


def bunet(in_channels: int, out_channels: int, spatial_dims: int = 3, **kw: Any) -> BUNet:
    """Registry factory for :class:`BUNet` (``kw``: its keyword arguments)."""
    return BUNet(spatial_dims, in_channels, out_channels, **kw)
