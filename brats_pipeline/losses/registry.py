"""The loss registry: :data:`LOSSES` (each name with its paper) and :func:`build_loss`.

MONAI's losses where MONAI has them, the ones of :mod:`brats_pipeline.losses.custom` otherwise,
wrapped in a :class:`~brats_pipeline.losses.base.SegmentationLoss` for the mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from brats_pipeline.losses.base import LOSS_MODES, SegmentationLoss, _check_mode
from brats_pipeline.losses.custom import (
    CrossEntropyLoss,
    DiceBCELoss,
    SoftmaxFocalLoss,
    WeightedCEDiceLoss,
    WeightedSum,
)


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
