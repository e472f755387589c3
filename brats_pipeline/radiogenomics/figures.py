"""Pictures of the radiogenomics analysis: p-value heat map, features by subtype, how a feature was measured.

Slices are drawn in array index order (x to the right, y up, ``imshow(slice.T, origin="lower")``)
with the in-plane aspect of the affine, so what is drawn is what was measured. Every PNG is
written atomically (:func:`brats_pipeline.viz._save`), with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.radiogenomics.features import FEATURE_LABELS, shape_features
from brats_pipeline.viz import _pyplot, _save


def plot_pvalue_heatmap(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, alpha: float = 0.05) -> Path:
    """Heat map of -log10 p (features x subtypes), each cell annotated with p; a box marks
    Bonferroni-adjusted p < ``alpha``."""
    plt = _pyplot()
    features = list(dict.fromkeys(r["feature"] for r in rows))
    subtypes = list(dict.fromkeys(r["subtype"] for r in rows))
    grid = np.full((len(features), len(subtypes)), np.nan)
    for r in rows:
        grid[features.index(r["feature"]), subtypes.index(r["subtype"])] = r["p"]
    logp = -np.log10(np.clip(grid, 1e-12, 1))
    fig, ax = plt.subplots(figsize=(1.3 * len(subtypes) + 2.5, 0.55 * len(features) + 1.8))
    im = ax.imshow(logp, cmap="viridis", vmin=0, vmax=max(3.0, float(np.nanmax(logp)) if np.isfinite(logp).any() else 3.0), aspect="auto")
    for r in rows:
        i, j = features.index(r["feature"]), subtypes.index(r["subtype"])
        if np.isfinite(r["p"]):
            ax.text(j, i, f"{r['p']:.2g}", ha="center", va="center", fontsize=8, color="white" if logp[i, j] < 1.5 else "black")
        if np.isfinite(r.get("p_bonferroni", np.nan)) and r["p_bonferroni"] < alpha:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(subtypes)), subtypes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(features)), features, fontsize=8)
    fig.colorbar(im, ax=ax, label="-log10 p (Fisher exact)")
    ax.set_title(f"Feature x subtype, Fisher exact p (red box: Bonferroni p < {alpha})", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_feature_by_subtype(
    feature: str,
    features: Mapping[str, Mapping[str, float]],
    clinical: Any,
    matched: Mapping[str, str],
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
) -> Path:
    """One panel per subtype column: box plot and jittered points of ``feature`` by level, the
    dichotomisation threshold dashed, Fisher p in the title."""
    plt = _pyplot()
    subtypes = clinical.subtypes
    ncol = min(4, len(subtypes))
    nrow = math.ceil(len(subtypes) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
    rng = np.random.default_rng(0)
    by_subtype = {r["subtype"]: r for r in rows if r["feature"] == feature}
    for ax, subtype in zip(axes.flat, subtypes):
        row = by_subtype.get(subtype, {})
        levels = [lv for lv in str(row.get("levels", "")).split(";") if lv]
        data = [[features[c][feature] for c, p in matched.items() if clinical.values[p][subtype] == lv
                 and np.isfinite(features[c].get(feature, np.nan))] for lv in levels]
        if any(data):
            ax.boxplot(data, showfliers=False, widths=0.6)
            for k, vals in enumerate(data, start=1):
                ax.scatter(k + rng.uniform(-0.15, 0.15, len(vals)), vals, s=12, alpha=0.7, color="tab:blue")
            ax.set_xticks(range(1, len(levels) + 1), levels)
            if np.isfinite(row.get("threshold", np.nan)):
                ax.axhline(row["threshold"], color="grey", linestyle="--", linewidth=0.8)
        p = row.get("p", float("nan"))
        ax.set_title(f"{subtype}  p = {p:.2g} (n = {row.get('n', 0)})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(subtypes):]:
        ax.axis("off")
    fig.suptitle(f"{feature}: {FEATURE_LABELS.get(feature, feature)} by subtype level (dashed: split)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def measure_case(label_path: str, foreground: Sequence[int] | None = None, **kwargs: Any) -> tuple[Any, ...]:
    """``(measured mask, affine, ellipsoid, margin measurement)`` of one label file, for drawing
    (the measured mask: the largest component unless ``components="all"``)."""
    from brats_pipeline.evaluation import read_label_map
    from brats_pipeline.radiogenomics.features import foreground_mask, measured_part

    labels, affine = read_label_map(label_path)
    mask = foreground_mask(labels, foreground)
    _, ellipsoid, margin = shape_features(mask, affine, return_measurements=True, **kwargs)
    return measured_part(mask, kwargs.get("components", "largest"))[0], affine, ellipsoid, margin


def _draw_case(ax_img: Any, ax_prof: Any, measured: tuple[Any, ...], image_path: str | None, case_id: str, value: float,
               feature: str) -> None:
    mask, affine, ellipsoid, margin = measured
    sx, sy = np.linalg.norm(affine[:3, 0]), np.linalg.norm(affine[:3, 1])
    z = margin.slice_index if margin is not None else int(np.argmax(mask.reshape(-1, mask.shape[2]).sum(0)))
    if image_path:
        from preprocessing.io import read_array

        image, _ = read_array(image_path)
        ax_img.imshow(image[:, :, z].T, origin="lower", cmap="gray", aspect=sy / sx)
    else:
        ax_img.imshow(np.zeros(mask.shape[:2]).T, origin="lower", cmap="gray", aspect=sy / sx)
    shadow = np.ma.masked_where(~mask.any(axis=2), np.ones(mask.shape[:2]))
    ax_img.imshow(shadow.T, origin="lower", cmap="Blues", alpha=0.25, vmin=0, vmax=1.5, aspect=sy / sx)
    ax_img.imshow(np.ma.masked_where(~mask[:, :, z], np.ones(mask.shape[:2])).T, origin="lower", cmap="autumn",
                  alpha=0.35, aspect=sy / sx)
    if ellipsoid is not None:
        proj = ellipsoid.projection(2)
        ax_img.plot(proj[:, 0], proj[:, 1], color="cyan", linewidth=1.2, label="ellipsoid (shadow)")
        cut = ellipsoid.section(2, z)
        if cut is not None:
            ax_img.plot(cut[:, 0], cut[:, 1], color="cyan", linestyle="--", linewidth=1, label="ellipsoid (this slice)")
    if margin is not None:
        b = np.vstack([margin.boundary, margin.boundary[:1]])
        ax_img.plot(b[:, 0], b[:, 1], color="yellow", linewidth=1, label="boundary")
        c = margin.centroid
        ax_img.plot(c[0], c[1], "r+", markersize=10, markeredgewidth=2, label="centroid")
        reach = 1.1 * margin.radial.max()
        for angle in margin.sector_edges:
            ax_img.plot([c[0], c[0] + reach * np.cos(angle) / sx], [c[1], c[1] + reach * np.sin(angle) / sy],
                        color="white", linewidth=0.4, linestyle=":")
        pos = np.arange(len(margin.radial)) / len(margin.radial)
        ax_prof.plot(pos, margin.radial, color="tab:orange", linewidth=1, label="r(s)")
        ax_prof.plot(pos, margin.smoothed, color="black", linewidth=1, label="moving average")
        ax_prof.set_xlabel("position along the boundary (fraction)", fontsize=7)
        ax_prof.set_ylabel("radial distance (mm)", fontsize=7)
        ax_prof.legend(fontsize=6)
        ax_prof.set_title(f"MF {margin.mf:.3f}  ASD {margin.asd:.3f}", fontsize=8)
        lo, hi = margin.boundary.min(0), margin.boundary.max(0)
        pad = 0.25 * max(hi - lo) + 5
        ax_img.set_xlim(lo[0] - pad, hi[0] + pad)
        ax_img.set_ylim(lo[1] - pad, hi[1] + pad)
    else:
        ax_prof.axis("off")
    ax_img.set_title(f"{case_id}\n{feature} = {value:.3g}, slice z = {z}", fontsize=8)
    if ax_img.get_legend_handles_labels()[0]:
        ax_img.legend(fontsize=6, loc="lower right")
    ax_img.tick_params(labelsize=6)


def plot_feature_examples(
    feature: str,
    features: Mapping[str, Mapping[str, float]],
    cases: Mapping[str, Any],
    path: str | os.PathLike,
    foreground: Sequence[int] | None = None,
    cache: dict[str, tuple[Any, ...]] | None = None,
    **kwargs: Any,
) -> Path | None:
    """The cases with the lowest and highest ``feature``: their largest slice with the mask
    (orange), the tumour's shadow along z (blue), boundary (yellow), centroid (red), ASD sectors
    (dotted), the enclosing ellipsoid's shadow and cut (cyan); under each, r(s) and its moving
    average. ``None`` when no case has a value. ``cache`` keeps :func:`measure_case` results
    between calls (the same case is often the extreme of several features)."""
    valued = {c: f[feature] for c, f in features.items() if np.isfinite(f.get(feature, np.nan)) and c in cases}
    if not valued:
        return None
    low, high = min(valued, key=valued.get), max(valued, key=valued.get)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 9), gridspec_kw={"height_ratios": [3, 1.2]})
    for col, cid in enumerate((low, high)):
        case = cases[cid]
        cache = {} if cache is None else cache
        if cid not in cache:
            cache[cid] = measure_case(case.label, foreground, **kwargs)
        _draw_case(axes[0, col], axes[1, col], cache[cid], case.image, cid, valued[cid], feature)
    fig.suptitle(f"{feature} ({FEATURE_LABELS.get(feature, feature)}): lowest (left) and highest (right)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
