"""Voxel-count metrics: Dice, IoU, precision, recall, specificity and volumes of two masks, and per label.

:func:`overlap_metrics` (two masks, BraTS rules for empty ones), :func:`label_metrics` (each
foreground label of a task's scheme, :data:`LABEL_METRIC_NAMES`) and :func:`voxel_accuracy`
(label maps). The rules are described in :mod:`brats_pipeline.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task
from brats_pipeline.metrics.masks import _check_spacing, mask_pair

#: Metrics per label of the scheme (:func:`label_metrics`).
LABEL_METRIC_NAMES = ("dice", "iou", "precision", "recall")


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """``num / den``; for ``den == 0``: 1 if prediction and truth are both empty, else 0."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def overlap_metrics(pred: Any, truth: Any, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """The voxel-count metrics of :data:`METRIC_NAMES` (all but ``hd95``) of two masks, BraTS rules for empty ones.

    Args:
        pred: boolean mask, any number of dimensions (numpy or torch; 0/1 accepted).
        truth: boolean mask of the same shape.
        spacing: voxel size in mm per axis, for the volumes (``None``: 1 mm).
    """
    p, t = mask_pair(pred, truth)
    sp = _check_spacing((1.0,) * p.ndim if spacing is None else spacing, p.ndim)
    tp = int(np.count_nonzero(p & t))
    n_pred = int(np.count_nonzero(p))
    n_true = int(np.count_nonzero(t))
    fp, fn = n_pred - tp, n_true - tp
    tn = p.size - tp - fp - fn
    both_empty = n_pred == 0 and n_true == 0
    voxel_ml = float(np.prod(sp)) / 1000.0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, n_pred, both_empty),
        "recall": _ratio(tp, n_true, both_empty),
        "specificity": _ratio(tn, tn + fp, True),
        "pred_volume_ml": n_pred * voxel_ml,
        "true_volume_ml": n_true * voxel_ml,
    }


def _label_arrays(pred_label: Any, true_label: Any, task: Task | None) -> tuple[np.ndarray, np.ndarray]:
    """Two label maps as integer numpy arrays of one shape (values checked against ``task``'s scheme)."""
    p, t = (np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x) for x in (pred_label, true_label))
    if p.shape != t.shape:
        raise ValueError(f"pred and truth label maps differ in shape: {p.shape} vs {t.shape}")
    if task is not None:
        task.check_labels(p, "pred")
        task.check_labels(t, "truth")
    return p.astype(np.int64), t.astype(np.int64)


def label_metrics(pred_label: Any, true_label: Any, task: Task | str) -> dict[str, dict[str, float]]:
    """:data:`LABEL_METRIC_NAMES` for each foreground label of the scheme, from two label maps.

    Each label value ``v`` gives the masks ``pred_label == v`` and ``true_label == v``
    (:func:`overlap_metrics`: both empty -> 1, exactly one empty -> 0).

    Args:
        pred_label: label map in the task's scheme (numpy or torch, any shape).
        true_label: label map of the same shape.
        task: a :class:`~brats_pipeline.constants.Task` or its name.

    Returns:
        ``{label key: {metric: value}}`` in label-value order, keyed by ``task.label_keys``
        (BraTS 2021: ``NCR``, ``ED``, ``ET``).

    Raises:
        ValueError: shapes differ, or values outside the scheme.
    """
    task = get_task(task)
    p, t = _label_arrays(pred_label, true_label, task)
    out = {}
    for value in task.label_values[1:]:
        overlap = overlap_metrics(p == value, t == value)
        out[task.label_keys[value]] = {name: overlap[name] for name in LABEL_METRIC_NAMES}
    return out


def voxel_accuracy(pred_label: Any, true_label: Any) -> float:
    """Share of voxels whose predicted label equals the true one, background included (in [0, 1]).

    Args:
        pred_label: label map (numpy or torch, any shape).
        true_label: label map of the same shape.
    """
    if hasattr(pred_label, "detach") and hasattr(true_label, "detach"):  # two torch tensors: on their device
        if pred_label.shape != true_label.shape:
            raise ValueError(f"pred and truth label maps differ in shape: {tuple(pred_label.shape)} vs {tuple(true_label.shape)}")
        return float((pred_label == true_label).double().mean()) if pred_label.numel() else 1.0
    p, t = _label_arrays(pred_label, true_label, None)
    return float(np.count_nonzero(p == t)) / p.size if p.size else 1.0
