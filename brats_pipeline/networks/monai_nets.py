"""Factories for the networks MONAI implements, with the configurations used in this project.

Each factory takes ``(in_channels, out_channels, spatial_dims, **kw)``; ``kw`` overrides the
defaults below and is passed to the MONAI class unchanged, so every MONAI option is reachable.
All return logits ``(B, out_channels, *spatial)``. This module is imported only when one of
these networks is built (see :data:`brats_pipeline.networks.NETWORKS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import AttentionUnet, BasicUNet, SegResNet, SwinUNETR, UNet
from torch import nn


def unet3d(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    act: str | tuple = ("relu", {"inplace": True}),
    norm: str | tuple = ("instance", {"affine": True}),
    **kw: Any,
) -> nn.Module:
    """3D U-Net (Çiçek et al., MICCAI 2016, arXiv:1606.06650) as MONAI ``BasicUNet``.

    ``BasicUNet`` is the closest MONAI class to the paper: every level is two
    (3x3x3 conv -> norm -> ReLU) layers; the encoder goes down by 2x2x2 max-pooling four
    times; the decoder goes up by 2x2x2 transposed convolution, concatenates the encoder
    features of the same level (skip connection) and applies two conv-norm-ReLU layers; a
    1x1x1 convolution gives the logits. Differences from the paper: instance norm instead
    of batch norm (batch size 1-2 is usual for BraTS crops) and padded convolutions (output
    size equals input size). Input sizes must be multiples of 16.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        spatial_dims: 2 or 3.
        features: channels of the 5 encoder levels and of the last decoder level.
        act: activation (MONAI name or ``(name, args)``).
        norm: normalisation (MONAI name or ``(name, args)``).
        **kw: other ``monai.networks.nets.BasicUNet`` arguments (``dropout``, ``upsample``).
    """
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        act=act,
        norm=norm,
        **kw,
    )


def attention_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    **kw: Any,
) -> nn.Module:
    """Attention U-Net (Oktay et al., MIDL 2018, arXiv:1804.03999) as MONAI ``AttentionUnet``.

    A U-Net whose skip connections pass through additive attention gates: the gate takes the
    skip features and the coarser decoder features, adds their 1x1 projections, applies
    ReLU -> 1x1 conv -> sigmoid to get a spatial attention coefficient in [0, 1], and
    multiplies the skip features by it before concatenation. Conv blocks are
    (3x3 conv -> batch norm -> ReLU) x 2; downsampling by strided convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        spatial_dims: 2 or 3.
        channels: channels per level.
        strides: downsampling stride between levels (``len(channels) - 1`` entries).
        **kw: other ``monai.networks.nets.AttentionUnet`` arguments (``dropout``, ``kernel_size``).
    """
    return AttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        **kw,
    )


def residual_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str | tuple = "instance",
    **kw: Any,
) -> nn.Module:
    """Residual U-Net (dResU-Net style; Raza et al., BSPC 2023) as MONAI ``UNet`` with residual units.

    MONAI's ``UNet`` with ``num_res_units > 0`` (Kerfoot et al., STACOM 2018) replaces each
    encoder and decoder block by a residual unit: ``num_res_units`` (conv -> norm -> PReLU)
    layers whose output is added to the block input (projected by a strided 1x1 or 3x3
    convolution when shape changes). Downsampling is by strided convolution, upsampling by
    transposed convolution, skips are concatenated.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        spatial_dims: 2 or 3.
        channels: channels per level.
        strides: stride between levels (``len(channels) - 1`` entries).
        num_res_units: convolutions per residual unit (0 gives a plain U-Net).
        norm: normalisation.
        **kw: other ``monai.networks.nets.UNet`` arguments (``act``, ``dropout``, ``kernel_size``).
    """
    if num_res_units < 1:
        raise ValueError(f"residual_unet needs num_res_units >= 1, got {num_res_units!r}")
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        **kw,
    )


def segresnet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    init_filters: int = 16,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = 0.2,
    **kw: Any,
) -> nn.Module:
    """SegResNet (Myronenko, BrainLes 2018, arXiv:1810.11654) as MONAI ``SegResNet``.

    The defaults are the MONAI model-zoo ``brats_mri_segmentation`` bundle: an encoder of
    ResNet-like pre-activation blocks (GroupNorm -> ReLU -> 3x3x3 conv, twice, plus identity)
    with (1, 2, 2, 4) blocks per level and strided-conv downsampling, and a lighter decoder
    (1, 1, 1 blocks) with trilinear upsampling and additive skips. The paper's VAE
    regularisation branch is not included (``SegResNetVAE`` has it). Input sizes must be
    multiples of 8.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        spatial_dims: 2 or 3.
        init_filters: channels of the first level (doubled per level; a multiple of 8 for GroupNorm).
        blocks_down: residual blocks per encoder level.
        blocks_up: residual blocks per decoder level.
        dropout_prob: dropout after the first convolution.
        **kw: other ``monai.networks.nets.SegResNet`` arguments.
    """
    return SegResNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        dropout_prob=dropout_prob,
        **kw,
    )


class SizeCheckedSwinUNETR(SwinUNETR):
    """MONAI ``SwinUNETR`` that rejects input sizes it cannot process with a clear message.

    Same parameters and state-dict keys as ``monai.networks.nets.SwinUNETR`` (MONAI or
    model-zoo weights load unchanged). Spatial sizes must be multiples of 32 (patch size 2,
    then four 2x patch mergings) and at least 64: at 32 the deepest feature map is a single
    voxel, which instance normalisation cannot normalise.
    """

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for ``x_in`` of shape ``(B, in_channels, *spatial)``."""
        spatial = tuple(x_in.shape[2:])
        if any(s % 32 or s < 64 for s in spatial):
            raise ValueError(
                f"swin_unetr needs every spatial size to be a multiple of 32 and at least 64, got {spatial}"
            )
        return super().forward(x_in)


