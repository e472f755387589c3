"""Figures of cases and cohorts: TP/FP/FN overlays, the per-case 3-plane figure, 3D surfaces,
metric box plots, and the per-case files the evaluation report shows."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.viz.common import (
    _FALLBACK_COLOURS,
    COMPARISON_COLOURS,
    PLANES,
    REGION_COLOURS,
    _aspect,
    _comparison_rgba,
    _label_colours,
    _label_rgba,
    _legend,
    _pyplot,
    _save,
    _window,
    comparison_map,
    plane_slice,
    to_closest_ras,
    tumour_centre,
)


def plot_overlay(
    image: Any,
    pred_mask: Any,
    truth_mask: Any,
    path: str | os.PathLike,
    affine: np.ndarray | None = None,
    centre: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Prediction vs truth of one mask, TP/FP/FN coloured, on the 3 planes through the tumour centre.

    Args:
        image: background volume (X, Y, Z), any intensities.
        pred_mask: predicted mask (X, Y, Z).
        truth_mask: true mask (X, Y, Z).
        path: PNG to write.
        affine: voxel-to-RAS (mm) for orientation and aspect; ``None``: identity.
        centre: voxel (x, y, z) of the planes in the *given* array; default: the centre of mass of the truth.
        title: figure title.
    """
    plt = _pyplot()
    img, spacing = to_closest_ras(np.asarray(image, dtype=np.float32), affine)
    comp, _ = to_closest_ras(comparison_map(pred_mask, truth_mask), affine)
    if centre is None:
        c = tumour_centre((comp == 1) | (comp == 3), comp > 0)
    else:
        marker = np.zeros(np.asarray(image).shape, dtype=np.uint8)
        marker[tuple(int(v) for v in centre)] = 1
        c = tuple(int(v[0]) for v in np.nonzero(to_closest_ras(marker, affine)[0]))
    lo, hi = _window(img)
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    for ax, plane in zip(axes, PLANES):
        ax.imshow(plane_slice(img, plane, c), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=_aspect(plane, spacing))
        ax.imshow(plane_slice(_comparison_rgba(comp), plane, c), origin="lower", aspect=_aspect(plane, spacing))
        ax.set_title(plane)
        ax.axis("off")
    _legend(axes[-1], COMPARISON_COLOURS)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_case(
    image: Any,
    pred_label: Any,
    truth_label: Any,
    task: Any,
    path: str | os.PathLike,
    affine: np.ndarray | None = None,
    title: str | None = None,
    dpi: int = 80,
) -> Path:
    """The per-case 3-plane figure: rows axial/coronal/sagittal through the tumour centre; columns
    image, truth labels, predicted labels, then TP/FP/FN of each region (TC, WT, ET).

    Args:
        image: background volume (X, Y, Z) (e.g. FLAIR).
        pred_label: predicted label map (X, Y, Z) in the task's labels.
        truth_label: true label map (X, Y, Z).
        task: task name or :class:`~brats_pipeline.constants.Task`.
        path: PNG to write.
        affine: voxel-to-RAS (mm) of the arrays.
        title: figure title.
        dpi: resolution.
    """
    from brats_pipeline.constants import get_task

    plt = _pyplot()
    task = get_task(task)
    img, spacing = to_closest_ras(np.asarray(image, dtype=np.float32), affine)
    pred, _ = to_closest_ras(np.asarray(pred_label), affine)
    truth, _ = to_closest_ras(np.asarray(truth_label), affine)
    if not img.shape == pred.shape == truth.shape:
        raise ValueError(f"image {img.shape}, prediction {pred.shape} and truth {truth.shape} must have one shape")
    pred_regions = task.labels_to_regions(pred.astype(np.int64))
    truth_regions = task.labels_to_regions(truth.astype(np.int64))
    c = tumour_centre(truth > 0, pred > 0)
    lo, hi = _window(img)
    colours = _label_colours(task)
    ncols = 3 + len(task.regions)
    fig, axes = plt.subplots(3, ncols, figsize=(2.3 * ncols, 7.2), squeeze=False)
    for row, plane in enumerate(PLANES):
        asp = _aspect(plane, spacing)
        background = plane_slice(img, plane, c)
        layers = [None, _label_rgba(truth, colours), _label_rgba(pred, colours)]
        layers += [_comparison_rgba(comparison_map(pred_regions[i], truth_regions[i])) for i in range(len(task.regions))]
        names = ["image", "truth", "prediction", *(f"{r} TP/FP/FN" for r in task.region_names)]
        for col, (layer, name) in enumerate(zip(layers, names)):
            ax = axes[row, col]
            ax.imshow(background, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=asp)
            if layer is not None:
                ax.imshow(plane_slice(layer, plane, c), origin="lower", aspect=asp)
            if row == 0:
                ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(plane)
    names = {task.labels[v]: colours[v] for v in sorted(colours)}
    _legend(axes[0, 1], names)
    _legend(axes[0, 3], COMPARISON_COLOURS)
    fig.suptitle(title or f"slices through the tumour centre (voxel {c}, RAS)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _mesh(mask: np.ndarray, spacing: Sequence[float], step: int) -> tuple[np.ndarray, np.ndarray] | None:
    from skimage.measure import marching_cubes

    if mask.sum() < 8:
        return None
    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(float(s) for s in spacing), step_size=step)
    return verts - np.asarray(spacing), faces


