"""The whole analysis: measure every mask, test against the subtypes, write tables, figures and pages.

Outputs in ``out_dir`` (each written atomically):

* ``features.csv`` — one row per case (:data:`~.report.FEATURE_COLUMNS`);
* ``associations.csv`` — one row per feature x subtype (n, left-out counts, split threshold,
  the table, p, Bonferroni and Holm p);
* ``summary.md`` and ``report.html`` — the p-value table, the smallest p values, figures;
* ``figures/pvalues.png`` (heat map), ``figures/by_subtype_<feature>.png`` (box/strip plots),
  ``figures/examples_<feature>.png`` (lowest and highest case, how the feature was measured);
* with manual masks to compare against (``truth``): ``features_manual.csv``,
  ``associations_manual.csv``, ``comparison.csv``, ``figures/bland_altman.png`` and
  ``figures/pred_vs_manual.png``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brats_pipeline.radiogenomics.cases import LabelCase, cohort_features, label_cases
from brats_pipeline.radiogenomics.features import COMPONENT_CHOICES, FEATURES
from brats_pipeline.radiogenomics.report import (
    DEFINITIONS,
    associations_csv,
    features_csv,
    report_html,
    summary_markdown,
    write_text,
)
from brats_pipeline.radiogenomics.stats import ClinicalTable, associations, read_clinical


@dataclass
class RadiogenomicsResult:
    """What :func:`run_radiogenomics` measured and wrote.

    Attributes:
        features: ``{case_id: {feature: value}}``.
        failed: ``{case_id: reason}`` of masks that could not be measured.
        rows: association rows (:func:`~.stats.associations`).
        matching: matched/unmatched ids.
        summary: the Markdown summary (also in ``summary.md``).
        comparison: predicted-vs-manual rows when manual masks were given.
        paths: ``{name: path}`` of every file written.
    """

    features: dict[str, dict[str, float]]
    failed: dict[str, str]
    rows: list[dict[str, Any]]
    matching: dict[str, Any]
    summary: str
    comparison: list[dict[str, Any]] | None = None
    paths: dict[str, Path] = field(default_factory=dict)


def run_radiogenomics(
    labels: str | os.PathLike,
    clinical: str | os.PathLike,
    out_dir: str | os.PathLike,
    source: str = "truth",
    truth: str | os.PathLike | None = None,
    task: str | None = None,
    id_column: str = "Patient",
    subtypes: Sequence[str] | None = None,
    feature_names: Sequence[str] = FEATURES,
    foreground: Sequence[int] | None = None,
    split: str | float = "median",
    family: str = "feature",
    alpha: float = 0.05,
    n_sectors: int = 12,
    window_fraction: float = 0.1,
    components: str = "largest",
    figures: bool = True,
    embed: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> RadiogenomicsResult:
    """Measure, test and report (module docstring for the outputs).

    Args:
        labels: label source (:func:`~.cases.label_cases`): datalist, dataset folder, or a
            folder of ``<case_id>.nii.gz`` label maps (``brats-infer`` output).
        clinical: clinical CSV (:func:`~.stats.read_clinical`).
        out_dir: output folder (created).
        source: ``"truth"`` or ``"pred"``: what ``labels`` are (named in the outputs).
        truth: manual masks of the same cases to compare predicted features with.
        task: layout/task of dataset folders (default ``lgg``; a datalist names its own).
        id_column / subtypes: clinical columns (default ``Patient`` / every ``*Cluster``).
        feature_names: features to test, a subset of :data:`~.features.FEATURES`.
        foreground: label values making the tumour (default any nonzero label).
        split / family / alpha: dichotomisation, correction family, significance level.
        n_sectors / window_fraction: ASD sectors, MF window (fraction of the boundary).
        components: ``"largest"`` (measure the largest connected component, default) or ``"all"``.
        figures: draw the figures (off: tables and pages only).
        embed: embed the figures in ``report.html``.
        workers: threads measuring masks.
        progress: tqdm bars.

    Raises:
        ValueError / FileNotFoundError: bad arguments or inputs (naming them); no mask could be
            measured; no case matches a patient.
    """
    if source not in ("truth", "pred"):
        raise ValueError(f"unknown source {source!r}; choose 'truth' or 'pred'")
    unknown = [f for f in feature_names if f not in FEATURES]
    if unknown or not feature_names:
        raise ValueError(f"unknown feature(s) {unknown or list(feature_names)}; choose from {', '.join(FEATURES)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_sectors < 2 or 3 * n_sectors > 360:
        raise ValueError(f"n_sectors must be between 2 and 120, got {n_sectors}")
    if not 0 < window_fraction < 1:
        raise ValueError(f"window_fraction must be in (0, 1), got {window_fraction}")
    if components not in COMPONENT_CHOICES:
        raise ValueError(f"unknown components {components!r}; choose from {', '.join(COMPONENT_CHOICES)}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    table = read_clinical(clinical, id_column, subtypes)
    cases = label_cases(labels, task)
    truth_cases = label_cases(truth, task) if truth is not None else None
    out = Path(out_dir)
    kwargs = {"n_sectors": n_sectors, "window_fraction": window_fraction, "components": components}
    feats, failed = cohort_features(cases, foreground, workers, progress, **kwargs)
    if not feats:
        raise ValueError(f"{labels}: no mask could be measured ({len(failed)} failed; first: {next(iter(failed.values()), '')})")
    rows, matching = associations(feats, table, feature_names, split, family)
    if not matching["matched"]:
        raise ValueError(f"no case id of {labels} starts with a patient id of {clinical} "
                         f"(e.g. case {next(iter(feats))!r}, patient {next(iter(table.values), '')!r})")
    paths = {"features": write_text(out / "features.csv", features_csv(feats, matching["matched"])),
             "associations": write_text(out / "associations.csv", associations_csv(rows))}
    comparison = None
    figure_list: list[tuple[str, str]] = []
    if truth_cases is not None:
        from brats_pipeline.radiogenomics.compare import compare_features, comparison_csv, plot_agreement

        manual, manual_failed = cohort_features(truth_cases, foreground, workers, progress, **kwargs)
        failed.update({f"{cid} (manual)": why for cid, why in manual_failed.items()})
        manual_rows, manual_matching = associations(manual, table, feature_names, split, family)
        comparison, pairs = compare_features(feats, manual, feature_names)
        paths["features_manual"] = write_text(out / "features_manual.csv", features_csv(manual, manual_matching["matched"]))
        paths["associations_manual"] = write_text(out / "associations_manual.csv", associations_csv(manual_rows))
        paths["comparison"] = write_text(out / "comparison.csv", comparison_csv(comparison))
        if figures:
            plot_agreement(pairs, comparison, out / "figures" / "bland_altman.png")
            plot_agreement(pairs, comparison, out / "figures" / "pred_vs_manual.png", kind="scatter")
            figure_list += [("Bland-Altman, predicted vs manual", "figures/bland_altman.png"),
                            ("Predicted vs manual features", "figures/pred_vs_manual.png")]
    if figures:
        figure_list = _draw_figures(out, rows, feats, table, matching, cases, feature_names, foreground, alpha, kwargs) + figure_list
    summary = summary_markdown(rows, matching, len(feats), source, failed, alpha, family, figure_list, comparison, components)
    paths["summary"] = write_text(out / "summary.md", summary)
    window = max(3, int(round(window_fraction * 360)) | 1)
    definitions = [d.replace("12 angular", f"{n_sectors} angular").replace("1/10 of", f"{window_fraction:g} of")
                   .replace("37 of the 360", f"{window} of the 360") for d in DEFINITIONS]
    paths["report"] = write_text(out / "report.html", report_html(summary, figure_list, definitions, out if embed else None))
    return RadiogenomicsResult(feats, failed, rows, matching, summary, comparison, paths)


def _draw_figures(out: Path, rows: list[dict[str, Any]], feats: dict[str, dict[str, float]], table: ClinicalTable,
                  matching: dict[str, Any], cases: Sequence[LabelCase], feature_names: Sequence[str],
                  foreground: Sequence[int] | None, alpha: float, kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    from brats_pipeline.radiogenomics.figures import (
        plot_feature_by_subtype,
        plot_feature_examples,
        plot_pvalue_heatmap,
    )

    figs = out / "figures"
    plot_pvalue_heatmap(rows, figs / "pvalues.png", alpha)
    listed = [("Fisher exact p, feature x subtype", "figures/pvalues.png")]
    by_id = {c.case_id: c for c in cases}
    for name in feature_names:
        plot_feature_by_subtype(name, feats, table, matching["matched"], rows, figs / f"by_subtype_{name}.png")
        listed.append((f"{name} by subtype", f"figures/by_subtype_{name}.png"))
    cache: dict[str, tuple[Any, ...]] = {}
    for name in feature_names:
        if plot_feature_examples(name, feats, by_id, figs / f"examples_{name}.png", foreground, cache, **kwargs) is not None:
            listed.append((f"How {name} was measured: lowest and highest case", f"figures/examples_{name}.png"))
    return listed
