"""A study's comparison of arms (``brats-study report``): ``report.html`` from ``study.html.j2`` and its figures.

Input is the plain dict of :func:`brats_pipeline.study.summary.summarise` (this module imports
nothing of the study package). The page shows the study's settings, the arms and their runs,
the curves of every arm on shared axes (training loss against step, validation loss and mean
validation Dice against epoch; one colour per arm, one line style per fold, the selected epoch
starred), the selected epoch per arm and fold, the statistics of each arm's per-case metrics
(mean, median, min, max, 90 % interval = 5th–95th percentile, n), the paired differences of
every arm from the reference arm with the Wilcoxon signed-rank test, and per-case Dice box plots.

Every number cell carries ``data-arm``, ``data-region``, ``data-metric`` and ``data-stat``
attributes (``data-fold`` in the selection table), so the page can be read back by a program.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brats_pipeline.reports.render import image, write_html
from brats_pipeline.viz import _pyplot

#: Statistics of the summary table, in column order (p5 and p95 are shown as the 90 % interval).
TABLE_STATS = ("mean", "median", "min", "max", "p5", "p95")
_STYLES = ("-", "--", ":", "-.")


def curves_figure(summary: Mapping[str, Any]) -> Any:
    """Training loss vs step, validation loss vs epoch and validation Dice (mean) vs epoch of every arm and fold."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(summary["arms"]):
        colour = colours[i % len(colours)]
        selected = {run["fold"]: run["selection"]["epoch"] for run in arm["runs"] if run.get("selection")}
        runs = summary["curves"].get(arm["name"], {})
        for j, (fold, c) in enumerate(runs.items()):
            style = _STYLES[j % len(_STYLES)]
            label = arm["name"] if len(runs) == 1 else f"{arm['name']}, fold {fold}"
            few = len(c["train_steps"]) < 50  # a sparse log (log_every_n_steps): show its points
            axes[0].plot(c["train_steps"], c["train_loss"], style, color=colour, label=label, linewidth=1,
                         marker="o" if few else None, markersize=3)
            for ax, key in ((axes[1], "val/loss"), (axes[2], "val/dice_mean")):
                values = c["val"].get(key, [])
                ax.plot(c["epochs"], values, style, color=colour, marker="o", markersize=3, label=label)
                if int(fold) in selected and selected[int(fold)] in c["epochs"]:
                    k = c["epochs"].index(selected[int(fold)])
                    ax.plot([c["epochs"][k]], [values[k]], "*", color=colour, markersize=13, markeredgecolor="k")
    for ax, (xlabel, ylabel) in zip(axes, (("step", "training loss"), ("epoch", "validation loss"),
                                           ("epoch", "validation Dice (mean)"))):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dice_boxplot_figure(summary: Mapping[str, Any]) -> Any:
    """Per-case Dice of each arm, one panel per region."""
    plt = _pyplot()
    regions = summary["regions"]
    fig, axes = plt.subplots(1, max(1, len(regions)), figsize=(4 + 3 * len(regions), 4), squeeze=False)
    names = [a["name"] for a in summary["arms"]]
    for ax, region in zip(axes[0], regions):
        data = [[m[region]["dice"] for m in a["per_case"].values() if region in m] for a in summary["arms"]]
        ax.boxplot([d if d else [float("nan")] for d in data])
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(region)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _stat_rows(summary: Mapping[str, Any], metric: str) -> list[dict[str, Any]]:
    rows = []
    for arm in summary["arms"]:
        for region in summary["regions"]:
            stats = arm["summary"].get(region, {}).get(metric, {})
            rows.append({"arm": arm["name"], "region": region, "n": stats.get("n"),
                         **{s: stats.get(s) for s in TABLE_STATS}})
    return rows


def write_study_report(out_dir: str | os.PathLike, summary: Mapping[str, Any], title: str | None = None,
                       embed: bool = False, compared: tuple[tuple[str, str, int], ...] = (("Dice", "dice", 3),
                                                                                         ("HD95 (mm)", "hd95", 2))) -> Path:
    """Write ``out_dir/report.html`` and its figures (``out_dir/figures/``).

    Args:
        out_dir: folder of the page; ``summary.json`` and the CSV tables are linked relative to it.
        summary: :func:`brats_pipeline.study.summary.summarise`'s dict.
        title: page title (default ``Study <name>``).
        embed: embed the figures as base64 (one self-contained HTML file).
        compared: (label, metric, decimals) of the metrics in the tables.

    Returns:
        The path of ``report.html``.
    """
    from brats_pipeline.viz.curves import save_figure

    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    study = summary["study"]
    images = [{"id": "curves", "title": "Curves", "image": image(save_figure(curves_figure(summary), figures / "curves.png"),
                                                                 out, embed, "curves of every arm")}]
    if any(a["per_case"] for a in summary["arms"]):
        images.append({"id": "boxplot", "title": "Per-case Dice", "image": image(
            save_figure(dice_boxplot_figure(summary), figures / "dice_boxplot.png"), out, embed, "per-case Dice per arm")})
    arms = [{"name": a["name"], "key": a["key"][:12], "n_cases": a["n_cases"],
             "overrides": ", ".join(f"{k}={v}" for k, v in a["overrides"].items()),
             "runs": a["runs"]} for a in summary["arms"]]
    tables = [{"label": label, "metric": metric, "digits": digits, "rows": _stat_rows(summary, metric)}
              for label, metric, digits in compared]
    digits = {metric: d for _, metric, d in compared}
    paired = [{**p, "digits": digits.get(p["metric"], 3)} for p in summary["paired"] if p["metric"] in digits]
    return write_html(
        out / "report.html", "study.html.j2",
        title=title or f"Study {study['name']}", notes=[study["description"]] if study["description"] else [],
        study=study, arms=arms, figures=images, tables=tables, paired=paired, incomplete=summary["incomplete"],
        stats=TABLE_STATS,
    )
