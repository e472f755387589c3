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

Modules, lowest first: :mod:`.masks` (the input checks they share), :mod:`.overlap` (voxel-count
metrics of masks and per label, :func:`voxel_accuracy`), :mod:`.surface` (:func:`hausdorff_distance`,
:func:`brats_hd95`), :mod:`.cases` (:func:`region_metrics`, :func:`case_metrics`,
:func:`case_metrics_from_labels`) and :mod:`.summary` (:func:`aggregate`). Import from
``brats_pipeline.metrics``, the public home of all of them.
"""

from brats_pipeline.metrics.cases import (
    METRIC_DEFINITIONS,
    METRIC_NAMES,
    case_metrics,
    case_metrics_from_labels,
    region_metrics,
)
from brats_pipeline.metrics.overlap import LABEL_METRIC_NAMES, label_metrics, overlap_metrics, voxel_accuracy
from brats_pipeline.metrics.summary import STAT_NAMES, aggregate
from brats_pipeline.metrics.surface import BRATS_EMPTY_HD95, brats_hd95, hausdorff_distance

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
