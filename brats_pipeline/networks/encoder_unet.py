"""2D U-Nets on classification backbones: ``resnet_unet`` (ResNet50) and ``mobilenet_unet`` (MobileNetV2).

The 2D LGG seeds segment FLAIR-abnormality slices with a U-Net decoder on an ImageNet
backbone (Buda et al., 2019 data). The encoders are in :mod:`.encoders` (torchvision key
names, optional weights from a local file); the decoder is the U-Net one (Ronneberger et al.,
MICCAI 2015) in the arrangement popularised by segmentation_models_pytorch.

**What the pretrained stem sees.** torchvision's ImageNet weights were trained on RGB images
scaled to [0, 1] and normalised per channel with the ImageNet mean and std, i.e. on inputs of
about zero mean and unit variance per channel. Two options say how an MRI input gets there:

- ``input_normalization``: ``"none"`` (default) for inputs that are already standardised, which
  is what this project's transforms give (every channel z-scored over the non-zero voxels, the
  LGG uint8 scans included); ``"imagenet"`` for 3-channel inputs **scaled to [0, 1]** (uint8 / 255,
  MONAI ``ScaleIntensity``), normalised exactly as torchvision's ``weights.transforms()`` do. Do
  not combine ``"imagenet"`` with z-scored inputs: it would shift them by about -2 and stretch
  them about 4-fold.
- ``input_adapter``: ``"none"`` (default) feeds ``in_channels`` straight to the stem, whose
  3-channel kernel :func:`~brats_pipeline.networks.encoders.load_encoder_weights` adapts to
  ``in_channels``; ``"conv1x1"`` puts a learned 1x1 convolution ``in_channels -> 3`` (the
  :class:`ChannelAdapter`) in front of the unmodified 3-channel pretrained stem.

The adapter (if any) comes first, then the normalisation, then the encoder, so the frozen part
of a fine-tuning schedule (:class:`~brats_pipeline.networks.finetune.EncoderFreeze` freezes
``encoder``) never includes the new adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from brats_pipeline.networks.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MobileNetV2Encoder,
    ResNet50Encoder,
    TorchvisionEncoder,
    load_encoder_weights,
)

#: values of ``input_adapter``: how ``in_channels`` reach the 3-channel pretrained stem
INPUT_ADAPTERS = ("none", "conv1x1")
#: values of ``input_normalization``: what is done to the (adapted) 3-channel input
INPUT_NORMALIZATIONS = ("none", "imagenet")


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` per channel with ImageNet's RGB statistics (torchvision's ``Normalize``).

    For 3-channel inputs scaled to [0, 1]; channel ``c`` is treated as RGB channel ``c``. The
    statistics are constants (non-persistent buffers: not in the state dict, but they follow
    ``.to(device)``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, X, Y)``."""
        return (x - self.mean) / self.std


