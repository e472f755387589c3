"""Training curves: loss and validation Dice per region against epoch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.viz.common import _pyplot, _save


def training_curves_figure(history: Sequence[Mapping[str, float]]) -> Any:
    """A figure of the loss (left: training and validation) and validation Dice per region (right) against epoch.

    Each line has a point exactly where its metric is in ``history`` (validation may run only
    every few epochs); an axis with nothing to draw says so.

    Args:
        history: one dict per finished epoch with ``epoch`` and the metrics logged for it:
            ``train/loss_epoch`` (mean training loss), ``val/loss``, ``val/dice_<region>``,
            ``val/dice_mean`` (see :class:`brats_pipeline.callbacks.TrainingCurves`).

    Returns:
        A matplotlib ``Figure`` (read its lines with :func:`figure_lines`, write it with
        :func:`save_figure`).
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None and row.get("epoch") is not None]
        return [float(e) for e, _ in points], [float(v) for _, v in points]

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key, name in (("train/loss_epoch", "train loss"), ("val/loss", "validation loss")):
        xs, ys = series(key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", label=name)
    ax_loss.set_ylabel("loss")
    dice_keys = sorted({k for row in history for k in row if k.startswith("val/dice_")}, key=lambda k: (k.endswith("_mean"), k))
    for key in dice_keys:
        xs, ys = series(key)
        ax_dice.plot(xs, ys, marker="o", label=key.removeprefix("val/dice_"), linewidth=2.5 if key.endswith("mean") else 1.2)
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(0, 1)
    for ax, empty in ((ax_loss, "no loss logged yet"), (ax_dice, "no validation yet")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
        else:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
    fig.tight_layout()
    return fig


def figure_lines(fig: Any) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """What a figure draws: ``{axis y-label: {line label: (x values, y values)}}``, read back from its ``Line2D`` objects."""
    return {
        ax.get_ylabel(): {
            str(line.get_label()): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
            for line in ax.get_lines()
        }
        for ax in fig.axes
    }


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it."""
    return _save(fig, path, dpi=dpi)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Write :func:`training_curves_figure` of ``history`` as a PNG (atomically); returns ``path``."""
    return _save(training_curves_figure(history), path)

