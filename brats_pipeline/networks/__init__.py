"""Segmentation networks built by name.

Every network is a plain :class:`torch.nn.Module` that maps an image batch
``(B, in_channels, *spatial)`` to **logits** ``(B, out_channels, *spatial)`` (no sigmoid or
softmax: the loss and the post-processing apply the activation). ``spatial`` is ``(X, Y, Z)``
for ``spatial_dims=3`` and ``(X, Y)`` for ``spatial_dims=2``.

Build one with :func:`build_network`; :data:`NETWORKS` lists what exists, with the paper
each implements and the input sizes it accepts::

    net = build_network("spatial_attention_unet", in_channels=4, out_channels=3)

MONAI's implementations are used where they exist (``unet3d``, ``attention_unet``,
``residual_unet``, ``segresnet``, ``swin_unetr``, and the 2D slice networks ``unet2d`` and
``unet2d_buda``); the others are small modules in this package (``spatial_attention_unet``,
``bunet``, ``resnet_unet``, ``mobilenet_unet``). A network's spatial dimensionality is what
the rest of the pipeline follows (:func:`spatial_dims_of` reads it off a built module).
A new architecture is a new file here plus one :data:`NETWORKS` entry.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "NETWORKS",
    "NetworkSpec",
    "build_network",
    "check_state_dict_keys",
    "count_parameters",
    "default_spatial_dims",
    "get_network_spec",
    "input_channels_of",
    "network_config",
    "network_names",
    "spatial_dims_of",
]


@dataclass(frozen=True)
class NetworkSpec:
    """One registry entry.

    Args:
        name: registry key.
        builder: ``"module:function"`` of the factory, imported on first use; the factory
            takes ``(in_channels, out_channels, spatial_dims, **kw)``.
        paper: short citation of the paper the network implements.
        description: one line: blocks and where the implementation comes from.
        spatial_dims: the spatial dimensionalities the design supports.
        size_multiple: each spatial input size must be a multiple of this.
        min_size: each spatial input size must be at least this (below it the deepest
            feature map is a single voxel, which instance/batch norm cannot normalise).
        scriptable: ``torch.jit.script`` compiles it (what ``monai.bundle ckpt_export`` needs).
    """

    name: str
    builder: str
    paper: str
    description: str
    spatial_dims: tuple[int, ...] = (2, 3)
    size_multiple: int = 16
    min_size: int = 32
    scriptable: bool = True

    def factory(self) -> Callable[..., nn.Module]:
        """Import and return the factory function."""
        module, attr = self.builder.split(":")
        return getattr(importlib.import_module(module), attr)


_PKG = "brats_pipeline.networks"

NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec(
            "unet3d",
            f"{_PKG}.monai_nets:unet3d",
            "Çiçek et al., 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation, MICCAI 2016",
            "MONAI BasicUNet: (conv-norm-ReLU)x2 per level, max-pool down, transposed-conv up, skip concatenation",
        ),
        NetworkSpec(
            "attention_unet",
            f"{_PKG}.monai_nets:attention_unet",
            "Oktay et al., Attention U-Net: Learning Where to Look for the Pancreas, MIDL 2018",
            "MONAI AttentionUnet: additive attention gates on the skips, gated by the coarser decoder level",
        ),
        NetworkSpec(
            "spatial_attention_unet",
            f"{_PKG}.spatial_attention_unet:spatial_attention_unet",
            "3D U-Net (Çiçek et al., MICCAI 2016) with CBAM spatial attention (Woo et al., ECCV 2018)",
            "hand-written: per encoder level sigmoid(conv([mean_c; max_c])) gates the features; "
            "the attention map is concatenated into the matching decoder level",
        ),
        NetworkSpec(
            "residual_unet",
            f"{_PKG}.monai_nets:residual_unet",
            "Raza et al., dResU-Net: 3D deep residual U-Net based brain tumor segmentation, BSPC 2023; "
            "Kerfoot et al., STACOM 2018",
            "MONAI UNet with num_res_units=2: residual units in encoder and decoder, strided-conv down",
        ),
        NetworkSpec(
            "bunet",
            f"{_PKG}.bunet:bunet",
            "Rehman et al., BU-Net: Brain Tumor Segmentation Using Modified U-Net Architecture, Electronics 2020",
            "hand-written: Residual Extended Skip blocks on the skips, Wide-Context block at the bottleneck, "
            "factorised k-by-1 convolutions generalised to 3D",
        ),
        NetworkSpec(
            "segresnet",
            f"{_PKG}.monai_nets:segresnet",
            "Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018",
            "MONAI SegResNet (model-zoo BraTS configuration): ResNet-style pre-activation blocks, "
            "asymmetric encoder (1,2,2,4) / decoder (1,1,1)",
            size_multiple=8,
            min_size=8,
        ),
        NetworkSpec(
            "swin_unetr",
            f"{_PKG}.monai_nets:swin_unetr",
            "Hatamizadeh et al., Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors "
            "in MRI Images, BrainLes 2021",
            "MONAI SwinUNETR: shifted-window transformer encoder, CNN decoder with skip connections",
            size_multiple=32,
            min_size=64,
            scriptable=False,  # MONAI's SwinUNETR uses keyword-only arguments TorchScript rejects
        ),
        NetworkSpec(
            "unet2d",
            f"{_PKG}.monai_nets:unet2d",
            "Kerfoot et al., Left-Ventricle Quantification Using Residual U-Net, STACOM 2018 "
            "(MONAI UNet; the 2D slice network of the CPU recipe)",
            "MONAI UNet, 2D: 5 levels 16-32-64-128-256, strided-conv down, one residual unit per block, "
            "instance norm: few FLOPs per 256x256 slice",
            spatial_dims=(2,),
        ),
        NetworkSpec(
            "unet2d_buda",
            f"{_PKG}.monai_nets:unet2d_buda",
            "Buda, Saha, Mazurowski, Association of genomic subtypes of lower-grade gliomas with shape "
            "features automatically extracted by a deep learning algorithm, Comput. Biol. Med. 2019",
            "MONAI BasicUNet, 2D, the paper's U-Net: 32-64-128-256 features + 512 bottleneck, "
            "(3x3 conv-BN-ReLU)x2 per level, max-pool down, transposed-conv up",
            spatial_dims=(2,),
        ),
        NetworkSpec(
            "resnet_unet",
            f"{_PKG}.encoder_unet:resnet_unet",
            "He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (ResNet50 encoder) + "
            "Ronneberger et al., U-Net, MICCAI 2015",
            "hand-written 2D: torchvision-compatible ResNet50 encoder (optional local weights), "
            "U-Net decoder (upsample, concat, (conv-BN-ReLU)x2)",
            spatial_dims=(2,),
            size_multiple=1,
            min_size=32,
        ),
        NetworkSpec(
            "mobilenet_unet",
            f"{_PKG}.encoder_unet:mobilenet_unet",
            "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018 + "
            "Ronneberger et al., U-Net, MICCAI 2015",
            "hand-written 2D: torchvision-compatible MobileNetV2 encoder (optional local weights), "
            "U-Net decoder (upsample, concat, (conv-BN-ReLU)x2)",
            spatial_dims=(2,),
            size_multiple=1,
            min_size=32,
        ),
    )
}


def network_names() -> tuple[str, ...]:
    """Registered network names, in registry order."""
    return tuple(NETWORKS)


def get_network_spec(name: str) -> NetworkSpec:
    """Return the registry entry for ``name`` (error lists the choices)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    return NETWORKS[name]


