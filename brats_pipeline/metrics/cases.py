"""Metrics of a case: :data:`METRIC_NAMES` for one region, for every region of a region map, or from label maps.

:func:`region_metrics` joins :func:`~brats_pipeline.metrics.overlap.overlap_metrics` and
:func:`~brats_pipeline.metrics.surface.brats_hd95`; :func:`case_metrics` runs it per region
channel; :func:`case_metrics_from_labels` converts label maps with the task first.
:data:`METRIC_DEFINITIONS` states the definitions as bundles' ``metadata.json`` do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from brats_pipeline.constants import Task, get_task
from brats_pipeline.metrics.masks import _check_spacing, mask_pair
from brats_pipeline.metrics.overlap import overlap_metrics
from brats_pipeline.metrics.surface import BRATS_EMPTY_HD95, brats_hd95

METRIC_NAMES = (
    "dice",
    "iou",
    "hd95",
    "precision",
    "recall",
    "specificity",
    "pred_volume_ml",
    "true_volume_ml",
)

#: Metrics per label of the scheme (:func:`label_metrics`).
LABEL_METRIC_NAMES = ("dice", "iou", "precision", "recall")

#: The definitions behind the metric names, as a bundle's ``metadata.json`` states them (``metric_definitions``).
METRIC_DEFINITIONS = {
    "dice": "per region, 2 TP / (2 TP + FP + FN) of the binary region masks; 1 when prediction and truth are both "
            "empty, 0 when exactly one is (BraTS convention); validation (val_dice_*) and brats-evaluate alike",
    "hd95": "per region, the BraTS HD95 (brats_pipeline.metrics.brats_hd95): 95th percentile of the surface-to-surface "
            "distances in mm (voxel spacing from the affine), both directions pooled, as the official BraTS "
            "evaluation computes it; 0 when prediction and truth are both empty, 373.13 mm (the diagonal of the "
            "240 x 240 x 155 mm BraTS volume) when exactly one is; validation (val_hd95_*) and brats-evaluate alike",
}


def region_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    empty_hd95: float = BRATS_EMPTY_HD95,
) -> dict[str, float]:
    """All :data:`METRIC_NAMES` for one region.

    Args:
        pred: boolean mask ``(X, Y, Z)`` (numpy or torch; 0/1 integers accepted).
        truth: boolean mask of the same shape.
        spacing: voxel size in mm along ``(X, Y, Z)``.
        empty_hd95: HD95 when exactly one of the masks is empty (see the module docstring).

    Returns:
        ``{metric name: value}``.
    """
    p, t = mask_pair(pred, truth)
    if p.ndim != 3:
        raise ValueError(f"expected masks of shape (X, Y, Z), got {p.shape}")
    sp = _check_spacing(spacing, 3)
    overlap = overlap_metrics(p, t, sp)
    overlap["hd95"] = brats_hd95(p, t, sp, empty_hd95)
    return {name: overlap[name] for name in METRIC_NAMES}



def case_metrics(
    pred: Any,
    truth: Any,
    spacing: Sequence[float],
    region_names: Sequence[str],
    empty_hd95: float = BRATS_EMPTY_HD95,
) -> dict[str, dict[str, float]]:
    """Metrics of one case for every region.

    Args:
        pred: boolean region map ``(R, X, Y, Z)`` (numpy or torch).
        truth: boolean region map of the same shape.
        spacing: voxel size in mm along ``(X, Y, Z)``.
        region_names: ``R`` distinct names, in channel order (e.g. ``task.region_names``).
        empty_hd95: HD95 when exactly one of prediction and truth is empty.

    Returns:
        ``{region name: {metric name: value}}``.
    """
    p, t = mask_pair(pred, truth)
    if p.ndim != 4:
        raise ValueError(f"expected region maps of shape (R, X, Y, Z), got {p.shape}")
    names = tuple(region_names)
    if len(names) != p.shape[0] or len(set(names)) != len(names):
        raise ValueError(f"region_names must be {p.shape[0]} distinct names (one per channel), got {names!r}")
    return {name: region_metrics(p[i], t[i], spacing, empty_hd95) for i, name in enumerate(names)}


def case_metrics_from_labels(
    pred_label: Any,
    true_label: Any,
    task: Task | str,
    spacing: Sequence[float],
    empty_hd95: float = BRATS_EMPTY_HD95,
) -> dict[str, dict[str, float]]:
    """Metrics of one case from label maps: converts with ``task.labels_to_regions`` first.

    Args:
        pred_label: label map ``(X, Y, Z)`` or ``(1, X, Y, Z)`` in the task's label scheme.
        true_label: label map of the same spatial shape.
        task: a :class:`~brats_pipeline.constants.Task` or its name (``"brats2021"``).
        spacing: voxel size in mm along ``(X, Y, Z)``.
        empty_hd95: HD95 when exactly one of prediction and truth is empty.

    Returns:
        ``{region name: {metric name: value}}`` for ``task.regions``.

    Raises:
        ValueError: label values outside the task's scheme, or shape mismatch.
    """
    task = get_task(task)
    pred = task.labels_to_regions(pred_label)
    truth = task.labels_to_regions(true_label)
    return case_metrics(pred, truth, spacing, task.region_names, empty_hd95)
