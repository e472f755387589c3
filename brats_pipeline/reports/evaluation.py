"""The evaluation report (``brats-evaluate --report``, ``brats-demo``): ``report.html`` from ``evaluation.html.j2``.

Sections: the summary table per region; missing and failed cases; per region the **best, median
and worst** case (:func:`pick_cases`), each with its metrics and its TP/FP/FN overlay; the Dice box
plot; the training curves (when given); the per-case table (worst first) and the per-case figures.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.reports.render import image, number, write_html

#: The picks of :func:`pick_cases`, in the order the report shows them.
RANKS = ("best", "median", "worst")
#: The metrics shown beside each picked case: (label, metric, decimals).
PICK_METRICS = (("Dice", "dice", 3), ("IoU", "iou", 3), ("HD95 (mm)", "hd95", 2), ("precision", "precision", 3),
                ("recall", "recall", 3), ("true volume (ml)", "true_volume_ml", 2), ("predicted volume (ml)", "pred_volume_ml", 2))


def pick_cases(
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]],
    regions: Sequence[str] | None = None,
    metric: str = "dice",
) -> dict[str, dict[str, str]]:
    """The best, median and worst case of each region by ``metric`` (higher is better).

    Per region the cases with a finite value are ordered by the value, highest first, ties by
    case id (ascending); the best is the first, the worst the last and the median the one at
    index ``(n - 1) // 2`` (an odd number of cases: the median case; an even number: the better
    of the two middle cases). One case may be more than one pick (e.g. a single case is all three).

    Args:
        per_case: ``{case_id: {region: {metric: value}}}``.
        regions: the regions to pick in (default: those of the first case).
        metric: the metric to order by.

    Returns:
        ``{region: {"best": case_id, "median": case_id, "worst": case_id}}``; a region where no
        case has a finite value is left out.
    """
    if regions is None:
        regions = list(next(iter(per_case.values()), {}))
    picks: dict[str, dict[str, str]] = {}
    for region in regions:
        values = [(float(m[region][metric]), cid) for cid, m in per_case.items()
                  if region in m and math.isfinite(float(m[region][metric]))]
        if not values:
            continue
        ordered = [cid for _, cid in sorted(values, key=lambda vc: (-vc[0], vc[1]))]
        picks[region] = {"best": ordered[0], "median": ordered[(len(ordered) - 1) // 2], "worst": ordered[-1]}
    return picks


def outer_region(task: Any, regions: Sequence[str]) -> str:
    """The region with the most labels (BraTS: WT) if among ``regions``, else the first of ``regions``."""
    outer = max(task.regions, key=lambda r: len(r.labels)).name
    return outer if outer in regions else regions[0]


def write_report(
    out_dir: str | os.PathLike,
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]],
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    task: Any,
    case_images: Mapping[str, Sequence[str | os.PathLike]] | None = None,
    training_curves: str | os.PathLike | None = None,
    title: str = "Segmentation report",
    notes: Sequence[str] = (),
    missing: Sequence[str] = (),
    failed: Mapping[str, str] | None = None,
    embed: bool = False,
    overlays: Mapping[str, Mapping[str, str | os.PathLike]] | None = None,
) -> Path:
    """Write ``out_dir/report.html``: summary, best/median/worst cases per region, Dice box plot,
    training curves, per-case table and figures.

    The page has no external resources (no scripts, fonts or CDN), so it opens offline.
    Images are linked relative to the report (keep ``figures/`` beside it) or, with
    ``embed=True``, embedded as base64 so the single HTML file carries everything. Every text
    (title, notes, case ids, reasons) is HTML-escaped.

    Args:
        out_dir: folder of the report; figures it makes go to ``out_dir/figures``.
        per_case: ``{case_id: {region: {metric: value}}}``.
        summary: :func:`brats_pipeline.metrics.aggregate` of ``per_case``.
        task: task name or :class:`~brats_pipeline.constants.Task`.
        case_images: ``{case_id: [PNG paths]}`` shown under each case (e.g. from
            :func:`brats_pipeline.viz.case_figures`).
        training_curves: PNG of the training curves to include (copied into ``figures/``).
        title: page title.
        notes: paragraphs shown under the title (plain text).
        missing: case ids without a prediction.
        failed: ``{case_id: reason}`` of cases that could not be evaluated.
        embed: embed the images as base64.
        overlays: ``{region: {case_id: PNG}}``, the overlay shown with a picked case (e.g. from
            :func:`brats_pipeline.viz.region_overlays`); a pick without one is listed without a figure.

    Returns:
        The path of ``report.html``.
    """
    from brats_pipeline.constants import get_task
    from brats_pipeline.viz.cases import plot_metric_boxplot

    task = get_task(task)
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    case_images = {cid: list(paths) for cid, paths in (case_images or {}).items() if paths}
    regions = list(next(iter(per_case.values()), {}))

    picks = []
    for region, chosen in pick_cases(per_case, regions).items():
        n = sum(1 for m in per_case.values() if region in m and math.isfinite(float(m[region]["dice"])))
        cases = []
        for rank in RANKS:
            cid = chosen[rank]
            png = (overlays or {}).get(region, {}).get(cid)
            cases.append({
                "rank": rank, "case_id": cid, "anchor": cid in case_images,
                "metrics": [(label, per_case[cid][region].get(name), digits) for label, name, digits in PICK_METRICS],
                "image": image(png, out, embed, f"{cid} {region} overlay", f"{rank} {region}: {cid}") if png else None,
            })
        picks.append({"region": region, "n": n, "cases": cases})

    figures = []
    if per_case:
        box = plot_metric_boxplot(per_case, figures_dir / "dice_boxplot.png", "dice", "Dice per region")
        figures.append({"id": "dice", "title": "Dice per region", "image": image(box, out, embed, "Dice box plot")})
    if training_curves is not None and Path(training_curves).is_file():
        curves = figures_dir / "training_curves.png"
        if Path(training_curves).resolve() != curves.resolve():
            shutil.copyfile(training_curves, curves)  # keep the report folder self-contained
        figures.append({"id": "training", "title": "Training curves", "image": image(curves, out, embed, "training curves")})

    case_table, case_sections = None, []
    if per_case:
        key = outer_region(task, regions)
        ordered = sorted(per_case, key=lambda c: per_case[c][key]["dice"])
        rows = [{"case_id": cid, "anchor": cid in case_images, "dice": [per_case[cid][r]["dice"] for r in regions],
                 "hd95": [per_case[cid][r]["hd95"] for r in regions]} for cid in ordered]
        case_table = {"key": key, "regions": regions, "rows": rows}
        for cid in ordered:
            if cid in case_images:
                case_sections.append({
                    "case_id": cid,
                    "dice": ", ".join(f"{r} {number(per_case[cid][r]['dice'])}" for r in regions),
                    "images": [image(p, out, embed, f"{cid} {Path(p).stem}") for p in case_images[cid]],
                })

    region_text = ", ".join(f"{r.name} = labels {sorted(r.labels)}" for r in task.regions)
    return write_html(
        out / "report.html", "evaluation.html.j2",
        title=title, notes=list(notes), task_name=task.name, n_cases=len(per_case), region_text=region_text,
        summary=summary, missing=list(missing), failed=dict(failed or {}), picks=picks, pick_metric="Dice",
        figures=figures, case_table=case_table, case_sections=case_sections,
    )