def default_spatial_dims(name: str) -> int:
    """The dimensionality ``name`` is built with when none is asked for: 3 if it supports 3D, else 2."""
    dims = get_network_spec(name).spatial_dims
    return 3 if 3 in dims else dims[0]


def build_network(
    name: str, in_channels: int, out_channels: int, spatial_dims: int | None = None, **kw: Any
) -> nn.Module:
    """Build the network registered as ``name``.

    Args:
        name: a key of :data:`NETWORKS`.
        in_channels: input channels (the task's modalities, e.g. 4 for BraTS).
        out_channels: output channels (one logit per region in sigmoid mode, per class in
            softmax mode).
        spatial_dims: 3 for volumes ``(X, Y, Z)``, 2 for slices ``(X, Y)``; ``None``: 3 when the
            architecture supports it, else 2 (the 2D-only ``unet2d``, ``resnet_unet`` ...).
        **kw: architecture options passed to the factory (e.g. ``features=...`` for
            ``unet3d``, ``encoder_weights=PATH`` for ``resnet_unet``).

    Returns:
        A module mapping ``(B, in_channels, *spatial)`` to logits ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: unknown name, non-positive channel counts, or a dimensionality the
            architecture does not support.
    """
    spec = get_network_spec(name)
    if spatial_dims is None:
        spatial_dims = default_spatial_dims(name)
    for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if spatial_dims not in spec.spatial_dims:
        supported = " or ".join(f"{d}D" for d in spec.spatial_dims)
        raise ValueError(
            f"network {name!r} is {supported} only and cannot be built with spatial_dims={spatial_dims}; "
            f"networks for {spatial_dims}D: {', '.join(n for n, s in NETWORKS.items() if spatial_dims in s.spatial_dims)}"
        )
    net = spec.factory()(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **kw)
    # what it was built from, so that checkpoints say which network they hold (see network_config)
    net.brats_network_config = {
        "name": name, "in_channels": in_channels, "out_channels": out_channels, "spatial_dims": spatial_dims,
        "kwargs": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in kw.items()},
    }
    return net