def swin_unetr(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 3,
    feature_size: int = 48,
    **kw: Any,
) -> nn.Module:
    """Swin UNETR (Hatamizadeh et al., BrainLes 2021, arXiv:2201.01266) as MONAI ``SwinUNETR``.

    Encoder: the image is cut into 2x2x2 patches embedded to ``feature_size`` channels, then
    four stages of Swin transformer blocks (window self-attention alternating with shifted
    windows, window 7) each followed by patch merging (2x downsampling, channels x2). Decoder:
    residual conv blocks on the embedded input and on each stage's output are joined by
    transposed-conv upsampling and concatenation, like a U-Net, ending with a 1x1 conv.
    ``feature_size=48`` is the BraTS 2021 paper's configuration. Input sizes must be
    multiples of 32 and at least 64 (checked, see :class:`SizeCheckedSwinUNETR`).

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        spatial_dims: 2 or 3.
        feature_size: embedding channels (a multiple of 12).
        **kw: other ``monai.networks.nets.SwinUNETR`` arguments (``depths``, ``num_heads``,
            ``use_checkpoint``, ``use_v2``, ``drop_rate``).
    """
    if feature_size < 12 or feature_size % 12:
        raise ValueError(f"swin_unetr feature_size must be a positive multiple of 12, got {feature_size!r}")
    return SizeCheckedSwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        spatial_dims=spatial_dims,
        **kw,
    )


