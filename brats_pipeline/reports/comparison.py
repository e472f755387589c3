"""Evaluations side by side (``brats-evaluate --external-pred/--external-truth``): ``report.html`` from ``comparison.html.j2``.

Typically two: the **internal** evaluation (cross-validation folds of the training cohort) and
the **external** one (another cohort, e.g. BraTS 2021 without the BraTS 2020 cases). The page
shows each one's summary table (per region: Dice, HD95, IoU, precision, recall as mean ± std,
median and 90 % interval, with the number of cases, missing and failed ones) next to each
other, then the differences of the means from the first evaluation, and links each
evaluation's own report when there is one. ``comparison.md`` holds the same key numbers as one
Markdown table.

Every number cell carries ``data-cohort``, ``data-region``, ``data-metric`` and ``data-stat``
attributes, so the page can be read back by a program.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brats_pipeline.reports.render import number, write_html

#: The metrics of the side-by-side tables: (label, metric, decimals).
COMPARED_METRICS = (("Dice", "dice", 3), ("HD95 (mm)", "hd95", 2), ("IoU", "iou", 3), ("precision", "precision", 3),
                    ("recall", "recall", 3))


@dataclass
class EvaluationSummary:
    """One evaluation to compare.

    Attributes:
        name: its heading (``"internal"``, ``"external"``, ``"BraTS 2021"``).
        summary: ``{region: {metric: {stat: value}}}`` (``summary.json``'s ``summary``).
        n_cases: cases evaluated.
        missing / failed: case ids without a prediction; ``{case_id: reason}`` of failed cases.
        sources: ``{"predictions": ..., "truth": ...}`` shown under the heading.
        report: that evaluation's own ``report.html`` (linked), or ``None``.
        summary_json: its ``summary.json`` (linked), or ``None``.
    """

    name: str
    summary: Mapping[str, Mapping[str, Mapping[str, float]]]
    n_cases: int
    missing: Sequence[str] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    report: str | os.PathLike | None = None
    summary_json: str | os.PathLike | None = None


def _link(path: str | os.PathLike | None, out: Path) -> str | None:
    import urllib.parse

    if path is None:
        return None
    return urllib.parse.quote(os.path.relpath(path, out).replace(os.sep, "/"))


def _regions(evaluations: Sequence[EvaluationSummary]) -> list[str]:
    return list(dict.fromkeys(r for e in evaluations for r in e.summary))


def _difference(a: Any, b: Any) -> float | None:
    if a is None or b is None or not (math.isfinite(float(a)) and math.isfinite(float(b))):
        return None
    return float(b) - float(a)


def comparison_markdown(evaluations: Sequence[EvaluationSummary]) -> str:
    """One Markdown table: per region and metric, each evaluation's mean ± std (median), and the difference of the means."""
    names = [e.name for e in evaluations]
    head = ["region", "metric", *(f"{n} (n={e.n_cases}) mean ± std (median)" for n, e in zip(names, evaluations))]
    head += [f"Δ mean {n} − {names[0]}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for region in _regions(evaluations):
        for label, metric, digits in COMPARED_METRICS:
            stats = [e.summary.get(region, {}).get(metric, {}) for e in evaluations]
            cells = [f"{number(s.get('mean'), digits)} ± {number(s.get('std'), digits)} ({number(s.get('median'), digits)})"
                     for s in stats]
            cells += [number(_difference(stats[0].get("mean"), s.get("mean")), digits) for s in stats[1:]]
            lines.append(f"| {region} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(
    out_dir: str | os.PathLike,
    evaluations: Sequence[EvaluationSummary],
    task: Any,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``out_dir/report.html`` (the summaries side by side) and ``out_dir/comparison.md``.

    Args:
        out_dir: folder of the page; the evaluations' reports and ``summary.json`` are linked relative to it.
        evaluations: two (or more) evaluations; differences are taken from the first.
        task: task name or :class:`~brats_pipeline.constants.Task`.
        title: page title.
        notes: paragraphs under the title (plain text).

    Returns:
        ``{"html": ..., "markdown": ...}``.
    """
    from brats_pipeline.constants import get_task
    from preprocessing.io import atomic_path

    if len(evaluations) < 2:
        raise ValueError(f"a comparison needs two evaluations or more, got {len(evaluations)}")
    if len({e.name for e in evaluations}) < len(evaluations):
        raise ValueError(f"the evaluations compared need distinct names, got {[e.name for e in evaluations]}")
    task = get_task(task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"{task.name}: {' vs '.join(e.name for e in evaluations)}"
    regions = _regions(evaluations)
    cohorts = []
    for i, ev in enumerate(evaluations):
        rows = []
        for region in regions:
            metrics = ev.summary.get(region, {})
            rows.append({"region": region, "n": (metrics.get("dice") or {}).get("n"), "metrics": [
                {"label": label, "metric": metric, "digits": digits, **{s: (metrics.get(metric) or {}).get(s)
                                                                        for s in ("mean", "std", "median", "p5", "p95")}}
                for label, metric, digits in COMPARED_METRICS]})
        cohorts.append({"key": f"c{i}", "name": ev.name, "n_cases": ev.n_cases, "rows": rows, "missing": list(ev.missing),
                        "failed": dict(ev.failed), "sources": dict(ev.sources), "report": _link(ev.report, out),
                        "summary_json": _link(ev.summary_json, out)})
    differences = []
    for region in regions:
        cells = []
        for ev in evaluations[1:]:
            for _, metric, digits in COMPARED_METRICS:
                first = (evaluations[0].summary.get(region, {}).get(metric) or {}).get("mean")
                value = (ev.summary.get(region, {}).get(metric) or {}).get("mean")
                cells.append({"cohort": ev.name, "metric": metric, "digits": digits, "value": _difference(first, value)})
        differences.append({"region": region, "cells": cells})
    html = write_html(
        out / "report.html", "comparison.html.j2",
        title=title, notes=list(notes), task_name=task.name,
        region_text=", ".join(f"{r.name} = labels {sorted(r.labels)}" for r in task.regions), cohorts=cohorts,
        metrics=[{"label": label, "metric": metric} for label, metric, _ in COMPARED_METRICS],
        differences=differences, first=evaluations[0].name, others=[e.name for e in evaluations[1:]],
    )
    markdown = out / "comparison.md"
    with atomic_path(markdown) as tmp:
        tmp.write_text(f"# {title}\n\n" + comparison_markdown(evaluations), encoding="utf-8")
    return {"html": html, "markdown": markdown}