def plot_surfaces(
    pred_label: Any,
    task: Any,
    path: str | os.PathLike,
    truth_label: Any | None = None,
    affine: np.ndarray | None = None,
    title: str | None = None,
    dpi: int = 80,
) -> Path:
    """3D surface rendering of the tumour regions (marching cubes + matplotlib), truth beside prediction.

    Regions are drawn outermost first and translucent (WT green, TC red, ET yellow); axes in mm (RAS).

    Args:
        pred_label: predicted label map (X, Y, Z).
        task: task name or :class:`~brats_pipeline.constants.Task`.
        path: PNG to write.
        truth_label: true label map (X, Y, Z); ``None`` draws the prediction alone.
        affine: voxel-to-RAS (mm) of the arrays (spacing and orientation).
        title: figure title.
        dpi: resolution.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from brats_pipeline.constants import get_task

    plt = _pyplot()
    task = get_task(task)
    panels = [("prediction", pred_label)] if truth_label is None else [("truth", truth_label), ("prediction", pred_label)]
    order = sorted(range(len(task.regions)), key=lambda i: -len(task.regions[i].labels))
    alphas = {0: 0.15, 1: 0.4, 2: 0.6}
    fig = plt.figure(figsize=(5 * len(panels), 4.6))
    for k, (name, label) in enumerate(panels):
        lab, spacing = to_closest_ras(np.asarray(label), affine)
        extent = np.asarray(lab.shape) * np.asarray(spacing)
        step = max(1, int(max(lab.shape) // 96))
        regions = task.labels_to_regions(lab.astype(np.int64))
        ax = fig.add_subplot(1, len(panels), k + 1, projection="3d")
        for rank, i in enumerate(order):
            mesh = _mesh(regions[i], spacing, step)
            if mesh is None:
                continue
            verts, faces = mesh
            colour = REGION_COLOURS.get(task.regions[i].name, _FALLBACK_COLOURS[rank % len(_FALLBACK_COLOURS)])
            poly = Poly3DCollection(verts[faces], alpha=alphas.get(rank, 0.6), facecolor=colour, edgecolor="none")
            ax.add_collection3d(poly)
        ax.set_xlim(0, extent[0])
        ax.set_ylim(0, extent[1])
        ax.set_zlim(0, extent[2])
        ax.set_box_aspect(tuple(extent))
        ax.view_init(elev=20, azim=-60)
        ax.set_xlabel("x (mm, R)", fontsize=7)
        ax.set_ylabel("y (mm, A)", fontsize=7)
        ax.set_zlabel("z (mm, S)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(name)
    _legend(fig.axes[-1], {task.regions[i].name: REGION_COLOURS.get(task.regions[i].name, _FALLBACK_COLOURS[0]) for i in order})
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_metric_boxplot(
    per_case: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | os.PathLike,
    metric: str = "dice",
    title: str | None = None,
) -> Path:
    """Box plot of one metric per region over cases (points: the cases).

    Args:
        per_case: ``{case_id: {region: {metric: value}}}``.
        path: PNG to write.
        metric: ``dice`` (default), ``hd95``, ...
        title: plot title.
    """
    plt = _pyplot()
    if not per_case:
        raise ValueError("plot_metric_boxplot needs at least one case")
    regions = list(next(iter(per_case.values())))
    data = [[float(c[r][metric]) for c in per_case.values() if np.isfinite(c[r][metric])] for r in regions]
    fig, ax = plt.subplots(figsize=(1.6 * len(regions) + 2.5, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(regions) + 1), regions)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.6, color="k", zorder=3)
    ax.set_ylabel(metric)
    if metric in ("dice", "iou", "precision", "recall", "specificity"):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or f"{metric} per region ({len(per_case)} cases)")
    fig.tight_layout()
    return _save(fig, path)


def case_figures(
    case_id: str,
    image_path: str | os.PathLike,
    pred_path: str | os.PathLike,
    truth_path: str | os.PathLike,
    task: Any,
    out_dir: str | os.PathLike,
    surfaces: bool = True,
) -> list[Path]:
    """Read one case and write ``<case_id>_planes.png`` (and ``<case_id>_surface.png``) into ``out_dir``.

    Args:
        case_id: the case.
        image_path: background volume (one modality file, e.g. FLAIR).
        pred_path: predicted label file.
        truth_path: true label file (same grid).
        task: task name or :class:`~brats_pipeline.constants.Task`.
        out_dir: folder for the PNGs.
        surfaces: also render the 3D surfaces.
    """
    image, pred, truth, affine = _read_case(image_path, pred_path, truth_path)
    out = Path(out_dir)
    paths = [plot_case(image, pred, truth, task, out / f"{case_id}_planes.png", affine, title=case_id)]
    if surfaces:
        paths.append(plot_surfaces(pred, task, out / f"{case_id}_surface.png", truth, affine, title=case_id))
    return paths


def _read_case(image_path: str | os.PathLike, pred_path: str | os.PathLike,
               truth_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image, predicted labels, true labels, affine)`` of one case's files (3D each)."""
    from preprocessing.io import read_array

    image, geometry = read_array(image_path, ndim=(3,))
    pred, _ = read_array(pred_path, ndim=(3,), dtype=np.int16)
    truth, _ = read_array(truth_path, ndim=(3,), dtype=np.int16)
    return image, pred, truth, geometry.affine


