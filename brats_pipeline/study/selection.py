"""A run's logged curves (``metrics.csv``) and the choice of its epoch by a :class:`~brats_pipeline.study.spec.SelectionRule`.

``metrics.csv`` is what :class:`~brats_pipeline.callbacks.ResumableCSVLogger` writes for a
``brats-train`` run: one row per logging event with ``epoch``, ``step`` and the metrics logged
then (``train/loss_step``, ``train/loss_epoch``, ``val/loss``, ``val/dice_<region>``,
``val/dice_mean``, ...), empty cells for the others. A resumed run may have written an epoch's
rows twice (the killed run, then the resumed one): the last row of an epoch wins, and training
steps are kept once per step (the last value).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brats_pipeline.study.spec import SelectionRule


@dataclass
class RunCurves:
    """The curves of one run.

    Attributes:
        train_steps / train_loss: ``train/loss_step`` per optimiser step.
        epochs: the validated epochs, ascending.
        val_steps: the global step of each validation.
        val: ``{metric: [value per validated epoch]}`` for ``val/loss``, ``val/dice_mean`` and
            the other ``val/*`` columns (NaN where a validation did not log one).
        train_epochs / train_loss_epoch: ``train/loss_epoch`` per finished epoch.
    """

    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val: dict[str, list[float]] = field(default_factory=dict)
    train_epochs: list[int] = field(default_factory=list)
    train_loss_epoch: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"train_steps": self.train_steps, "train_loss": self.train_loss, "epochs": self.epochs,
                "val_steps": self.val_steps, "val": self.val, "train_epochs": self.train_epochs,
                "train_loss_epoch": self.train_loss_epoch}


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_curves(path: str | os.PathLike) -> RunCurves:
    """Read a run's ``metrics.csv`` (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``epoch``/``step`` columns (not a Lightning CSV log); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (the run logged nothing?)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"epoch", "step"} <= set(rows[0]):
        raise ValueError(f"{path}: not a Lightning CSV log (no epoch/step columns)")
    steps: dict[int, float] = {}
    epoch_loss: dict[int, float] = {}
    val: dict[int, tuple[int, dict[str, float]]] = {}
    for row in rows:
        epoch, step = _number(row.get("epoch")), _number(row.get("step"))
        if epoch is None or step is None:
            continue
        epoch, step = int(epoch), int(step)
        if (v := _number(row.get("train/loss_step"))) is not None:
            steps[step] = v
        if (v := _number(row.get("train/loss_epoch"))) is not None:
            epoch_loss[epoch] = v
        if _number(row.get("val/loss")) is not None:
            logged = {k: _number(text) for k, text in row.items() if k.startswith("val/")}
            val[epoch] = (step, {k: v for k, v in logged.items() if v is not None})
    curves = RunCurves()
    curves.train_steps = sorted(steps)
    curves.train_loss = [steps[s] for s in curves.train_steps]
    curves.train_epochs = sorted(epoch_loss)
    curves.train_loss_epoch = [epoch_loss[e] for e in curves.train_epochs]
    curves.epochs = sorted(val)
    curves.val_steps = [val[e][0] for e in curves.epochs]
    keys = sorted({k for _, metrics in val.values() for k in metrics})
    curves.val = {k: [val[e][1].get(k, math.nan) for e in curves.epochs] for k in keys}
    return curves


def smooth(values: Sequence[float], smoothing: str, window: int) -> list[float]:
    """``values`` smoothed in order: ``none``, ``moving_average`` (trailing mean of up to ``window``) or ``ema``.

    ``ema``: ``s_0 = v_0``, ``s_i = a v_i + (1 - a) s_(i-1)`` with ``a = 2 / (window + 1)``.

    Raises:
        ValueError: an unknown smoothing or a window below 1.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = [float(v) for v in values]
    if smoothing == "none" or window == 1:
        return values
    if smoothing == "moving_average":
        return [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                for i in range(len(values))]
    if smoothing == "ema":
        alpha, out = 2.0 / (window + 1), []
        for v in values:
            out.append(v if not out else alpha * v + (1 - alpha) * out[-1])
        return out
    raise ValueError(f"unknown smoothing {smoothing!r}; choose none, moving_average or ema")


@dataclass
class Selection:
    """The epoch a rule chose.

    Attributes:
        epoch / step: the chosen validation's epoch and global step.
        score: the rule's (smoothed) value there.
        val_loss / val_dice: the raw ``val/loss`` and ``val/dice_mean`` there.
        scores: the rule's value at every validated epoch (``epochs`` of the curves).
    """

    epoch: int
    step: int
    score: float
    val_loss: float
    val_dice: float
    scores: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "score": self.score, "val_loss": self.val_loss,
                "val_dice": self.val_dice, "scores": self.scores}


def select_epoch(curves: RunCurves, rule: SelectionRule, available: Sequence[int] | None = None) -> Selection:
    """The validated epoch the rule prefers: the lowest smoothed ``val/loss`` or the highest smoothed ``val/dice_mean``.

    The smoothing runs over every validation in epoch order; the choice is among ``available``
    epochs (those with a checkpoint; default every validated one). Ties go to the earliest epoch.
    Validations where the metric is not finite are skipped (not smoothed, never chosen).

    Raises:
        ValueError: no validation with a finite value among ``available``.
    """
    column = "val/loss" if rule.metric == "val_loss" else "val/dice_mean"
    values = curves.val.get(column, [])
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    smoothed = smooth([values[i] for i in finite], rule.smoothing, rule.window)
    scores = [math.nan] * len(values)
    for i, s in zip(finite, smoothed):
        scores[i] = s
    allowed = set(curves.epochs if available is None else available)
    candidates = [i for i in finite if curves.epochs[i] in allowed]
    if not candidates:
        raise ValueError(f"no validated epoch with a finite {column} to choose from (epochs {curves.epochs}, "
                         f"checkpoints of {sorted(allowed)})")
    sign = 1.0 if rule.metric == "val_loss" else -1.0
    best = min(candidates, key=lambda i: (sign * scores[i], curves.epochs[i]))
    dice = curves.val.get("val/dice_mean", [math.nan] * len(values))
    loss = curves.val.get("val/loss", [math.nan] * len(values))
    return Selection(curves.epochs[best], curves.val_steps[best], scores[best], loss[best], dice[best], scores)
