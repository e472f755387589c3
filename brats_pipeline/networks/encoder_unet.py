"""2D U-Nets on classification backbones: ``resnet_unet`` (ResNet50) and ``mobilenet_unet`` (MobileNetV2).

The 2D LGG seeds segment FLAIR-abnormality slices with a U-Net decoder on an ImageNet
backbone (Buda et al., 2019 data). The encoders are in :mod:`.encoders` (torchvision key
names, optional weights from a local file); the decoder is the U-Net one (Ronneberger et al.,
MICCAI 2015) in the arrangement popularised by segmentation_models_pytorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from brats_pipeline.networks.encoders import (
    MobileNetV2Encoder,
    ResNet50Encoder,
    TorchvisionEncoder,
    load_encoder_weights,
)


def _decoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv -> BN -> ReLU) x 2."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class EncoderUNet(nn.Module):
    """U-Net decoder on a five-level 2D encoder.

    Starting from the deepest feature map (1/32), each decoder block upsamples (nearest) to
    the size of the next shallower encoder map, concatenates it (skip connection) and applies
    (3x3 conv -> BN -> ReLU) x 2; the last block upsamples to the input size with no skip.
    A 1x1 convolution gives the logits. Upsampling to the skip's size (not a fixed 2x) makes
    any input size of at least 32 work.

    Args:
        encoder: a :class:`~brats_pipeline.networks.encoders.TorchvisionEncoder`.
        out_channels: output channels (logits).
        decoder_channels: channels of the five decoder blocks, deep to shallow.
    """

    def __init__(
        self,
        encoder: TorchvisionEncoder,
        out_channels: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        dec = tuple(decoder_channels)
        enc = encoder.out_channels
        if len(dec) != len(enc) or any(c < 1 for c in dec):
            raise ValueError(f"decoder_channels must be {len(enc)} positive ints, got {decoder_channels!r}")
        self.encoder = encoder
        skip_channels = (*enc[-2::-1], 0)
        in_channels = (enc[-1], *dec[:-1])
        self.decoder = nn.ModuleList(
            _decoder_block(i + s, o) for i, s, o in zip(in_channels, skip_channels, dec, strict=True)
        )
        self.head = nn.Conv2d(dec[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y)`` for ``x`` of shape ``(B, in_channels, X, Y)``."""
        features = self.encoder(x)
        y = features[-1]
        for i, block in enumerate(self.decoder):
            level = len(features) - 2 - i  # the encoder map this block joins; none for the last block
            if level >= 0:
                skip = features[level]
                y = torch.cat([F.interpolate(y, size=skip.shape[2:], mode="nearest"), skip], dim=1)
            else:
                y = F.interpolate(y, size=x.shape[2:], mode="nearest")
            y = block(y)
        return self.head(y)


def _check_2d(name: str, spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ValueError(
            f"{name} is 2D only (its encoder is a 2D ImageNet backbone), got spatial_dims={spatial_dims!r}; "
            "for volumes use unet3d, spatial_attention_unet, bunet, segresnet or swin_unetr"
        )


def resnet_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    encoder_weights: str | PathLike[str] | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> EncoderUNet:
    """U-Net on a ResNet50 encoder (He et al., CVPR 2016); 2D only.

    Args:
        in_channels: image channels.
        out_channels: output channels (logits).
        spatial_dims: must be 2.
        encoder_weights: optional local torchvision ``resnet50`` state-dict file
            (see :func:`~brats_pipeline.networks.encoders.load_encoder_weights`); ``None``
            initialises randomly. Nothing is downloaded.
        decoder_channels: channels of the five decoder blocks.
    """
    _check_2d("resnet_unet", spatial_dims)
    encoder = ResNet50Encoder(in_channels)
    if encoder_weights is not None:
        load_encoder_weights(encoder, encoder_weights)
    return EncoderUNet(encoder, out_channels, decoder_channels)


def mobilenet_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    encoder_weights: str | PathLike[str] | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> EncoderUNet:
    """U-Net on a MobileNetV2 encoder (Sandler et al., CVPR 2018); 2D only.

    Args:
        in_channels: image channels.
        out_channels: output channels (logits).
        spatial_dims: must be 2.
        encoder_weights: optional local torchvision ``mobilenet_v2`` state-dict file; ``None``
            initialises randomly. Nothing is downloaded.
        decoder_channels: channels of the five decoder blocks.
    """
    _check_2d("mobilenet_unet", spatial_dims)
    encoder = MobileNetV2Encoder(in_channels)
    if encoder_weights is not None:
        load_encoder_weights(encoder, encoder_weights)
    return EncoderUNet(encoder, out_channels, decoder_channels)
