"""Segmentation losses built by name, in sigmoid (region) or softmax (exclusive class) mode.

Two modes, matching the two ways a network's output channels can be read:

* ``mode="sigmoid"`` (default, the pipeline's): each output channel is an independent
  region (BraTS TC, WT, ET — nested, so a voxel can be in several). ``target`` has the
  **same shape as the logits** ``(B, R, *spatial)``, values 0/1 (bool, int or float).
* ``mode="softmax"``: channels are mutually exclusive classes (background included).
  ``target`` holds **class indices** ``(B, 1, *spatial)`` in ``[0, C)``.

Every loss takes **logits** (the activation is applied inside) and returns a scalar. MONAI's
losses are used where MONAI has them, torch's cross-entropy for ``ce``; :class:`DiceBCELoss` and
:class:`WeightedCEDiceLoss` are written here. :data:`LOSSES` lists the names with their papers::

    loss = build_loss("dice_focal", mode="sigmoid", lambda_focal=0.5)
    value = loss(logits, target)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSSES",
    "LOSS_MODES",
    "CrossEntropyLoss",
    "DiceBCELoss",
    "LossSpec",
    "SegmentationLoss",
    "SoftmaxFocalLoss",
    "WeightedCEDiceLoss",
    "WeightedSum",
    "build_loss",
]

LOSS_MODES = ("sigmoid", "softmax")


@dataclass(frozen=True)
class LossSpec:
    """One loss: its paper, what it computes and the modes it supports."""

    name: str
    paper: str
    description: str
    modes: tuple[str, ...] = LOSS_MODES


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "dice", "Milletari et al., V-Net, 3DV 2016", "soft Dice, 1 - mean over channels (MONAI DiceLoss)"
        ),
        LossSpec(
            "ce",
            "Ronneberger et al., U-Net, MICCAI 2015 (pixel-wise cross-entropy)",
            "cross-entropy, mean over voxels (sigmoid: binary CE with logits per region channel, torch "
            "BCEWithLogitsLoss; softmax: CE over classes, torch CrossEntropyLoss); optional per-channel weight",
        ),
        LossSpec(
            "dice_ce",
            "Isensee et al., nnU-Net, Nature Methods 2021",
            "Dice + cross-entropy (softmax: MONAI DiceCELoss; sigmoid: Dice + per-channel binary CE)",
        ),
        LossSpec(
            "dice_focal",
            "Milletari et al. 2016 + Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
            "lambda_dice * Dice + lambda_focal * Focal, gamma=2 (MONAI DiceFocalLoss; softmax: Dice + softmax focal)",
        ),
        LossSpec(
            "wce_dice",
            "Rehman et al., BU-Net, Electronics 2020",
            "class-weighted cross-entropy + class-weighted Dice (weights given or balanced per batch)",
        ),
        LossSpec(
            "dice_bce",
            "Milletari et al. 2016 + binary cross-entropy",
            "Dice + binary cross-entropy on sigmoid channels",
            modes=("sigmoid",),
        ),
        LossSpec(
            "focal", "Lin et al., ICCV 2017", "focal loss -(1-p_t)^gamma log p_t, gamma=2 (MONAI FocalLoss)"
        ),
        LossSpec(
            "tversky",
            "Salehi et al., Tversky loss function for image segmentation, MLMI 2017",
            "1 - TP/(TP + alpha FP + beta FN), alpha=0.3, beta=0.7 (MONAI TverskyLoss)",
        ),
        LossSpec(
            "generalized_dice",
            "Sudre et al., Generalised Dice overlap as a deep learning loss function, DLMIA 2017",
            "Dice with per-class weights 1/volume^2 (MONAI GeneralizedDiceLoss)",
        ),
    )
}


class SegmentationLoss(nn.Module):
    """A loss with its mode: checks ``(logits, target)`` shapes, then calls the wrapped loss.

    Args:
        name: registry name (for messages).
        mode: ``"sigmoid"`` or ``"softmax"``.
        loss: module called as ``loss(logits, target)``.
    """

    def __init__(self, name: str, mode: str, loss: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.mode = mode
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: ``(B, C, *spatial)`` network output (no activation).
            target: sigmoid mode ``(B, C, *spatial)`` 0/1; softmax mode ``(B, 1, *spatial)``
                class indices.
        """
        if logits.ndim not in (4, 5):
            raise ValueError(
                f"{self.name}: logits must be (B, C, X, Y[, Z]), got shape {tuple(logits.shape)}"
            )
        if self.mode == "sigmoid":
            if target.shape != logits.shape:
                raise ValueError(
                    f"{self.name} (sigmoid mode): target must have the logits' shape {tuple(logits.shape)} "
                    f"(one 0/1 channel per region), got {tuple(target.shape)}"
                )
            target = target.to(logits.dtype)
        else:
            want = (logits.shape[0], 1, *logits.shape[2:])
            if tuple(target.shape) != want:
                raise ValueError(
                    f"{self.name} (softmax mode): target must be class indices of shape {want}, "
                    f"got {tuple(target.shape)}"
                )
            if logits.shape[1] < 2:
                raise ValueError(
                    f"{self.name} (softmax mode) needs at least 2 classes, logits have {logits.shape[1]}"
                )
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= logits.shape[1]:
                raise ValueError(
                    f"{self.name} (softmax mode): target class indices must lie in [0, {logits.shape[1] - 1}], "
                    f"got values in [{low}, {high}]"
                )
            if not torch.is_floating_point(target):
                target = target.to(logits.dtype)
        return self.loss(logits, target)


class DiceBCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_bce * BCE`` on sigmoid channels.

    Dice is MONAI's soft Dice (``sigmoid=True``); BCE is
    ``binary_cross_entropy_with_logits`` averaged over every element, with an optional
    per-channel ``pos_weight`` (weight of the positive voxels, e.g. negatives/positives).

    Args:
        lambda_dice: weight of the Dice term.
        lambda_bce: weight of the BCE term.
        pos_weight: one weight per channel, or ``None``.
        **dice_kw: other ``monai.losses.DiceLoss`` arguments (``smooth_nr``, ``batch``...).
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_bce: float = 1.0,
        pos_weight: Sequence[float] | None = None,
        **dice_kw: Any,
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        _check_nonnegative(lambda_dice=lambda_dice, lambda_bce=lambda_bce)
        self.dice = DiceLoss(sigmoid=True, **dice_kw)
        self.lambda_dice = float(lambda_dice)
        self.lambda_bce = float(lambda_bce)
        self.register_buffer(
            "pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits and 0/1 target of the same shape."""
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = _per_channel(self.pos_weight, logits, "pos_weight")
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce


class WeightedCEDiceLoss(nn.Module):
    """Class-weighted cross-entropy + class-weighted Dice (BU-Net's loss, Rehman et al. 2020).

    With class weights ``w_c`` (normalised here to mean 1):

    * softmax mode: ``CE = sum_i w_{y_i} ce_i / sum_i w_{y_i}`` (``torch.nn.functional.cross_entropy``
      with ``weight``); ``Dice = sum_c w_c d_c / sum_c w_c`` where ``d_c`` is MONAI's soft Dice
      loss of class ``c`` averaged over the batch;
    * sigmoid mode: ``CE = sum_c w_c bce_c / sum_c w_c`` with ``bce_c`` the mean binary CE of
      channel ``c``; Dice as above over channels.

    ``total = lambda_ce * CE + lambda_dice * Dice``. Uniform weights give plain CE + Dice.

    Args:
        mode: ``"sigmoid"`` or ``"softmax"``.
        class_weights: one weight per channel/class, or ``None`` for *balanced* weights
            recomputed on every batch from the target: ``w_c = N / (C * n_c)`` (``n_c`` voxels
            of class ``c``, or positive voxels of channel ``c``; ``N`` all voxels); a class
            absent from the batch gets the largest weight of the present ones.
        lambda_ce: weight of the CE term.
        lambda_dice: weight of the Dice term.
        **dice_kw: other ``monai.losses.DiceLoss`` arguments.
    """

    def __init__(
        self,
        mode: str = "sigmoid",
        class_weights: Sequence[float] | None = None,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        **dice_kw: Any,
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        _check_mode(mode)
        _check_nonnegative(lambda_ce=lambda_ce, lambda_dice=lambda_dice)
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if weights.ndim != 1 or len(weights) == 0 or not bool((weights > 0).all()):
                raise ValueError(
                    f"class_weights must be a non-empty sequence of positive numbers, got {class_weights!r}"
                )
        self.mode = mode
        self.register_buffer("class_weights", weights)
        self.lambda_ce = float(lambda_ce)
        self.lambda_dice = float(lambda_dice)
        onehot = mode == "softmax"
        self.dice = DiceLoss(
            sigmoid=not onehot, softmax=onehot, to_onehot_y=onehot, reduction="none", **dice_kw
        )

    def weights(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Class weights for this batch, shape ``(C,)``, mean 1."""
        n_classes = logits.shape[1]
        if self.class_weights is not None:
            w = _per_channel(self.class_weights, logits, "class_weights").flatten()
        else:
            if self.mode == "softmax":
                counts = torch.bincount(target.long().flatten(), minlength=n_classes)[:n_classes].to(
                    logits.dtype
                )
            else:
                counts = target.transpose(0, 1).reshape(n_classes, -1).sum(dim=1).to(logits.dtype)
            total = target.numel() if self.mode == "softmax" else target[:, 0].numel()
            present = counts > 0
            w = torch.ones(n_classes, dtype=logits.dtype, device=logits.device)
            if bool(present.any()):
                w = torch.where(present, total / (n_classes * counts.clamp(min=1)), w)
                w = torch.where(present, w, w[present].max())
        return (w / w.mean()).to(device=logits.device, dtype=logits.dtype)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss (target as in :class:`SegmentationLoss` for the mode)."""
        w = self.weights(logits, target)
        if self.mode == "softmax":
            ce = F.cross_entropy(logits, target[:, 0].long(), weight=w)
        else:
            per_channel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            per_channel = per_channel.transpose(0, 1).reshape(logits.shape[1], -1).mean(dim=1)
            ce = (w * per_channel).sum() / w.sum()
        dice_per_class = self.dice(logits, target).reshape(logits.shape[0], logits.shape[1]).mean(dim=0)
        dice = (w * dice_per_class).sum() / w.sum()
        return self.lambda_ce * ce + self.lambda_dice * dice


class CrossEntropyLoss(nn.Module):
    """Plain cross-entropy, mean over voxels (torch's): binary CE with logits per channel, or CE over classes.

    Args:
        mode: ``"sigmoid"`` (``binary_cross_entropy_with_logits``, mean over every element) or
            ``"softmax"`` (``cross_entropy`` over the class channel, target ``(B, 1, *spatial)``).
        weight: one weight per channel: sigmoid mode, the weight of a channel's positive voxels
            (torch ``pos_weight``); softmax mode, the weight of each class (torch ``weight``).
    """

    def __init__(self, mode: str = "sigmoid", weight: Sequence[float] | None = None) -> None:
        super().__init__()
        _check_mode(mode)
        self.mode = mode
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss (target as in :class:`SegmentationLoss` for the mode)."""
        w = None if self.weight is None else _per_channel(self.weight, logits, "weight")
        if self.mode == "softmax":
            return F.cross_entropy(logits, target[:, 0].long(), weight=None if w is None else w.flatten())
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=w)


class SoftmaxFocalLoss(nn.Module):
    """Focal loss over exclusive classes (Lin et al., ICCV 2017): ``mean_voxels -(1 - p_t)^gamma log p_t``.

    ``p_t`` is the softmax probability of the voxel's true class. Uses MONAI's
    ``FocalLoss(use_softmax=True)`` per class and sums over classes, so ``gamma=0`` gives
    exactly the cross-entropy (MONAI's own ``mean`` reduction also divides by the number of
    classes).

    Args:
        gamma: focusing parameter.
        alpha: optional class balance (scalar: ``1 - alpha`` for class 0, ``alpha`` for the
            others; or one value per class).
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> None:
        super().__init__()
        from monai.losses import FocalLoss

        _check_nonnegative(gamma=gamma)
        self.focal = FocalLoss(use_softmax=True, to_onehot_y=True, gamma=gamma, alpha=alpha, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss for logits ``(B, C, *spatial)`` and class indices ``(B, 1, *spatial)``."""
        return self.focal(logits, target).sum(dim=1).mean()


class WeightedSum(nn.Module):
    """``sum_i weight_i * loss_i(logits, target)``.

    Args:
        terms: ``(weight, loss)`` pairs.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        _check_nonnegative(**{f"weight {i}": w for i, (w, _) in enumerate(terms)})
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(loss for _, loss in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar weighted sum of the terms."""
        return sum(
            (w * loss(logits, target) for w, loss in zip(self.weights, self.terms, strict=True)),
            torch.zeros((), dtype=logits.dtype, device=logits.device),
        )


def _per_channel(values: torch.Tensor, logits: torch.Tensor, what: str) -> torch.Tensor:
    """``values`` (C,) reshaped to broadcast over ``(B, C, *spatial)``."""
    if values.numel() != logits.shape[1]:
        raise ValueError(
            f"{what} has {values.numel()} entries but the logits have {logits.shape[1]} channels"
        )
    return values.to(device=logits.device, dtype=logits.dtype).reshape(-1, *([1] * (logits.ndim - 2)))


def _check_mode(mode: str) -> None:
    if mode not in LOSS_MODES:
        raise ValueError(f"unknown loss mode {mode!r}; choose one of {LOSS_MODES}")


def _check_nonnegative(**weights: float) -> None:
    for key, value in weights.items():
        if not value >= 0:
            raise ValueError(f"{key} must be >= 0, got {value!r}")


_MODE_KEYS = ("sigmoid", "softmax", "to_onehot_y", "use_softmax", "other_act")


def build_loss(name: str, mode: str = "sigmoid", **kw: Any) -> SegmentationLoss:
    """Build the loss registered as ``name`` for ``mode``.

    Args:
        name: a key of :data:`LOSSES`.
        mode: ``"sigmoid"`` (region channels, target shaped like the logits) or
            ``"softmax"`` (exclusive classes, target ``(B, 1, *spatial)`` class indices).
        **kw: options of the underlying loss, e.g. ``lambda_focal`` and ``gamma`` for
            ``dice_focal``, ``alpha``/``beta`` for ``tversky``, ``class_weights`` for
            ``wce_dice``, ``lambda_dice``/``lambda_ce`` for ``dice_ce``, ``smooth_nr``,
            ``smooth_dr``, ``include_background``, ``batch`` for the Dice-based ones.
            The activation and one-hot options are set by ``mode`` and may not be given.

    Returns:
        A :class:`SegmentationLoss` called as ``loss(logits, target)``.

    Raises:
        ValueError: unknown name or mode, a mode the loss does not support, or an
            activation option in ``kw``.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    _check_mode(mode)
    spec = LOSSES[name]
    if mode not in spec.modes:
        raise ValueError(
            f"loss {name!r} supports mode {' or '.join(spec.modes)} only, got mode={mode!r}; "
            "for exclusive classes use 'dice_ce'"
        )
    bad = sorted(set(kw) & set(_MODE_KEYS))
    if bad:
        raise ValueError(f"loss options {bad} are set by mode={mode!r}; do not pass them")
    return SegmentationLoss(name, mode, _make(name, mode, dict(kw)))


def _make(name: str, mode: str, kw: dict[str, Any]) -> nn.Module:
    from monai import losses

    soft = mode == "softmax"
    act = {"softmax": True, "to_onehot_y": True} if soft else {"sigmoid": True}
    if name == "dice":
        return losses.DiceLoss(**act, **kw)
    if name == "ce":
        return CrossEntropyLoss(mode, **kw)
    if name == "dice_ce":
        if soft:
            return losses.DiceCELoss(**act, **kw)
        if "lambda_ce" in kw:
            kw["lambda_bce"] = kw.pop("lambda_ce")
        return DiceBCELoss(**kw)
    if name == "dice_focal":
        if not soft:
            return losses.DiceFocalLoss(**act, **kw)
        # MONAI's DiceFocalLoss applies a *sigmoid* focal term even with softmax=True: compose instead.
        lambda_dice, lambda_focal = kw.pop("lambda_dice", 1.0), kw.pop("lambda_focal", 1.0)
        focal = SoftmaxFocalLoss(**{k: kw.pop(k) for k in ("gamma", "alpha") if k in kw})
        return WeightedSum([(lambda_dice, losses.DiceLoss(**act, **kw)), (lambda_focal, focal)])
    if name == "wce_dice":
        return WeightedCEDiceLoss(mode=mode, **kw)
    if name == "dice_bce":
        return DiceBCELoss(**kw)
    if name == "focal":
        return SoftmaxFocalLoss(**kw) if soft else losses.FocalLoss(**kw)
    if name == "tversky":
        kw.setdefault("alpha", 0.3)
        kw.setdefault("beta", 0.7)
        return losses.TverskyLoss(**act, **kw)
    if name == "generalized_dice":
        return losses.GeneralizedDiceLoss(**act, **kw)
    raise AssertionError(f"LOSSES entry {name!r} has no builder")  # unreachable: LOSSES is checked above
