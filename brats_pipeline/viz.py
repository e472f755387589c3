"""Pictures: training curves (more views — overlays, 3D renderings, reports — build on this)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def plot_training_curves(history: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Write a PNG with the loss (left) and validation Dice per region (right) against epoch.

    Args:
        history: one dict per epoch with ``epoch`` and logged metrics (``train/loss_epoch``,
            ``val/dice_<region>``, ``val/dice_mean``).
        path: PNG file to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from preprocessing.io import atomic_path

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key, name in (("train/loss_epoch", "train loss"), ("val/loss", "val loss")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, values, marker="o", label=name)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    dice_keys = sorted({k for row in history for k in row if k.startswith("val/dice_")})
    for key in dice_keys:
        ax_dice.plot(epochs, [row.get(key) for row in history], marker="o", label=key.removeprefix("val/dice_"),
                     linewidth=2.5 if key.endswith("mean") else 1.2)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend()
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
