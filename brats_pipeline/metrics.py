"""Per-case, per-region segmentation metrics with the BraTS conventions, and their aggregation.

Inputs are boolean **region maps** ``(R, X, Y, Z)`` (one channel per region, e.g. TC, WT, ET,
in ``task.regions`` order) for the prediction and the ground truth, plus the voxel
``spacing`` in mm along ``(X, Y, Z)``. :func:`case_metrics_from_labels` takes label maps and a
:class:`~brats_pipeline.constants.Task` instead.

Per region it reports (:data:`METRIC_NAMES`):

* ``dice``: ``2 TP / (2 TP + FP + FN)``;
* ``iou``: ``TP / (TP + FP + FN)`` (Jaccard);
* ``hd95``: 95th percentile of the surface-to-surface distances in mm, both directions
  pooled, as the official BraTS evaluation computes it (:func:`brats_hd95`, the project's one
  HD95: validation's ``val/hd95_<region>`` and ``brats-evaluate`` both use it);
* ``precision``: ``TP / (TP + FP)`` (positive predictive value);
* ``recall``: ``TP / (TP + FN)`` (sensitivity);
* ``specificity``: ``TN / (TN + FP)``;
* ``pred_volume_ml`` / ``true_volume_ml``: ``voxels * prod(spacing) / 1000``.

**Empty regions (the BraTS challenge convention).** A region may be absent from the truth
(no enhancing tumour) or from the prediction:

* both empty: ``dice = iou = 1``, ``hd95 = 0`` — a correct "nothing here";
* exactly one empty: ``dice = iou = 0``, ``hd95 = empty_hd95`` (default
  :data:`BRATS_EMPTY_HD95` = 373.13 mm, the diagonal of the 240 x 240 x 155 mm BraTS volume,
  as used by the BraTS 2021 evaluation; pass ``float("nan")`` to leave such cases out of the
  HD95 statistics or ``float("inf")`` for "undefined");
* precision and recall, whose denominators are the predicted resp. true volume, follow
  the same rule when that denominator is 0: 1 if both are empty, else 0;
  ``specificity`` is 1 when the truth covers the whole image (no negatives).

**Agreement with the official BraTS evaluation package** (``BraTS_evaluation`` 0.0.10 on
panoptica 2.1.7, its ``global_bin_dsc``/``global_bin_hd95``): Dice and HD95 agree to 1e-7
whenever prediction and truth overlap (tested when that package is installed). Its edge rules
differ: both empty gives NaN, one empty *or no overlap* gives HD95 = inf. Ours give finite
numbers that can be averaged (the BraTS 2021 rule above, and the measured distance for
disjoint non-empty regions); ``empty_hd95=float("inf")`` reproduces its one-empty HD95.

:func:`aggregate` turns per-case results into mean, median, std, min, max and the 5th-95th
percentile (90 %) interval per region and metric.

**Per label** (label maps, any output mode): :func:`label_metrics` gives, for each foreground
label of the task's scheme (BraTS 2021: NCR, ED, ET, named by ``task.label_keys``), the
:data:`LABEL_METRIC_NAMES` of the binary masks ``label == value`` with the same rules
(Dice, IoU, precision, recall; no HD95), and :func:`voxel_accuracy` the share of voxels whose
label is right (background included). ``brats-evaluate`` and the softmax-mode validation
report them beside the regions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task

__all__ = [
    "BRATS_EMPTY_HD95",
    "METRIC_NAMES",
    "STAT_NAMES",
    "METRIC_DEFINITIONS",
    "aggregate",
    "brats_hd95",
    "case_metrics",
    "case_metrics_from_labels",
    "LABEL_METRIC_NAMES",
    "hausdorff_distance",
    "label_metrics",
    "overlap_metrics",
    "region_metrics",
    "voxel_accuracy",
]

#: HD95 (mm) given when exactly one of prediction and truth is empty: the diagonal of the
#: 240 x 240 x 155 mm BraTS volume, sqrt(240^2 + 240^2 + 155^2), as in the BraTS 2021 evaluation.
BRATS_EMPTY_HD95 = math.sqrt(240.0**2 + 240.0**2 + 155.0**2)

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

#: Statistics :func:`aggregate` reports (``p5``/``p95``: the 90 % interval; ``n``: finite values used).
STAT_NAMES = ("mean", "median", "std", "min", "max", "p5", "p95", "n")


def _to_numpy_mask(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != bool:
        if x.size and not np.isin(x, (0, 1)).all():
            raise ValueError(f"{what} must be boolean (or 0/1), got values {np.unique(x)[:5].tolist()}...")
        x = x.astype(bool)
    return x


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must be {ndim} positive numbers (mm per voxel along X, Y, Z), got {spacing!r}"
        )
    return sp


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """``num / den``; for ``den == 0``: 1 if prediction and truth are both empty, else 0."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def hausdorff_distance(
    pred: Any, truth: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0), percentile: float = 95.0
) -> float:
    """Percentile Hausdorff distance (mm) between the surfaces of two **non-empty** masks.

    The surface of a mask is its voxels with a face-neighbour outside it (MONAI
    ``get_mask_edges``). The distances from every predicted-surface voxel to the nearest
    true-surface voxel and from every true-surface voxel to the nearest predicted-surface
    voxel are measured in mm (MONAI ``get_surface_distance`` with ``spacing``), **pooled**,
    and their ``percentile`` is returned (linear interpolation). This is the definition of
    the official BraTS evaluation package (``BraTS_evaluation``/panoptica, after MedPy's
    ``hd95``). MONAI's ``HausdorffDistanceMetric`` instead takes the larger of the two
    directed percentiles, which can be larger. ``percentile=100`` gives the classic
    Hausdorff distance (both definitions agree there).

    Args:
        pred: boolean mask ``(X, Y, Z)``.
        truth: boolean mask of the same shape.
        spacing: voxel size in mm along ``(X, Y, Z)``.
        percentile: in ``(0, 100]``.

    Raises:
        ValueError: shapes differ, a mask is empty, bad spacing or percentile.
    """
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    p = _to_numpy_mask(pred, "pred")
    t = _to_numpy_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    sp = _check_spacing(spacing, p.ndim)
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    if not p.any() or not t.any():
        raise ValueError(
            "hausdorff_distance needs two non-empty masks (see region_metrics for the empty cases)"
        )
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warns about its own internal use of a deprecated get_mask_edges argument.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        edges_p, edges_t = (np.asarray(e) for e in get_mask_edges(p, t, crop=True))
    to_truth = np.asarray(get_surface_distance(edges_p, edges_t, spacing=sp))
    to_pred = np.asarray(get_surface_distance(edges_t, edges_p, spacing=sp))
    return float(np.percentile(np.concatenate([to_truth, to_pred]), percentile))


