"""Pictures: training curves, slice overlays, per-case figures, 3D surfaces (and, re-exported, the HTML report).

Arrays are x, y, z (nibabel order) with a 4x4 voxel-to-RAS affine (mm). For display, volumes
are turned to the closest RAS orientation (axes permuted/flipped, never resampled) and shown
in radiological planes with the anatomical superior/anterior side up:

* **axial** — the x-y plane at the centre's z;
* **coronal** — the x-z plane at the centre's y;
* **sagittal** — the y-z plane at the centre's x.

Prediction vs truth comparisons colour **TP green, FP red, FN blue** (:data:`COMPARISON_COLOURS`).
Label maps are coloured by the region each label owns (BraTS: NCR/NET red, oedema green,
enhancing yellow). Every PNG/HTML is written atomically; matplotlib uses the Agg backend.

Modules: :mod:`~brats_pipeline.viz.common` (colours, orientation, slicing, comparison map),
:mod:`~brats_pipeline.viz.curves` (training curves), :mod:`~brats_pipeline.viz.cases` (case and
cohort figures). The HTML pages are built from templates in :mod:`brats_pipeline.reports`.

"""

from __future__ import annotations

from brats_pipeline.viz.cases import (
    case_figures,
    plot_case,
    plot_metric_boxplot,
    plot_overlay,
    plot_surfaces,
    region_overlays,
)
from brats_pipeline.viz.common import (
    COMPARISON_COLOURS,
    PLANES,
    REGION_COLOURS,
    _pyplot,
    _save,
    comparison_map,
    plane_slice,
    to_closest_ras,
    tumour_centre,
)
from brats_pipeline.viz.curves import figure_lines, plot_training_curves, save_figure, training_curves_figure

__all__ = [
    "COMPARISON_COLOURS",
    "PLANES",
    "REGION_COLOURS",
    "_pyplot",
    "_save",
    "case_figures",
    "comparison_map",
    "figure_lines",
    "plane_slice",
    "plot_case",
    "plot_metric_boxplot",
    "plot_overlay",
    "plot_surfaces",
    "plot_training_curves",
    "region_overlays",
    "save_figure",
    "to_closest_ras",
    "training_curves_figure",
    "tumour_centre",
]