def _check_2d(name: str, spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ValueError(
            f"{name} is 2D only (a slice network), got spatial_dims={spatial_dims!r}; "
            "for volumes use unet3d, residual_unet, segresnet or the 3D build of bunet"
        )


def unet2d(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 1,
    norm: str | tuple = "instance",
    downsample: int = 1,
    **kw: Any,
) -> nn.Module:
    """A light 2D slice U-Net as MONAI ``UNet`` (Kerfoot et al., STACOM 2018); 2D only.

    Five levels (16-32-64-128-256 channels) with strided-convolution downsampling from the first
    layer, transposed-convolution upsampling, skip concatenation and one residual unit
    ((conv -> norm -> PReLU) plus a shortcut) per block. It keeps no full-resolution
    (conv-norm-act) x 2 block, so a 256 x 256 slice costs a few times less compute than the
    Buda et al. U-Net (``unet2d_buda``) and runs several times the slices per second of MONAI's
    tutorial 2D UNet (32-256, 2 residual units) on a CPU. Input sizes must be multiples of 16.

    Args:
        in_channels: input channels (modalities, times ``2 * context + 1`` for 2.5D slabs).
        out_channels: output channels (logits).
        spatial_dims: must be 2.
        channels: channels per level.
        strides: stride between levels (``len(channels) - 1`` entries).
        num_res_units: convolutions per residual unit (0: plain conv blocks).
        norm: normalisation (MONAI name or ``(name, args)``; e.g. ``batch``).
        downsample: compute at 1/``downsample`` of the input resolution (:class:`Downsampled`:
            area-average the input, upsample the logits bilinearly back); 1: full resolution.
            With 2 the U-Net costs a quarter per slice; sizes must then be multiples of 32.
        **kw: other ``monai.networks.nets.UNet`` arguments (``act``, ``dropout``, ``kernel_size``).
    """
    _check_2d("unet2d", spatial_dims)
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"unet2d: downsample must be a positive integer factor, got {downsample!r}")
    net = UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        **kw,
    )
    return net if downsample == 1 else Downsampled(net, int(downsample))


class Downsampled(nn.Module):
    """Run a 2D network at 1/``factor`` resolution and return logits at the input's.

    The input ``(B, C, H, W)`` is area-averaged by ``factor`` (``avg_pool2d``), the network runs
    on ``(B, C, H/f, W/f)``, and its logits are upsampled bilinearly to ``(H, W)``: the loss and
    the predictions stay on the data's grid, so data, inference and bundles do not change. For
    large, smooth structures (the LGG FLAIR abnormality on 256 x 256 slices) a factor of 2 buys
    four times the optimiser steps per CPU-second for a small loss of boundary detail.

    Args:
        net: the 2D network.
        factor: integer downsampling factor (H and W must be multiples of it).
    """

    def __init__(self, net: nn.Module, factor: int) -> None:
        super().__init__()
        self.net = net
        self.factor = int(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(x.shape[-2]), int(x.shape[-1])]
        y = self.net(torch.nn.functional.avg_pool2d(x, self.factor))
        return torch.nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)


def unet2d_buda(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    features: Sequence[int] = (32, 64, 128, 256, 512, 32),
    norm: str | tuple = ("batch", {}),
    act: str | tuple = ("relu", {"inplace": True}),
    **kw: Any,
) -> nn.Module:
    """The 2D U-Net of Buda et al. (Comput. Biol. Med. 2019) on LGG FLAIR slices, as MONAI ``BasicUNet``; 2D only.

    As in the paper's code (``brain-segmentation-pytorch``, ``init_features=32``): four
    encoder levels of (3x3 conv -> batch norm -> ReLU) x 2 with 32, 64, 128 and 256 features,
    each followed by 2x2 max-pooling, a 512-feature bottleneck, decoder levels that go up by a
    2x2 transposed convolution, concatenate the encoder features of the same level and apply
    (3x3 conv -> BN -> ReLU) x 2, and a 1x1 convolution. The paper's sigmoid is left to the
    loss (logits out); its convolutions have no bias, MONAI's do. Input sizes must be multiples
    of 16.

    Args:
        in_channels: input channels (3 in the paper: pre-contrast, FLAIR, post-contrast).
        out_channels: output channels (logits).
        spatial_dims: must be 2.
        features: channels of the 5 encoder levels and of the last decoder level.
        norm: normalisation (batch norm as in the paper).
        act: activation.
        **kw: other ``monai.networks.nets.BasicUNet`` arguments (``dropout``, ``upsample``).
    """
    _check_2d("unet2d_buda", spatial_dims)
    return BasicUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=tuple(features),
        norm=norm, act=act, **kw,
    )