def brats_hd95(
    pred: Any, truth: Any, spacing: Sequence[float] | None = None, empty_hd95: float = BRATS_EMPTY_HD95
) -> float:
    """The HD95 (mm) of one region, with the BraTS rules for empty masks: the project's one HD95 definition.

    Both masks non-empty: :func:`hausdorff_distance` at the 95th percentile (surface distances of
    both directions pooled). Both empty: 0. Exactly one empty: ``empty_hd95`` (default
    :data:`BRATS_EMPTY_HD95`, 373.13 mm). :func:`region_metrics` (``brats-evaluate``) and the
    validation of :class:`~brats_pipeline.module.BratsSegmentationModule` both call this.

    Args:
        pred: boolean mask (numpy or torch; 0/1 accepted), any number of spatial dimensions.
        truth: boolean mask of the same shape.
        spacing: voxel size in mm per axis (``None``: 1 mm).
        empty_hd95: HD95 when exactly one of the masks is empty.
    """
    p = _to_numpy_mask(pred, "pred")
    t = _to_numpy_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    sp = _check_spacing((1.0,) * p.ndim if spacing is None else spacing, p.ndim)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return float(empty_hd95)
    return hausdorff_distance(p, t, sp, 95.0)


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
    p = _to_numpy_mask(pred, "pred")
    t = _to_numpy_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    if p.ndim != 3:
        raise ValueError(f"expected masks of shape (X, Y, Z), got {p.shape}")
    sp = _check_spacing(spacing, 3)
    overlap = overlap_metrics(p, t, sp)
    overlap["hd95"] = brats_hd95(p, t, sp, empty_hd95)
    return {name: overlap[name] for name in METRIC_NAMES}


def overlap_metrics(pred: Any, truth: Any, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """The voxel-count metrics of :data:`METRIC_NAMES` (all but ``hd95``) of two masks, BraTS rules for empty ones.

    Args:
        pred: boolean mask, any number of dimensions (numpy or torch; 0/1 accepted).
        truth: boolean mask of the same shape.
        spacing: voxel size in mm per axis, for the volumes (``None``: 1 mm).
    """
    p = _to_numpy_mask(pred, "pred")
    t = _to_numpy_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
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
    p = _to_numpy_mask(pred, "pred")
    t = _to_numpy_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
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


def aggregate(cases: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Summary statistics over cases, per region and metric.

    Non-finite values (NaN, inf) are left out and ``n`` counts the values used; with no
    finite value every statistic is NaN. ``std`` is the sample standard deviation
    (``ddof=1``; 0 for a single value); ``p5``/``p95`` are the 5th and 95th percentiles
    (linear interpolation), the 90 % interval.

    Args:
        cases: per-case results as returned by :func:`case_metrics` (same regions and metrics).

    Returns:
        ``{region: {metric: {stat: value}}}`` with the stats of :data:`STAT_NAMES`.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("aggregate needs at least one case")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region, metrics in cases[0].items():
        out[region] = {}
        for metric in metrics:
            try:
                values = np.array([float(c[region][metric]) for c in cases])
            except KeyError as exc:
                raise ValueError(f"a case lacks region/metric {region}/{metric}") from exc
            out[region][metric] = _stats(values[np.isfinite(values)])
    return out


def _stats(v: np.ndarray) -> dict[str, float]:
    if v.size == 0:
        return {**{s: float("nan") for s in STAT_NAMES}, "n": 0}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "p5": float(np.percentile(v, 5)),
        "p95": float(np.percentile(v, 95)),
        "n": int(v.size),
    }
