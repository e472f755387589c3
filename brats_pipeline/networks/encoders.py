"""2D image-classification backbones as U-Net encoders, with torchvision's state-dict key names.

torchvision is not a dependency (its wheels are tied to one torch build), so ResNet50 and
MobileNetV2 are re-written here **module for module**: their ``state_dict()`` keys and shapes
are exactly those of ``torchvision.models.resnet50()`` / ``mobilenet_v2()`` without the
classifier (``fc.*`` / ``classifier.*``). A torchvision weight file saved locally
(``torch.save(torchvision.models.resnet50(weights=...).state_dict(), "resnet50.pth")``)
therefore loads with :func:`load_encoder_weights` — strictly, every backbone tensor must be
present — and nothing is ever downloaded.

Each encoder returns five feature maps, at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input size
(``out_channels`` lists their channels). ImageNet weights expect 3 channels scaled to [0, 1]
and normalised with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`; for other channel counts the
stem is adapted (see :func:`load_encoder_weights`). How a U-Net's input gets there (z-scored
MRI, a learned 1x1 adapter) is chosen in :mod:`.encoder_unet`.

``tests/brats_pipeline/test_encoders_torchvision.py`` (slow) checks all of this against real
torchvision models: keys, tensors, the five feature maps, the adapted stem and the statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike

import torch
from torch import nn

#: per-channel (RGB) mean and std of torchvision's ImageNet weights, for inputs scaled to [0, 1]
#: (``torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()``; the same for every weight set)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class TorchvisionEncoder(nn.Module):
    """Base of the encoders: what :func:`load_encoder_weights` needs to know.

    Attributes:
        arch: architecture name used in messages.
        stem_key: state-dict key of the first convolution's weight (adapted to ``in_channels``).
        head_prefixes: key prefixes of the classifier in a torchvision file (ignored on load).
        out_channels: channels of the five feature maps, shallow to deep.
    """

    arch: str = ""
    stem_key: str = ""
    head_prefixes: tuple[str, ...] = ()
    out_channels: tuple[int, ...] = ()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------- ResNet50
class Bottleneck(nn.Module):
    """torchvision's ResNet V1.5 bottleneck: 1x1 -> 3x3 (stride here) -> 1x1 (x4 channels) + shortcut."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Encoder(TorchvisionEncoder):
    """ResNet50 (He et al., CVPR 2016) without pooling head; keys as ``torchvision.models.resnet50``.

    Stem 7x7/2 conv -> BN -> ReLU (1/2, 64 ch) -> 3x3/2 max-pool, then four stages of
    bottleneck blocks (3, 4, 6, 3 blocks; 256, 512, 1024, 2048 ch; 1/4 ... 1/32).

    Args:
        in_channels: image channels.
    """

    arch = "ResNet50"
    stem_key = "conv1.weight"
    head_prefixes = ("fc.",)
    out_channels = (64, 256, 512, 1024, 2048)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, 3, 1)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2)
        self.layer4 = self._make_layer(512, 3, 2)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [Bottleneck(self._inplanes, planes, stride, downsample)]
        self._inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature maps at 1/2 ... 1/32 of the input size."""
        x0 = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]


# ---------------------------------------------------------------------------- MobileNetV2
def _conv_bn_relu6(
    inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` (keys ``.0`` conv, ``.1`` BN)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (if t > 1) -> 3x3 depthwise -> 1x1 linear projection (+ identity)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, kernel_size=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Encoder(TorchvisionEncoder):
    """MobileNetV2 (Sandler et al., CVPR 2018) ``features``; keys as ``torchvision.models.mobilenet_v2``.

    Stem 3x3/2 conv (32 ch), 17 inverted-residual blocks (t, c, n, s) = (1,16,1,1),
    (6,24,2,2), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1), then a 1x1 conv
    to 1280 ch. Feature maps are taken after ``features[1, 3, 6, 13, 18]``
    (16, 24, 32, 96, 1280 ch at 1/2 ... 1/32).

    Args:
        in_channels: image channels.
    """

    arch = "MobileNetV2"
    stem_key = "features.0.0.weight"
    head_prefixes = ("classifier.",)
    out_channels = (16, 24, 32, 96, 1280)
    _SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    _TAPS = (1, 3, 6, 13, 18)
    __constants__ = ["_TAPS"]  # so that TorchScript sees it

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, 32, stride=2)]
        channels = 32
        for t, c, n, s in self._SETTING:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        layers.append(_conv_bn_relu6(channels, 1280, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five feature maps at 1/2 ... 1/32 of the input size."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._TAPS:
                out.append(x)
        return out


# ------------------------------------------------------------------------------- loading
def _adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a 3-channel (RGB) stem kernel into an ``in_channels`` one.

    Every new input channel gets the sum of the RGB kernels divided by ``in_channels``, so an
    image that is constant across channels gives the same stem response as the RGB model
    did on a grey image (MRI channels have no RGB order to preserve).
    """
    merged = weight.sum(dim=1, keepdim=True) / in_channels
    return merged.repeat(1, in_channels, 1, 1)


def load_encoder_weights(encoder: TorchvisionEncoder, path: str | PathLike[str]) -> None:
    """Load a local torchvision state dict (or ``{"state_dict": ...}``) into ``encoder``, strictly.

    Classifier keys (``fc.*`` / ``classifier.*``) are ignored; every other key must match
    the encoder's keys and shapes. If the file's stem kernel has 3 input channels and the
    encoder another number, it is adapted (each channel gets the RGB kernels' sum / ``in_channels``).

    Args:
        encoder: a :class:`ResNet50Encoder` or :class:`MobileNetV2Encoder`.
        path: the ``.pth`` file (read with ``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is unreadable or is not a state dict of this architecture
            (the message names the file and the mismatching keys).
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means "not a weight file"
        raise ValueError(
            f"encoder weights file {str(path)!r} cannot be read as a torch state dict: {exc}"
        ) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"encoder weights file {str(path)!r} does not hold a state dict (name -> tensor)")
    state = {k: v for k, v in obj.items() if not k.startswith(encoder.head_prefixes)}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"encoder weights file {str(path)!r} is not a torchvision {encoder.arch} state dict: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    stem = state[encoder.stem_key]
    want = own[encoder.stem_key].shape[1]
    if stem.ndim == 4 and stem.shape[1] == 3 and want != 3:
        state[encoder.stem_key] = _adapt_stem(stem, want)
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"encoder weights file {str(path)!r} does not fit this {encoder.arch}: shape mismatch in {wrong[:3]}"
        )
    encoder.load_state_dict(state, strict=True)