def region_overlays(
    case_id: str,
    image_path: str | os.PathLike,
    pred_path: str | os.PathLike,
    truth_path: str | os.PathLike,
    task: Any,
    regions: Sequence[str],
    out_dir: str | os.PathLike,
) -> dict[str, Path]:
    """Read one case once and write ``<case_id>_<region>_overlay.png`` (:func:`plot_overlay`: the
    region's TP/FP/FN on the three planes through its true centre) for each of ``regions``.

    Args:
        case_id: the case.
        image_path: background volume (one modality file, e.g. FLAIR).
        pred_path: predicted label file.
        truth_path: true label file (same grid).
        task: task name or :class:`~brats_pipeline.constants.Task`.
        regions: region names of the task (e.g. ``["WT", "ET"]``).
        out_dir: folder for the PNGs.

    Returns:
        ``{region: PNG path}``.
    """
    from brats_pipeline.constants import get_task

    task = get_task(task)
    image, pred, truth, affine = _read_case(image_path, pred_path, truth_path)
    pred_regions = task.labels_to_regions(pred.astype(np.int64))
    truth_regions = task.labels_to_regions(truth.astype(np.int64))
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for region in regions:
        i = task.region_names.index(region)
        paths[region] = plot_overlay(image, pred_regions[i], truth_regions[i], out / f"{case_id}_{region}_overlay.png",
                                     affine, title=f"{case_id}: {region} (TP green, FP red, FN blue)")
    return paths