def network_config(module: nn.Module) -> dict[str, Any] | None:
    """How :func:`build_network` built ``module``, or ``None`` for a module built some other way.

    Returns:
        A copy of ``{"name", "in_channels", "out_channels", "spatial_dims", "kwargs"}``: plain
        data (saved in checkpoints); ``build_network(name, in_channels, out_channels,
        spatial_dims, **kwargs)`` builds the same architecture again.
    """
    import copy

    config = getattr(module, "brats_network_config", None)
    return copy.deepcopy(config) if isinstance(config, dict) else None


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def check_state_dict_keys(network: nn.Module, state: Any, source: str) -> None:
    """Raise unless ``state`` has exactly ``network``'s state-dict keys.

    Args:
        network: the module the weights are for.
        state: a mapping of parameter/buffer names (a state dict).
        source: where the weights came from (a file), named first in the error.

    Raises:
        ValueError: ``"<source>: weights do not match the network: N missing keys [...], M
            unexpected keys [...]"`` (the first five of each, sorted).
    """
    own, theirs = set(network.state_dict()), set(map(str, state))
    missing, unexpected = sorted(own - theirs), sorted(theirs - own)
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the network: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )


def _first_convolution(module: nn.Module) -> nn.Module | None:
    from torch import nn

    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return next((m for m in module.modules() if isinstance(m, conv_types)), None)


def spatial_dims_of(module: nn.Module, default: int | None = None) -> int:
    """Spatial dimensionality of a network: that of its first convolution (2 for ``Conv2d``, 3 for ``Conv3d``).

    Args:
        module: a network (registry-built, a MONAI bundle's ``network_def``, or any ``nn.Module``).
        default: returned when ``module`` has no convolution; ``None`` makes that an error.

    Raises:
        ValueError: no convolution and no ``default``.
    """
    conv = _first_convolution(module)
    if conv is None:
        if default is None:
            raise ValueError(f"cannot tell the spatial dimensionality of {type(module).__name__}: it has no convolution")
        return int(default)
    return len(conv.kernel_size)


def input_channels_of(module: nn.Module) -> int | None:
    """Input channels of a network's first convolution, or ``None`` when it has none."""
    conv = _first_convolution(module)
    return None if conv is None else int(conv.in_channels)
