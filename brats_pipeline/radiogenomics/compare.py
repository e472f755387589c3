"""Features from predicted masks against features from the manual masks of the same cases.

Per feature, over the cases with a finite value in both: Pearson r, Spearman ρ, the mean
difference (bias, predicted - manual) with its standard deviation and the Bland-Altman 95 %
limits of agreement (bias ± 1.96 SD), and how often the median split of the predicted value
puts a case on the same side as the manual one (``split_agreement``; what the Fisher tests see).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.radiogenomics.features import FEATURE_LABELS

COMPARISON_COLUMNS = ("feature", "n", "pearson_r", "spearman_rho", "bias", "sd_difference", "loa_low", "loa_high",
                      "mean_manual", "split_agreement")


def compare_features(
    pred: Mapping[str, Mapping[str, float]],
    truth: Mapping[str, Mapping[str, float]],
    feature_names: Sequence[str],
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Agreement of predicted with manual features (module docstring).

    Args:
        pred / truth: ``{case_id: {feature: value}}``; cases in only one of them are ignored.
        feature_names: features to compare.

    Returns:
        ``(rows, pairs)``: one row per feature with :data:`COMPARISON_COLUMNS`; ``pairs`` maps a
        feature to its (predicted, manual) value arrays for plotting.

    Raises:
        ValueError: no case in common.
    """
    from scipy import stats

    common = [c for c in pred if c in truth]
    if not common:
        raise ValueError(f"no case in common between the predictions ({len(pred)}) and the manual masks ({len(truth)})")
    rows, pairs = [], {}
    nan = float("nan")
    for name in feature_names:
        p = np.array([pred[c].get(name, nan) for c in common], dtype=np.float64)
        t = np.array([truth[c].get(name, nan) for c in common], dtype=np.float64)
        ok = np.isfinite(p) & np.isfinite(t)
        p, t = p[ok], t[ok]
        pairs[name] = (p, t)
        row: dict[str, Any] = {"feature": name, "n": int(ok.sum())}
        if len(p) >= 2:
            diff = p - t
            bias, sd = float(diff.mean()), float(diff.std(ddof=1))
            varied = p.std() > 0 and t.std() > 0
            row.update(
                pearson_r=float(stats.pearsonr(p, t)[0]) if varied and len(p) >= 3 else nan,
                spearman_rho=float(stats.spearmanr(p, t)[0]) if varied and len(p) >= 3 else nan,
                bias=bias, sd_difference=sd, loa_low=bias - 1.96 * sd, loa_high=bias + 1.96 * sd, mean_manual=float(t.mean()),
                split_agreement=float(np.mean((p > np.median(p)) == (t > np.median(t)))),
            )
        else:
            row.update({k: nan for k in COMPARISON_COLUMNS[2:]})
        rows.append(row)
    return rows, pairs


def comparison_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison rows as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COMPARISON_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in COMPARISON_COLUMNS})
    return buf.getvalue()


def plot_agreement(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], rows: Sequence[Mapping[str, Any]],
                   path: str | os.PathLike, kind: str = "bland_altman") -> Path:
    """A grid, one panel per feature: Bland-Altman (difference against mean, bias and limits of
    agreement) or ``kind="scatter"`` (predicted against manual, identity line, Pearson r)."""
    from brats_pipeline.viz import _pyplot, _save

    if kind not in ("bland_altman", "scatter"):
        raise ValueError(f"unknown plot kind {kind!r}; choose 'bland_altman' or 'scatter'")
    plt = _pyplot()
    names = list(pairs)
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False)
    by_name = {r["feature"]: r for r in rows}
    for ax, name in zip(axes.flat, names):
        p, t = pairs[name]
        row = by_name[name]
        if kind == "scatter":
            ax.scatter(t, p, s=12)
            if len(p):
                lo, hi = float(min(p.min(), t.min())), float(max(p.max(), t.max()))
                ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8)
            ax.set_xlabel("manual", fontsize=7)
            ax.set_ylabel("predicted", fontsize=7)
            ax.set_title(f"{name}: r = {row.get('pearson_r', float('nan')):.2f} (n = {row['n']})", fontsize=8)
        else:
            ax.scatter((p + t) / 2, p - t, s=12)
            for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
                if np.isfinite(row.get(key, np.nan)):
                    ax.axhline(row[key], color="grey", linestyle=style, linewidth=0.8)
            ax.set_xlabel("mean of predicted and manual", fontsize=7)
            ax.set_ylabel("predicted - manual", fontsize=7)
            ax.set_title(f"{name}: bias {row.get('bias', float('nan')):.3g}, LoA ±{1.96 * row.get('sd_difference', float('nan')):.3g}",
                         fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    title = "Bland-Altman: predicted vs manual masks" if kind == "bland_altman" else "Predicted vs manual masks"
    fig.suptitle(f"{title} ({', '.join(f'{n}: {FEATURE_LABELS.get(n, n)}' for n in names[:3])}, ...)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
