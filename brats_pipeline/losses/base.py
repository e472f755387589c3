"""The two loss modes and the wrapper that checks ``(logits, target)`` for its mode.

:data:`LOSS_MODES`; :class:`SegmentationLoss`, what :func:`~brats_pipeline.losses.registry.build_loss`
returns; and the argument checks the losses share. The modes are described in
:mod:`brats_pipeline.losses`.
"""

from __future__ import annotations

import torch
from torch import nn

LOSS_MODES = ("sigmoid", "softmax")


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
