"""The losses written here, where MONAI and torch have none in the form needed.

:class:`DiceBCELoss`, :class:`WeightedCEDiceLoss` (BU-Net), :class:`CrossEntropyLoss` (torch's,
in either mode), :class:`SoftmaxFocalLoss` and :class:`WeightedSum`. Each takes logits and returns
a scalar; :func:`~brats_pipeline.losses.registry.build_loss` builds them by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brats_pipeline.losses.base import _check_mode, _check_nonnegative, _per_channel


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
