"""Learning-rate schedules that are a function of progress through the configured run.

:class:`ProgressLR` is a ``LambdaLR`` stepped after every optimiser step. Its factor at step
``s`` depends only on ``s`` and the run's length ``T`` (Lightning's
``trainer.estimated_stepping_batches``: ``max_epochs``/``max_steps``, batches per epoch,
gradient accumulation and devices taken into account), which
:class:`~brats_pipeline.module.BratsSegmentationModule` hands it with :meth:`ProgressLR.bind`
before training starts. With ``W`` warm-up steps::

    s < W:   (s + 1) / (W + 1)                                  linear warm-up
    s >= W:  p = (s - W) / (T - W)   (at most 1)
             cosine:    m + (1 - m) * (1 + cos(pi * p)) / 2
             poly:      m + (1 - m) * (1 - p) ** power
             linear:    m + (1 - m) * (1 - p)
             constant:  1

``m`` is ``min_factor``. The last step of the run (``s = T - 1``) still has a positive factor.

**Resuming** (``fit(ckpt_path=...)``): the schedule always follows the run being configured
now. If the checkpoint was written by a run of another length (``--trainer.max_epochs``
raised to train longer, or lowered), training continues from the checkpoint's step ``s`` on
the new curve, at the factor of ``s / T_new``; the learning rate is set to that value at once
(not left where the old schedule ended, e.g. at 0), and a warning names both lengths and
both rates. A run without a finite length (``max_epochs=-1`` and no ``max_steps``) has no
progress to follow: :meth:`ProgressLR.bind` raises ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SHAPES = ("cosine", "poly", "linear", "constant")

__all__ = ["SHAPES", "ProgressLR"]

#: What describes the curve (kept from the configured run on resume; the step counter comes from the checkpoint).
_CONFIGURED = ("shape", "warmup_epochs", "warmup_steps", "min_factor", "power", "total_steps", "warmup_total")


class ProgressLR(torch.optim.lr_scheduler.LambdaLR):
    """Warm-up, then cosine/poly/linear decay over the configured run; one step per optimiser step.

    Args:
        optimizer: the optimiser (its learning rate is the peak, reached after warm-up).
        shape: ``cosine``, ``poly``, ``linear`` or ``constant`` (after the warm-up).
        warmup_epochs: linear warm-up length in epochs (turned into steps with the run's steps
            per epoch); added to ``warmup_steps``.
        warmup_steps: linear warm-up length in optimiser steps.
        min_factor: the factor the decay ends at (fraction of the peak rate), in ``[0, 1]``.
        power: exponent of ``poly`` (nnU-Net: 0.9).
        total_steps: length of the run in optimiser steps; ``None`` (usual): set by
            :meth:`bind` from the trainer.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        shape: str = "cosine",
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
        min_factor: float = 0.0,
        power: float = 0.9,
        total_steps: int | None = None,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown schedule shape {shape!r}; choose one of {SHAPES}")
        if warmup_epochs < 0 or warmup_steps < 0:
            raise ValueError(f"warm-up must be >= 0, got warmup_epochs={warmup_epochs}, warmup_steps={warmup_steps}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.shape = shape
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_steps = int(warmup_steps)
        self.min_factor = float(min_factor)
        self.power = float(power)
        self.total_steps: int | None = None
        self.warmup_total = self.warmup_steps
        if total_steps is not None:
            self._set_length(total_steps, None)
        super().__init__(optimizer, lambda step: self.factor(step))

    # ---------------------------------------------------------------- the curve
    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
        warmup = self.warmup_total
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.total_steps is None or self.shape == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        if self.shape == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.shape == "poly":
            decay = (1.0 - progress) ** self.power
        else:
            decay = 1.0 - progress
        return self.min_factor + (1.0 - self.min_factor) * decay

    def _set_length(self, total_steps: float, steps_per_epoch: float | None) -> None:
        if total_steps is None or not math.isfinite(float(total_steps)) or int(total_steps) < 1:
            raise ValueError(
                f"the {self.shape!r} learning-rate schedule follows progress through the run, but the run has no "
                f"finite length (total optimiser steps: {total_steps}); set trainer.max_epochs or trainer.max_steps"
            )
        warmup = self.warmup_steps
        if self.warmup_epochs:
            if steps_per_epoch is None or not math.isfinite(float(steps_per_epoch)):
                raise ValueError(f"warmup_epochs={self.warmup_epochs} needs the number of steps per epoch, "
                                 f"got {steps_per_epoch}; give warmup_steps instead")
            warmup += int(round(self.warmup_epochs * float(steps_per_epoch)))
        self.total_steps, self.warmup_total = int(total_steps), warmup

    def bind(self, total_steps: float, steps_per_epoch: float | None = None) -> None:
        """Fix the run's length (and turn ``warmup_epochs`` into steps); sets the current rate.

        Args:
            total_steps: optimiser steps of the whole run (``trainer.estimated_stepping_batches``).
            steps_per_epoch: optimiser steps per epoch (needed for ``warmup_epochs``).

        Raises:
            ValueError: ``total_steps`` is not a finite positive number (an endless run), or
                ``warmup_epochs`` without ``steps_per_epoch``.
        """
        self._set_length(total_steps, steps_per_epoch)
        self._apply(self.last_epoch)

    def _apply(self, step: int) -> None:
        """Set every parameter group's rate to the factor of ``step`` (as ``step()`` would)."""
        lrs = [base * self.factor(step) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    # --------------------------------------------------------------- resuming
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter and peak rates of a checkpoint; keep *this* run's curve.

        The checkpoint's curve (length, shape, warm-up) is replaced by the one configured and
        bound for this run, and the optimiser's rate is set to this curve at the checkpoint's
        step at once; when the lengths differ a warning says so. An unbound schedule takes the
        checkpoint's curve as it is.
        """
        configured = {k: getattr(self, k) for k in _CONFIGURED}
        saved_total = state_dict.get("total_steps")
        saved_lrs = list(state_dict.get("_last_lr") or [])
        super().load_state_dict(state_dict)
        if configured["total_steps"] is None:  # not bound (used outside the module): the checkpoint's curve
            return
        self.__dict__.update(configured)
        self._apply(self.last_epoch)
        if saved_total is not None and int(saved_total) != self.total_steps:
            from pytorch_lightning.utilities import rank_zero_warn

            before = ", ".join(f"{lr:.3g}" for lr in saved_lrs) or "?"
            now = ", ".join(f"{lr:.3g}" for lr in self._last_lr)
            rank_zero_warn(
                f"resuming at optimiser step {self.last_epoch} of a run configured for {saved_total} steps as a run of "
                f"{self.total_steps} steps: the {self.shape} schedule continues on the new curve "
                f"(progress {self.last_epoch}/{self.total_steps}); learning rate {before} -> {now}"
            )
