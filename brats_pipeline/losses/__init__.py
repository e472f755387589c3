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

Modules: :mod:`.base` (:data:`LOSS_MODES` and :class:`SegmentationLoss`, the mode's shape checks),
:mod:`.custom` (the losses written here) and :mod:`.registry` (:data:`LOSSES` and
:func:`build_loss`). Import from ``brats_pipeline.losses``, the public home of all three.
"""

from brats_pipeline.losses.base import LOSS_MODES, SegmentationLoss
from brats_pipeline.losses.custom import (
    CrossEntropyLoss,
    DiceBCELoss,
    SoftmaxFocalLoss,
    WeightedCEDiceLoss,
    WeightedSum,
)
from brats_pipeline.losses.registry import LOSSES, LossSpec, build_loss

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
