"""Pictures: training curves, slice overlays, per-case figures, 3D surfaces, the HTML report.

Arrays are x, y, z (nibabel order) with a 4x4 voxel-to-RAS affine (mm). For display, volumes
are turned to the closest RAS orientation (axes permuted/flipped, never resampled) and shown
in radiological planes with the anatomical superior/anterior side up:

* **axial** — the x-y plane at the centre's z;
* **coronal** — the x-z plane at the centre's y;
* **sagittal** — the y-z plane at the centre's x.

Prediction vs truth comparisons colour **TP green, FP red, FN blue** (:data:`COMPARISON_COLOURS`).
Label maps are coloured by the region each label owns (BraTS: NCR/NET red, oedema green,
enhancing yellow). Every PNG/HTML is written atomically; matplotlib uses the Agg backend.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: RGB colours of the prediction-vs-truth comparison classes.
COMPARISON_COLOURS = {"TP": (0.10, 0.75, 0.20), "FP": (0.90, 0.10, 0.10), "FN": (0.15, 0.45, 1.00)}
#: Colours of regions (label maps are coloured by the region each label owns).
REGION_COLOURS = {"WT": (0.20, 0.75, 0.25), "TC": (0.90, 0.15, 0.15), "ET": (1.00, 0.85, 0.10)}
_FALLBACK_COLOURS = ((0.60, 0.30, 0.90), (0.10, 0.70, 0.80), (0.95, 0.50, 0.10), (0.55, 0.55, 0.55))
PLANES = ("axial", "coronal", "sagittal")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    from preprocessing.io import atomic_path

    plt = _pyplot()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def training_curves_figure(history: Sequence[Mapping[str, float]]) -> Any:
    """A figure of the loss (left: training and validation) and validation Dice per region (right) against epoch.

    Each line has a point exactly where its metric is in ``history`` (validation may run only
    every few epochs); an axis with nothing to draw says so.

    Args:
        history: one dict per finished epoch with ``epoch`` and the metrics logged for it:
            ``train/loss_epoch`` (mean training loss), ``val/loss``, ``val/dice_<region>``,
            ``val/dice_mean`` (see :class:`brats_pipeline.callbacks.TrainingCurves`).

    Returns:
        A matplotlib ``Figure`` (read its lines with :func:`figure_lines`, write it with
        :func:`save_figure`).
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None and row.get("epoch") is not None]
        return [float(e) for e, _ in points], [float(v) for _, v in points]

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key, name in (("train/loss_epoch", "train loss"), ("val/loss", "validation loss")):
        xs, ys = series(key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", label=name)
    ax_loss.set_ylabel("loss")
    dice_keys = sorted({k for row in history for k in row if k.startswith("val/dice_")}, key=lambda k: (k.endswith("_mean"), k))
    for key in dice_keys:
        xs, ys = series(key)
        ax_dice.plot(xs, ys, marker="o", label=key.removeprefix("val/dice_"), linewidth=2.5 if key.endswith("mean") else 1.2)
    ax_dice.set_ylabel("validation Dice")
    ax_dice.set_ylim(0, 1)
    for ax, empty in ((ax_loss, "no loss logged yet"), (ax_dice, "no validation yet")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
        else:
            ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
    fig.tight_layout()
    return fig


def figure_lines(fig: Any) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """What a figure draws: ``{axis y-label: {line label: (x values, y values)}}``, read back from its ``Line2D`` objects."""
    return {
        ax.get_ylabel(): {
            str(line.get_label()): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
            for line in ax.get_lines()
        }
        for ax in fig.axes
    }


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it."""
    return _save(fig, path, dpi=dpi)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Write :func:`training_curves_figure` of ``history`` as a PNG (atomically); returns ``path``."""
    return _save(training_curves_figure(history), path)


# ----------------------------------------------------------------------------- geometry helpers
def to_closest_ras(array: np.ndarray, affine: np.ndarray | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Permute/flip the first three axes of ``array`` to the closest RAS orientation (no resampling).

    Returns:
        ``(array, spacing)`` with spacing in mm along the new x, y, z.
    """
    import nibabel as nib

    array = np.asarray(array)
    if affine is None:
        return array, (1.0, 1.0, 1.0)
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = nib.orientations.apply_orientation(array, ornt)
    new_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        new_spacing[int(target)] = float(spacing[axis])
    return out, tuple(new_spacing)  # type: ignore[return-value]


def tumour_centre(*masks: Any) -> tuple[int, int, int]:
    """Voxel (x, y, z) at the centre of mass of the first non-empty mask (else the volume centre)."""
    from scipy.ndimage import center_of_mass

    shape = np.asarray(masks[0]).shape
    for mask in masks:
        m = np.asarray(mask) > 0
        if m.any():
            return tuple(int(round(c)) for c in center_of_mass(m))  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def plane_slice(volume: np.ndarray, plane: str, centre: Sequence[int]) -> np.ndarray:
    """The 2D slice of an x, y, z[, c] volume through ``centre``, transposed for ``imshow(origin="lower")``."""
    v = np.asarray(volume)
    if plane == "axial":
        s = v[:, :, centre[2]]
    elif plane == "coronal":
        s = v[:, centre[1], :]
    elif plane == "sagittal":
        s = v[centre[0], :, :]
    else:
        raise ValueError(f"unknown plane {plane!r}; choose one of {PLANES}")
    return np.swapaxes(s, 0, 1)


def _aspect(plane: str, spacing: Sequence[float]) -> float:
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[plane]


def comparison_map(pred: Any, truth: Any) -> np.ndarray:
    """0 = TN, 1 = TP, 2 = FP (predicted, not true), 3 = FN (true, missed); same shape as the masks."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"pred and truth shapes differ: {p.shape} vs {t.shape}")
    out = np.zeros(p.shape, dtype=np.uint8)
    out[p & t] = 1
    out[p & ~t] = 2
    out[~p & t] = 3
    return out


def _comparison_rgba(comp: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    rgba = np.zeros((*comp.shape, 4), dtype=np.float32)
    for value, name in ((1, "TP"), (2, "FP"), (3, "FN")):
        rgba[comp == value] = (*COMPARISON_COLOURS[name], alpha)
    return rgba


def _label_colours(task: Any) -> dict[int, tuple[float, float, float]]:
    """Label value -> colour of the region that owns it."""
    colours: dict[int, tuple[float, float, float]] = {}
    for k, (channel, value) in enumerate(task._painting):
        name = task.regions[channel].name
        colours[int(value)] = REGION_COLOURS.get(name, _FALLBACK_COLOURS[k % len(_FALLBACK_COLOURS)])
    return colours


def _label_rgba(label: np.ndarray, colours: Mapping[int, tuple[float, float, float]], alpha: float = 0.55) -> np.ndarray:
    rgba = np.zeros((*label.shape, 4), dtype=np.float32)
    for value, colour in colours.items():
        rgba[label == value] = (*colour, alpha)
    return rgba


def _window(image: np.ndarray) -> tuple[float, float]:
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    lo, hi = np.percentile(values, [1, 99.5]) if values.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def _legend(ax: Any, items: Mapping[str, tuple[float, float, float]]) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=n) for n, c in items.items()], loc="lower right", fontsize=7, framealpha=0.7)


# ----------------------------------------------------------------------------- figures
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
    from preprocessing.io import read_array

    image, geometry = read_array(image_path, ndim=(3,))
    pred, _ = read_array(pred_path, ndim=(3,), dtype=np.int16)
    truth, _ = read_array(truth_path, ndim=(3,), dtype=np.int16)
    out = Path(out_dir)
    paths = [plot_case(image, pred, truth, task, out / f"{case_id}_planes.png", geometry.affine, title=case_id)]
    if surfaces:
        paths.append(plot_surfaces(pred, task, out / f"{case_id}_surface.png", truth, geometry.affine, title=case_id))
    return paths


# ----------------------------------------------------------------------------- report
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.bad{background:#fde8e8}.muted{color:#777;font-size:.85em}section.case{margin-bottom:2em}
"""


def _img_tag(path: Path, report_dir: Path, embed: bool, alt: str) -> str:
    if embed:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    else:
        src = os.path.relpath(path, report_dir).replace(os.sep, "/")
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


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
) -> Path:
    """Write ``out_dir/report.html``: summary table, Dice box plot, per-case table and figures.

    The page has no external resources (no scripts, fonts or CDN), so it opens offline.
    Images are linked relative to the report (keep ``figures/`` beside it) or, with
    ``embed=True``, embedded as base64 so the single HTML file carries everything.

    Args:
        out_dir: folder of the report; figures it makes go to ``out_dir/figures``.
        per_case: ``{case_id: {region: {metric: value}}}``.
        summary: :func:`brats_pipeline.metrics.aggregate` of ``per_case``.
        task: task name or :class:`~brats_pipeline.constants.Task`.
        case_images: ``{case_id: [PNG paths]}`` shown under each case (e.g. from :func:`case_figures`).
        training_curves: PNG of the training curves to include.
        title: page title.
        notes: paragraphs shown under the title (plain text).
        missing: case ids without a prediction.
        failed: ``{case_id: reason}`` of cases that could not be evaluated.
        embed: embed the images as base64.

    Returns:
        The path of ``report.html``.
    """
    from brats_pipeline.constants import get_task
    from preprocessing.io import atomic_path

    task = get_task(task)
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    parts += [f"<p>{esc(n)}</p>" for n in notes]
    parts.append(f"<p class=\"muted\">task {esc(task.name)}; {len(per_case)} case(s) evaluated; regions "
                 f"{esc(', '.join(f'{r.name} = labels {sorted(r.labels)}' for r in task.regions))}. "
                 "Dice in [0, 1], HD95 in mm; 90 % interval = 5th–95th percentile.</p>")
    # summary table
    parts.append("<h2>Summary</h2>")
    if summary:
        parts.append("<table><tr><th class=\"l\">region</th><th>Dice mean ± std</th><th>Dice median</th><th>Dice 90 % interval</th>"
                     "<th>HD95 mean</th><th>HD95 median</th><th>IoU mean</th><th>precision mean</th><th>recall mean</th>"
                     "<th>true volume (ml)</th></tr>")
        for region, m in summary.items():
            d = m["dice"]
            parts.append(
                f"<tr><td class=\"l\">{esc(region)}</td><td>{_num(d['mean'])} ± {_num(d['std'])}</td><td>{_num(d['median'])}</td>"
                f"<td>{_num(d['p5'])}–{_num(d['p95'])}</td><td>{_num(m['hd95']['mean'], 2)}</td><td>{_num(m['hd95']['median'], 2)}</td>"
                f"<td>{_num(m['iou']['mean'])}</td><td>{_num(m['precision']['mean'])}</td><td>{_num(m['recall']['mean'])}</td>"
                f"<td>{_num(m['true_volume_ml']['mean'], 2)}</td></tr>"
            )
        parts.append("</table>")
    if missing:
        parts.append(f"<p class=\"bad\">Missing predictions ({len(missing)}): {esc(', '.join(missing))}</p>")
    for cid, why in (failed or {}).items():
        parts.append(f"<p class=\"bad\">Failed: {esc(cid)}: {esc(why)}</p>")
    if per_case:
        box = plot_metric_boxplot(per_case, figures / "dice_boxplot.png", "dice", "Dice per region")
        parts += ["<h2>Dice per region</h2>", _img_tag(box, out, embed, "Dice box plot")]
    if training_curves is not None and Path(training_curves).is_file():
        curves = figures / "training_curves.png"
        if Path(training_curves).resolve() != curves.resolve():
            import shutil

            shutil.copyfile(training_curves, curves)  # keep the report folder self-contained
        parts += ["<h2>Training curves</h2>", _img_tag(curves, out, embed, "training curves")]
    # per-case table, worst outermost-region Dice first
    if per_case:
        regions = list(next(iter(per_case.values())))
        outer = task.regions[max(range(len(task.regions)), key=lambda i: len(task.regions[i].labels))].name
        key = outer if outer in regions else regions[0]
        ordered = sorted(per_case, key=lambda c: per_case[c][key]["dice"])
        parts.append(f"<h2>Cases</h2><p class=\"muted\">sorted by {esc(key)} Dice, worst first</p><table><tr><th class=\"l\">case</th>"
                     + "".join(f"<th>Dice {esc(r)}</th>" for r in regions) + "".join(f"<th>HD95 {esc(r)}</th>" for r in regions) + "</tr>")
        for cid in ordered:
            link = f"<a href=\"#case-{esc(cid)}\">{esc(cid)}</a>" if case_images and cid in case_images else esc(cid)
            parts.append(f"<tr><td class=\"l\">{link}</td>" + "".join(f"<td>{_num(per_case[cid][r]['dice'])}</td>" for r in regions)
                         + "".join(f"<td>{_num(per_case[cid][r]['hd95'], 2)}</td>" for r in regions) + "</tr>")
        parts.append("</table>")
        for cid in ordered:
            images = (case_images or {}).get(cid, [])
            if not images:
                continue
            dice = ", ".join(f"{r} {_num(per_case[cid][r]['dice'])}" for r in regions)
            parts.append(f"<section class=\"case\" id=\"case-{esc(cid)}\"><h3>{esc(cid)}</h3><p class=\"muted\">Dice: {esc(dice)}</p>")
            parts += [_img_tag(Path(p), out, embed, f"{cid} {Path(p).stem}") for p in images]
            parts.append("</section>")
    parts.append("<p class=\"muted\">TP green, FP red, FN blue. Label colours: the region each label owns "
                 "(WT-only label green, TC-only label red, ET yellow).</p></body></html>\n")
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
