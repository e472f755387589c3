"""From network outputs to the task's labels: TTA mirrors × ensemble members averaged, then labels.

What :class:`~brats_pipeline.inference.predictor.Predictor` does with logits, in its two output
modes (:func:`brats_pipeline.constants.check_output_mode`):

* ``sigmoid``: one channel per region (``task.regions``: TC, WT, ET for BraTS); probabilities are
  ``sigmoid(logits)``, averaged over mirrors and members, then thresholded per region and painted
  into the task's labels (:func:`~brats_pipeline.inference.postprocess.postprocess`);
* ``softmax``: one channel per class of the label scheme; probabilities are ``softmax(logits)``,
  averaged, then each voxel gets its most likely class's label value
  (:func:`~brats_pipeline.inference.postprocess.postprocess_classes`).

:func:`tta_flips` lists the mirror combinations of test-time augmentation, :func:`average_probabilities`
averages them over the ensemble, :func:`labels_from_probabilities` makes the label map, and
:class:`CasePrediction` is what ``Predictor.predict_case`` returns for a case.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from brats_pipeline.constants import Task
from brats_pipeline.inference.postprocess import PostprocessConfig, postprocess, postprocess_classes


@dataclass
class CasePrediction:
    """The result of one case.

    Attributes:
        case_id: the case.
        label: the task's label map (X, Y, Z) uint8 on the input's grid.
        affine: 4x4 voxel-to-RAS (mm) of the input (and of ``label``).
        probabilities: region probabilities (R, X, Y, Z) float32 on the input's grid, if asked for
            (softmax output mode: class probabilities (C, X, Y, Z)).
        seconds: time spent per stage (``read``, ``compute``, ``postprocess``).
    """

    case_id: str
    label: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def tta_flips(tta_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Mirror combinations as tensor dims of a (B, C, X, Y, Z) batch; ``()`` is the identity.

    Args:
        tta_axes: spatial axes (0 = x, 1 = y, 2 = z) to mirror; every combination is listed.
    """
    dims = [a + 2 for a in tta_axes]
    return [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]


def average_probabilities(
    predict_logits: Callable[[int, tuple[int, ...]], torch.Tensor],
    n_networks: int,
    flips: Sequence[tuple[int, ...]],
    output_mode: str,
) -> torch.Tensor:
    """Probabilities averaged over every ensemble member and TTA mirror.

    Args:
        predict_logits: ``(network_index, flip) -> logits (B, R, X, Y, Z)``, already mirrored back.
        n_networks: ensemble members.
        flips: mirror combinations (:func:`tta_flips`).
        output_mode: ``sigmoid`` (region probabilities) or ``softmax`` (class probabilities).
    """
    total: torch.Tensor | None = None
    count = 0
    for i in range(n_networks):
        for flip in flips:
            logits = predict_logits(i, flip)
            p = torch.softmax(logits, 1) if output_mode == "softmax" else torch.sigmoid(logits)
            total = p if total is None else total.add_(p)
            count += 1
    return total / count


def labels_from_probabilities(
    probabilities: torch.Tensor, task: Task, config: PostprocessConfig, output_mode: str
) -> np.ndarray:
    """Post-process ``(R, X, Y, Z)`` probabilities into the task's label map (X, Y, Z) uint8.

    Thresholding alone runs on the probabilities' device; any other enabled step runs
    on the CPU (scipy) (:func:`~brats_pipeline.inference.postprocess.postprocess`). Softmax
    output mode: class probabilities ``(C, X, Y, Z)``.
    """
    if output_mode == "softmax":  # class probabilities: argmax (on their device), label values
        return postprocess_classes(probabilities, task, config)
    return postprocess(probabilities, task, config)


__all__ = ["CasePrediction", "average_probabilities", "labels_from_probabilities", "tta_flips"]
