"""Spatial-attention U-Net: a 3D U-Net whose encoder levels are gated by CBAM spatial attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from brats_pipeline.networks.blocks import (
    ACT,
    NORM,
    check_features,
    double_conv,
    max_pool,
    pointwise_conv,
    up_conv,
)


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018): where in space to look.

    Per voxel, the channel-wise mean and the channel-wise max of the features are stacked
    into a 2-channel map, convolved (``kernel_size``, same padding) to one channel and
    squashed by a sigmoid into an attention map ``a`` in [0, 1]. The output is the features
    multiplied by ``a`` (broadcast over channels), and ``a`` itself.

    Args:
        spatial_dims: 2 or 3.
        kernel_size: odd size of the attention convolution (7 in CBAM).
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, int)
            or kernel_size < 1
            or kernel_size % 2 == 0
        ):
            raise ValueError(f"attention kernel_size must be a positive odd int, got {kernel_size!r}")
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x * a, a)`` with ``a`` of shape ``(B, 1, *spatial)``."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        attention = torch.sigmoid(self.conv(pooled))
        return x * attention, attention


class SpatialAttentionUNet(nn.Module):
    """U-Net with a spatial attention gate at every encoder level.

    Architecture (``features = (f0, ..., fL)``, default ``(16, 32, 64, 128, 256)``):

    * encoder level ``i < L``: (conv -> norm -> ReLU) x 2 to ``f_i`` channels, then a
      :class:`SpatialAttention` gate (mean- and max-pooled over channels, concatenated,
      convolved, sigmoid) multiplies the features by the attention map ``a_i``; the gated
      features are the skip and go on, max-pooled 2x, to the next level;
    * bottleneck: (conv -> norm -> ReLU) x 2 to ``f_L`` channels;
    * decoder level ``i``: 2x transposed convolution to ``f_i`` channels, concatenated with
      the gated skip **and the attention map** ``a_i`` (``2 f_i + 1`` channels), then
      (conv -> norm -> ReLU) x 2;
    * a 1x1 convolution gives the logits.

    This is the spatial-attention 3D U-Net of the seed paper: the U-Net of Çiçek et al.
    (MICCAI 2016) with the spatial attention module of CBAM (Woo et al., ECCV 2018) on the
    encoder, its maps re-used by the decoder. Input sizes must be multiples of ``2**L`` (16).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        features: channels per level, bottleneck last.
        attention_kernel_size: odd kernel size of the attention convolutions.
        norm: normalisation (MONAI factory name or ``(name, args)``).
        act: activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        attention_kernel_size: int = 7,
        norm: str | tuple = NORM,
        act: str | tuple = ACT,
    ) -> None:
        super().__init__()
        feats = check_features(features)
        levels = len(feats) - 1
        self.encoders = nn.ModuleList()
        self.attentions = nn.ModuleList()
        channels = in_channels
        for f in feats[:-1]:
            self.encoders.append(double_conv(spatial_dims, channels, f, norm=norm, act=act))
            self.attentions.append(SpatialAttention(spatial_dims, attention_kernel_size))
            channels = f
        self.pool = max_pool(spatial_dims)
        self.bottleneck = double_conv(spatial_dims, feats[-2], feats[-1], norm=norm, act=act)
        self.ups = nn.ModuleList(up_conv(spatial_dims, feats[i + 1], feats[i]) for i in range(levels))
        self.decoders = nn.ModuleList(
            double_conv(spatial_dims, 2 * feats[i] + 1, feats[i], norm=norm, act=act) for i in range(levels)
        )
        self.head = pointwise_conv(spatial_dims, feats[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for ``x`` of shape ``(B, in_channels, *spatial)``."""
        skips: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        for encoder, attention in zip(self.encoders, self.attentions, strict=True):
            x, a = attention(encoder(x))
            skips.append(x)
            maps.append(a)
            x = self.pool(x)
        x = self.bottleneck(x)
        # deepest level first; TorchScript indexes a ModuleList only in a loop over it, hence
        # the level test inside (4 levels: 16 integer comparisons)
        for level in range(len(skips) - 1, -1, -1):
            for i, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
                if i == level:
                    x = decoder(torch.cat([up(x), skips[i], maps[i]], dim=1))
        return self.head(x)


def spatial_attention_unet(
    in_channels: int, out_channels: int, spatial_dims: int = 3, **kw: Any
) -> SpatialAttentionUNet:
    """Registry factory for :class:`SpatialAttentionUNet` (``kw``: its keyword arguments)."""
    return SpatialAttentionUNet(spatial_dims, in_channels, out_channels, **kw)
