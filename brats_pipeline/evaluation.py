"""Evaluate predicted label maps against the truth: per-case metrics, summaries, tables.

Predictions are ``PRED_DIR/<case_id>.nii.gz`` label maps in the task's labels, on the grid of
their truth (``brats-infer`` writes them so); the truth comes from a datalist's entries with a
``label``. Per case and region (``task.regions``: TC, WT, ET) the metrics of
:mod:`brats_pipeline.metrics` (Dice, IoU, HD95 in mm with the truth's voxel spacing,
precision, recall, specificity, predicted and true volumes in ml) are computed with the
BraTS conventions for empty regions (HD95: :func:`brats_pipeline.metrics.brats_hd95`, the one
definition, which training's validation logs too); :func:`brats_pipeline.metrics.aggregate` summarises
them (mean, median, std, min, max, 5th-95th percentile = 90 % interval).

Outputs of :func:`write_evaluation` (all atomic):

* ``metrics.csv`` — one row per case and region: ``case_id,region,dice,iou,hd95,...``;
* ``summary.json`` — ``{"task", "n_cases", "summary": {region: {metric: {stat: value}}},
  "missing": [...], "failed": {case_id: reason}}``;
* ``summary.md`` — the same summary as Markdown tables (Dice and HD95, then all metrics), then
  the per-label table;
* ``label_metrics.csv`` — per label of the scheme (:func:`brats_pipeline.metrics.label_metrics`,
  on the label maps: BraTS 2021 NCR, ED, ET by ``task.label_keys``) one row per case:
  ``case_id,accuracy,dice_NCR,dice_ED,dice_ET,iou_NCR,...,recall_ET`` (``accuracy``: the share
  of voxels with the right label, background included); ``summary.json`` holds them under
  ``labels`` (``summary``, ``accuracy`` statistics, ``per_case``, ``per_case_accuracy``).

Regions are the BraTS challenge's metrics; the per-label ones are what multi-class (softmax)
papers report, and are computed for every evaluation (both output modes write label maps).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task
from brats_pipeline.metrics import (
    BRATS_EMPTY_HD95,
    LABEL_METRIC_NAMES,
    METRIC_NAMES,
    STAT_NAMES,
    aggregate,
    case_metrics_from_labels,
    label_metrics,
    voxel_accuracy,
)


@dataclass
class EvaluationResult:
    """Metrics of a set of cases.

    Attributes:
        task: the task evaluated.
        per_case: ``{case_id: {region: {metric: value}}}`` in case order.
        missing: case ids without a prediction file.
        failed: ``{case_id: reason}`` for cases that could not be evaluated (unreadable file,
            grid mismatch, labels outside the scheme).
        pred_paths / truth_paths: the files of each evaluated case.
        per_case_labels: ``{case_id: {label key: {metric: value}}}`` (:data:`LABEL_METRIC_NAMES`).
        accuracy: ``{case_id: voxel accuracy}``.
    """

    task: Task
    per_case: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pred_paths: dict[str, str] = field(default_factory=dict)
    truth_paths: dict[str, str] = field(default_factory=dict)
    per_case_labels: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every case had a prediction and was evaluated."""
        return not self.missing and not self.failed

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``aggregate`` of the per-case metrics (empty dict when no case was evaluated)."""
        return aggregate(self.per_case.values()) if self.per_case else {}

    def label_summary(self) -> dict[str, Any]:
        """``{"summary": {label: {metric: {stat}}}, "accuracy": {stat}}`` of the per-label metrics (``{}``: none)."""
        if not self.per_case_labels:
            return {}
        accuracy = aggregate({"all": {"accuracy": a}} for a in self.accuracy.values())["all"]["accuracy"]
        return {"summary": aggregate(self.per_case_labels.values()), "accuracy": accuracy}


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a label NIfTI: ``(labels (X, Y, Z) int, affine 4x4)``; errors name the file.

    Raises:
        preprocessing.io.ImageFileError: missing, unreadable, not 3D, non-integer values.
    """
    from preprocessing.io import ImageFileError, read_array

    data, geometry = read_array(path, ndim=(3,), dtype=np.float32)
    if not np.array_equal(data, np.round(data)):
        raise ImageFileError(path, "label map holds non-integer values")
    return data.astype(np.int16), geometry.affine


def evaluate_case(
    pred_path: str | os.PathLike,
    truth_path: str | os.PathLike,
    task: str | Task,
    empty_hd95: float = BRATS_EMPTY_HD95,
    atol: float = 1e-3,
) -> dict[str, dict[str, float]]:
    """Metrics of one predicted label file against its truth (``{region: {metric: value}}``).

    Args:
        pred_path: predicted label map (the task's labels).
        truth_path: ground-truth label map.
        task: task name or :class:`Task`.
        empty_hd95: HD95 (mm) when exactly one of prediction and truth is empty.
        atol: tolerance (mm) of the affine comparison.

    Raises:
        preprocessing.io.ImageFileError: unreadable file, different grids (shape or affine),
            or label values outside the task's scheme (naming the file).
    """
    pred, truth, spacing = read_case_pair(pred_path, truth_path, task, atol)
    return case_metrics_from_labels(pred, truth, task, spacing, empty_hd95)