class ChannelAdapter(nn.Conv2d):
    """Learned 1x1 convolution from ``in_channels`` to the 3 channels of an ImageNet stem.

    Initialised so that, at the start of training, the network computes what it computes with
    ``input_adapter="none"`` and the same weights: with 3 input channels the identity; with any
    other number every output channel is the mean of the input channels (the pretrained stem
    then sees a grey image, as the adapted stem of ``"none"`` does, see
    :func:`~brats_pipeline.networks.encoders.load_encoder_weights`). Bias zero.

    Args:
        in_channels: image channels.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, 3, kernel_size=1)
        with torch.no_grad():
            if in_channels == 3:
                self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            else:
                self.weight.fill_(1.0 / in_channels)
            self.bias.zero_()


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

    Before the encoder, ``channel_adapter`` (a :class:`ChannelAdapter` or identity) and then
    ``normalize`` (an :class:`ImageNetNormalize` or identity) prepare the input.

    Args:
        encoder: a :class:`~brats_pipeline.networks.encoders.TorchvisionEncoder`.
        out_channels: output channels (logits).
        decoder_channels: channels of the five decoder blocks, deep to shallow.
        channel_adapter: module applied to the input first (``None``: identity).
        normalize: module applied after ``channel_adapter`` (``None``: identity).
    """

    def __init__(
        self,
        encoder: TorchvisionEncoder,
        out_channels: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        channel_adapter: nn.Module | None = None,
        normalize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        dec = tuple(decoder_channels)
        enc = encoder.out_channels
        if len(dec) != len(enc) or any(c < 1 for c in dec):
            raise ValueError(f"decoder_channels must be {len(enc)} positive ints, got {decoder_channels!r}")
        # registered before the encoder: the first convolution is the adapter's (networks.input_channels_of)
        self.channel_adapter = nn.Identity() if channel_adapter is None else channel_adapter
        self.normalize = nn.Identity() if normalize is None else normalize
        self.encoder = encoder
        skip_channels = (*enc[-2::-1], 0)
        in_channels = (enc[-1], *dec[:-1])
        self.decoder = nn.ModuleList(
            _decoder_block(i + s, o) for i, s, o in zip(in_channels, skip_channels, dec, strict=True)
        )
        self.head = nn.Conv2d(dec[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y)`` for ``x`` of shape ``(B, in_channels, X, Y)``."""
        features = self.encoder(self.normalize(self.channel_adapter(x)))
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


def _build(
    name: str,
    encoder_cls: type[TorchvisionEncoder],
    in_channels: int,
    out_channels: int,
    spatial_dims: int,
    encoder_weights: str | PathLike[str] | None,
    decoder_channels: Sequence[int],
    input_adapter: str,
    input_normalization: str,
) -> EncoderUNet:
    """Check the options, build the encoder (and load its weights), the input modules and the U-Net."""
    _check_2d(name, spatial_dims)
    if input_adapter not in INPUT_ADAPTERS:
        raise ValueError(f"unknown input_adapter {input_adapter!r}; choose one of {', '.join(INPUT_ADAPTERS)}")
    if input_normalization not in INPUT_NORMALIZATIONS:
        raise ValueError(
            f"unknown input_normalization {input_normalization!r}; choose one of {', '.join(INPUT_NORMALIZATIONS)}"
        )
    adapt = input_adapter == "conv1x1"
    if input_normalization == "imagenet" and not adapt and in_channels != 3:
        raise ValueError(
            f"input_normalization='imagenet' needs 3 (RGB-like) channels, got in_channels={in_channels}; "
            "add input_adapter='conv1x1' to map them to 3 first, or use input_normalization='none' "
            "for z-scored inputs"
        )
    encoder = encoder_cls(3 if adapt else in_channels)
    if encoder_weights is not None:
        load_encoder_weights(encoder, encoder_weights)
    return EncoderUNet(
        encoder,
        out_channels,
        decoder_channels,
        channel_adapter=ChannelAdapter(in_channels) if adapt else None,
        normalize=ImageNetNormalize() if input_normalization == "imagenet" else None,
    )


def resnet_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    encoder_weights: str | PathLike[str] | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    input_adapter: str = "none",
    input_normalization: str = "none",
) -> EncoderUNet:
    """U-Net on a ResNet50 encoder (He et al., CVPR 2016); 2D only.

    Args:
        in_channels: image channels.
        out_channels: output channels (logits).
        spatial_dims: must be 2.
        encoder_weights: optional local torchvision ``resnet50`` state-dict file (see
            :func:`~brats_pipeline.networks.encoders.load_encoder_weights`); ``None``
            initialises randomly. Nothing is downloaded.
        decoder_channels: channels of the five decoder blocks.
        input_adapter: ``"none"`` (the stem takes ``in_channels``; pretrained 3-channel kernels
            are adapted) or ``"conv1x1"`` (a learned :class:`ChannelAdapter` ``in_channels -> 3``
            before the unmodified pretrained stem).
        input_normalization: ``"none"`` for standardised (z-scored) inputs, as this project's
            transforms give, or ``"imagenet"`` for 3-channel inputs scaled to [0, 1]
            (:class:`ImageNetNormalize`; with ``in_channels != 3`` only after ``"conv1x1"``).

    Raises:
        ValueError: ``spatial_dims != 2``, an unknown ``input_adapter`` or ``input_normalization``,
            ``"imagenet"`` on other than 3 channels, bad ``decoder_channels``, or a weight file
            that is not a torchvision ``resnet50`` state dict.
    """
    return _build("resnet_unet", ResNet50Encoder, in_channels, out_channels, spatial_dims, encoder_weights,
                  decoder_channels, input_adapter, input_normalization)


def mobilenet_unet(
    in_channels: int,
    out_channels: int,
    spatial_dims: int = 2,
    encoder_weights: str | PathLike[str] | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    input_adapter: str = "none",
    input_normalization: str = "none",
) -> EncoderUNet:
    """U-Net on a MobileNetV2 encoder (Sandler et al., CVPR 2018); 2D only.

    Args:
        in_channels: image channels.
        out_channels: output channels (logits).
        spatial_dims: must be 2.
        encoder_weights: optional local torchvision ``mobilenet_v2`` state-dict file (see
            :func:`~brats_pipeline.networks.encoders.load_encoder_weights`); ``None``
            initialises randomly. Nothing is downloaded.
        decoder_channels: channels of the five decoder blocks.
        input_adapter: ``"none"`` (the stem takes ``in_channels``; pretrained 3-channel kernels
            are adapted) or ``"conv1x1"`` (a learned :class:`ChannelAdapter` ``in_channels -> 3``
            before the unmodified pretrained stem).
        input_normalization: ``"none"`` for standardised (z-scored) inputs, as this project's
            transforms give, or ``"imagenet"`` for 3-channel inputs scaled to [0, 1]
            (:class:`ImageNetNormalize`; with ``in_channels != 3`` only after ``"conv1x1"``).

    Raises:
        ValueError: ``spatial_dims != 2``, an unknown ``input_adapter`` or ``input_normalization``,
            ``"imagenet"`` on other than 3 channels, bad ``decoder_channels``, or a weight file
            that is not a torchvision ``mobilenet_v2`` state dict.
    """
    return _build("mobilenet_unet", MobileNetV2Encoder, in_channels, out_channels, spatial_dims, encoder_weights,
                  decoder_channels, input_adapter, input_normalization)