def read_case_pair(
    pred_path: str | os.PathLike, truth_path: str | os.PathLike, task: str | Task, atol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A predicted label map and its truth, checked to share a grid and the task's labels: ``(pred, truth, spacing)``.

    Raises:
        preprocessing.io.ImageFileError: as :func:`evaluate_case`.
    """
    from preprocessing.io import ImageFileError

    task = get_task(task)
    pred, pred_affine = read_label_map(pred_path)
    truth, truth_affine = read_label_map(truth_path)
    if pred.shape != truth.shape:
        raise ImageFileError(pred_path, f"shape {pred.shape} differs from the truth's {truth.shape} ({truth_path})")
    if not np.allclose(pred_affine, truth_affine, atol=atol):
        raise ImageFileError(pred_path, f"affine differs from the truth's ({truth_path}): not on the same grid")
    for arr, path in ((pred, pred_path), (truth, truth_path)):
        try:
            task.check_labels(arr, str(path))
        except ValueError as exc:
            raise ImageFileError(path, str(exc).split(": ", 1)[-1]) from None
    spacing = tuple(float(s) for s in np.linalg.norm(truth_affine[:3, :3], axis=0))
    return pred, truth, spacing


def evaluate_folder(
    pred_dir: str | os.PathLike,
    entries: Sequence[Mapping[Hashable, Any]],
    task: str | Task,
    empty_hd95: float = BRATS_EMPTY_HD95,
    workers: int = 1,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate ``PRED_DIR/<case_id>.nii.gz`` for every truth entry (``case_id`` + ``label``).

    Cases without a prediction are listed in ``missing``; cases that fail (a bad file, a grid
    mismatch) in ``failed`` with the reason; the others in ``per_case``.

    Args:
        pred_dir: folder of predicted label maps.
        entries: datalist entries with ``case_id`` and ``label``.
        task: task name or :class:`Task`.
        empty_hd95: HD95 (mm) when exactly one of prediction and truth is empty.
        workers: threads evaluating cases concurrently.
        progress: show a tqdm bar.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    task = get_task(task)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder not found")
    result = EvaluationResult(task)
    jobs: list[tuple[str, Path, str]] = []
    for entry in entries:
        cid, label = entry.get("case_id"), entry.get("label")
        if not cid or not label:
            raise ValueError(f"truth entry needs 'case_id' and 'label', got {dict(entry)}")
        pred = pred_dir / f"{cid}.nii.gz"
        if not pred.is_file():
            alt = pred_dir / f"{cid}.nii"
            if not alt.is_file():
                result.missing.append(str(cid))
                continue
            pred = alt
        jobs.append((str(cid), pred, str(label)))

    def one(job: tuple[str, Path, str]) -> tuple[str, Any]:
        cid, pred, label = job
        try:
            p, t, spacing = read_case_pair(pred, label, task)
            return cid, (case_metrics_from_labels(p, t, task, spacing, empty_hd95), label_metrics(p, t, task),
                         voxel_accuracy(p, t))
        except (ValueError, OSError) as exc:
            return cid, exc

    bar = tqdm(total=len(jobs), desc="evaluating", unit="case", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (cid, pred, label), (_, outcome) in zip(jobs, pool.map(one, jobs)):
            bar.update()
            if isinstance(outcome, Exception):
                result.failed[cid] = str(outcome)
            else:
                result.per_case[cid], result.per_case_labels[cid], result.accuracy[cid] = outcome
                result.pred_paths[cid] = str(pred)
                result.truth_paths[cid] = label
    bar.close()
    return result


def metrics_rows(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict[str, Any]]:
    """Flatten per-case metrics into rows ``{case_id, region, <metric>...}``."""
    return [
        {"case_id": cid, "region": region, **{m: float(values[m]) for m in METRIC_NAMES}}
        for cid, regions in per_case.items()
        for region, values in regions.items()
    ]


def metrics_csv(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The per-case, per-region metrics as CSV text (header ``case_id,region,dice,...``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["case_id", "region", *METRIC_NAMES], lineterminator="\n")
    writer.writeheader()
    for row in metrics_rows(per_case):
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


_SHOWN = {"dice": "Dice", "iou": "IoU"}


def label_metrics_csv(result: EvaluationResult) -> str:
    """The per-label metrics as CSV text: one row per case, ``case_id,accuracy,<metric>_<label>...``."""
    keys = result.task.class_names[1:]
    columns = [f"{m}_{k}" for m in LABEL_METRIC_NAMES for k in keys]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "accuracy", *columns])
    for cid, labels in result.per_case_labels.items():
        values = [labels[k][m] for m in LABEL_METRIC_NAMES for k in keys]
        writer.writerow([cid, *(f"{float(v):.6g}" for v in (result.accuracy[cid], *values))])
    return buf.getvalue()


def label_summary_markdown(result: EvaluationResult) -> str:
    """Markdown table of the per-label metrics (mean ± std over cases) and the voxel accuracy; ``""`` without cases."""
    summary = result.label_summary()
    if not summary:
        return ""
    task = result.task
    lines = ["Per label of the label maps (mean ± std over cases):", "",
             "| label | value | " + " | ".join(_SHOWN.get(m, m) for m in LABEL_METRIC_NAMES) + " |",
             "| --- | ---: |" + " ---: |" * len(LABEL_METRIC_NAMES)]
    for value in task.label_values[1:]:
        key = task.label_keys[value]
        stats = summary["summary"][key]
        lines.append(f"| {key} | {value} | " + " | ".join(f"{_fmt(stats[m]['mean'])} ± {_fmt(stats[m]['std'])}"
                                                        for m in LABEL_METRIC_NAMES) + " |")
    acc = summary["accuracy"]
    lines += ["", f"Voxel accuracy (all labels, background included): {_fmt(acc['mean'], 4)} ± {_fmt(acc['std'], 4)}", ""]
    return "\n".join(lines)


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def summary_markdown(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], title: str | None = None, full: bool = True
) -> str:
    """Markdown tables of a summary: Dice and HD95 per region (mean ± std, median, 90 % interval), then all metrics.

    Args:
        summary: ``{region: {metric: {stat: value}}}`` from :func:`brats_pipeline.metrics.aggregate`.
        title: optional heading.
        full: add the table of every metric and statistic after the Dice/HD95 table.
    """
    lines = [f"## {title}", ""] if title else []
    regions = list(summary)
    if not regions:
        return "\n".join([*lines, "_no case evaluated_", ""])
    n = int(next(iter(summary.values()))["dice"]["n"])
    lines += [f"{n} case(s). Dice in [0, 1]; HD95 in mm.", "", "| region | Dice mean ± std | Dice median | Dice 90 % interval "
              "| HD95 mean ± std | HD95 median | HD95 90 % interval |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in regions:
        d, h = summary[r]["dice"], summary[r]["hd95"]
        lines.append(
            f"| {r} | {_fmt(d['mean'])} ± {_fmt(d['std'])} | {_fmt(d['median'])} | {_fmt(d['p5'])}–{_fmt(d['p95'])} "
            f"| {_fmt(h['mean'], 2)} ± {_fmt(h['std'], 2)} | {_fmt(h['median'], 2)} | {_fmt(h['p5'], 2)}–{_fmt(h['p95'], 2)} |"
        )
    if not full:
        return "\n".join(lines) + "\n"
    stats = [s for s in STAT_NAMES if s != "n"]
    lines += ["", "| region | metric | " + " | ".join(stats) + " |", "| --- | --- |" + " ---: |" * len(stats)]
    for r in regions:
        for metric, values in summary[r].items():
            lines.append(f"| {r} | {metric} | " + " | ".join(_fmt(values[s]) for s in stats) + " |")
    return "\n".join(lines) + "\n"


def write_evaluation(result: EvaluationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``metrics.csv``, ``summary.json`` and ``summary.md`` into ``out_dir``; returns their paths."""
    from preprocessing.io import atomic_path, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    paths = {"csv": out / "metrics.csv", "json": out / "summary.json", "markdown": out / "summary.md",
             "labels_csv": out / "label_metrics.csv"}
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(metrics_csv(result.per_case), encoding="utf-8")
    with atomic_path(paths["labels_csv"]) as tmp:
        tmp.write_text(label_metrics_csv(result), encoding="utf-8")
    write_json(
        {
            "task": result.task.name,
            "n_cases": len(result.per_case),
            "summary": summary,
            "missing": result.missing,
            "failed": result.failed,
            "per_case": result.per_case,
            "labels": {"values": {result.task.label_keys[v]: v for v in result.task.label_values[1:]},
                       **result.label_summary(), "per_case": result.per_case_labels,
                       "per_case_accuracy": result.accuracy},
        },
        paths["json"],
    )
    md = summary_markdown(summary, f"{result.task.name}: {len(result.per_case)} case(s)")
    if result.per_case_labels:
        md += "\n" + label_summary_markdown(result)
    if result.missing:
        md += f"\nMissing predictions ({len(result.missing)}): {', '.join(result.missing)}\n"
    if result.failed:
        md += "\nFailed cases:\n" + "".join(f"- {cid}: {why}\n" for cid, why in result.failed.items())
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(md, encoding="utf-8")
    return paths
