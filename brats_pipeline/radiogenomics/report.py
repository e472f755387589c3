"""Tables and pages of the radiogenomics analysis: features.csv, associations.csv, summary.md, report.html.

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.radiogenomics.features import FEATURE_LABELS

FEATURE_COLUMNS = ("case_id", "patient_id", "n_voxels", "volume_ml", "bevr", "solidity", "n_components", "kept_fraction",
                   "slice_index", "mf", "asd", "circularity", "elongation")
ASSOCIATION_COLUMNS = ("feature", "subtype", "n", "n_missing_subtype", "n_missing_feature", "threshold", "levels",
                       "table", "p", "p_bonferroni", "p_holm")


def _fmt(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    return value


def features_csv(features: Mapping[str, Mapping[str, float]], matched: Mapping[str, str] | None = None) -> str:
    """``case_id, patient_id, n_voxels, volume_ml, bevr, ...`` one row per case; empty cell = no value."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FEATURE_COLUMNS)
    for cid, f in features.items():
        row = {"case_id": cid, "patient_id": (matched or {}).get(cid, ""), **f}
        writer.writerow([_fmt(row.get(k, "")) for k in FEATURE_COLUMNS])
    return buf.getvalue()


def table_text(table: Sequence[Sequence[int]], levels: str) -> str:
    """``"1:3/2 2:5/4"``: per subtype level, count low/high."""
    return " ".join(f"{lv}:{lo}/{hi}" for lv, (lo, hi) in zip(levels.split(";"), table)) if table else ""


def associations_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per feature x subtype; ``table`` as ``level:low/high`` pairs."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ASSOCIATION_COLUMNS)
    for r in rows:
        writer.writerow([table_text(r["table"], r["levels"]) if k == "table" else _fmt(r.get(k, "")) for k in ASSOCIATION_COLUMNS])
    return buf.getvalue()


def pvalue_table(rows: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> str:
    """Markdown table of p (features x subtypes); ``*`` p < alpha, ``**`` Bonferroni p < alpha."""
    features = list(dict.fromkeys(r["feature"] for r in rows))
    subtypes = list(dict.fromkeys(r["subtype"] for r in rows))
    cell = {(r["feature"], r["subtype"]): r for r in rows}
    lines = ["| feature | " + " | ".join(subtypes) + " |", "| --- |" + " ---: |" * len(subtypes)]
    for f in features:
        out = []
        for s in subtypes:
            r = cell.get((f, s))
            if r is None or not np.isfinite(r["p"]):
                out.append("–")
                continue
            mark = "**" if r["p_bonferroni"] < alpha else "*" if r["p"] < alpha else ""
            out.append(f"{r['p']:.3g}{mark}")
        lines.append(f"| {f} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def top_associations(rows: Sequence[Mapping[str, Any]], k: int = 5) -> list[Mapping[str, Any]]:
    """The ``k`` tests with the smallest p."""
    return sorted((r for r in rows if np.isfinite(r["p"])), key=lambda r: r["p"])[:k]


def summary_markdown(
    rows: Sequence[Mapping[str, Any]],
    matching: Mapping[str, Any],
    n_cases: int,
    source: str,
    failed: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    family: str = "feature",
    figures: Sequence[tuple[str, str]] = (),
    comparison: Sequence[Mapping[str, Any]] | None = None,
    components: str = "largest",
) -> str:
    """The printed summary: counts, the p-value table, the top associations, figure links."""
    n_matched = len(matching["matched"])
    n_tests = sum(1 for r in rows if np.isfinite(r["p"]))
    family_text = "per feature (over the subtype columns)" if family == "feature" else "over all tests"
    lines = [
        f"# Radiogenomics: tumour shape vs genomic subtype ({source} masks)", "",
        f"{n_cases} case(s) measured ({'the largest connected component' if components == 'largest' else 'all components'}"
        f" of each mask), {n_matched} matched to a patient of the clinical table"
        f" ({len(matching['unmatched_cases'])} unmatched case(s), {len(matching['patients_without_case'])} patient(s) without a case"
        f"{f', {len(failed)} case(s) failed' if failed else ''}). {n_tests} Fisher exact tests (feature split at the median of the"
        f" test's patients vs subtype level); Bonferroni/Holm adjusted {family_text}. `*` p < {alpha}, `**` Bonferroni-adjusted"
        f" p < {alpha}.", "",
        pvalue_table(rows, alpha), "",
        "Smallest p values:", "",
        "| feature | subtype | n | missing subtype | table (level:low/high) | p | p Bonferroni | p Holm |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in top_associations(rows):
        lines.append(f"| {r['feature']} | {r['subtype']} | {r['n']} | {r['n_missing_subtype']} | {table_text(r['table'], r['levels'])} |"
                     f" {r['p']:.3g} | {r['p_bonferroni']:.3g} | {r['p_holm']:.3g} |")
    if comparison:
        lines += ["", "Predicted vs manual masks:", "",
                  "| feature | n | Pearson r | Spearman ρ | bias | limits of agreement | same side of median |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        for c in comparison:
            lines.append(f"| {c['feature']} | {c['n']} | {c['pearson_r']:.3f} | {c['spearman_rho']:.3f} | {c['bias']:.3g} |"
                         f" {c['loa_low']:.3g} to {c['loa_high']:.3g} | {c['split_agreement']:.2f} |")
    for cid, why in (failed or {}).items():
        lines.append(f"\nFAILED {cid}: {why}")
    if matching["unmatched_cases"]:
        lines.append(f"\nUnmatched cases: {', '.join(matching['unmatched_cases'])}")
    if figures:
        lines += ["", "Figures:", ""] + [f"- [{title}]({rel})" for title, rel in figures]
    return "\n".join(lines) + "\n"


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    from preprocessing.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _md_table(lines: Sequence[str]) -> dict[str, Any] | None:
    """``{"kind": "table", "header", "rows"}`` of a Markdown table (header, rule, rows); ``None`` without a header and rule."""
    if len(lines) < 2:
        return None
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return {"kind": "table", "header": cells[0], "rows": cells[2:]}


def summary_blocks(summary_md: str) -> tuple[str, list[dict[str, Any]]]:
    """The title (the first ``# `` line) and the blocks of :func:`summary_markdown`'s text: paragraphs,
    headings and tables (the figure links are left out: the page shows the figures)."""
    title: str | None = None
    blocks: list[dict[str, Any]] = []
    table: list[str] = []

    def flush() -> None:
        if table and (block := _md_table(table)) is not None:
            blocks.append(block)
        table.clear()

    for line in summary_md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# ") and title is None:
            title = line[2:].strip()
        elif line.startswith("#"):
            blocks.append({"kind": "h2", "text": line.lstrip("#").strip()})
        elif line.strip() and not line.startswith("- ["):
            blocks.append({"kind": "p", "text": line})
    flush()
    return title or "Radiogenomics", blocks


def report_html(summary_md: str, figures: Sequence[tuple[str, str]], definitions: Sequence[str], embed_dir: Path | None = None) -> str:
    """A self-contained page (no scripts, no external resources) from ``radiogenomics.html.j2``: the
    summary's paragraphs and tables, the definitions, and the figures (``(title, path relative to the
    page)``; linked, or embedded from ``embed_dir``, the page's folder)."""
    from urllib.parse import quote

    from brats_pipeline.reports import image_src, render_template

    title, blocks = summary_blocks(summary_md)
    shown = [{"title": t, "image": {"src": image_src(embed_dir / rel, embed_dir, True) if embed_dir is not None else quote(rel),
                                    "alt": t, "caption": None}} for t, rel in figures]
    return render_template("radiogenomics.html.j2", title=title, notes=[], blocks=blocks, definitions=list(definitions),
                           figures=shown)


DEFINITIONS = (
    "Tumour: every voxel with a label in the foreground set (default any nonzero label); of it, the largest "
    "26-connected component is measured (as the published pipeline does), or with --components all every component "
    "together; n_components counts the mask's components, kept_fraction the share of its voxels measured.",
    "BEVR: voxel count / volume of the minimum-volume enclosing ellipsoid of the union of the voxel cubes (Khachiyan's "
    "algorithm on the convex-hull vertices among the boundary voxels' corners), in index space; affine-invariant.",
    "Solidity: voxel count / volume of the convex hull of the same corners; affine-invariant.",
    "2D features on the slice (across the last array axis) with the most tumour voxels, largest 8-connected component, "
    "holes filled, boundary = 0.5 iso-contour of the component smoothed by a Gaussian of 1 pixel, 360 samples equally "
    "spaced by arc length (mm from the affine's in-plane columns).",
    "MF: std(r - circular moving average of r over 1/10 of the boundary, 37 of the 360 samples) / mean r, r = distance "
    "from the centroid of the component's pixels to the boundary.",
    "ASD: mean over 12 angular sectors of std(r / mean r) within the sector, averaged over 4 rotations of the sector grid.",
    "Circularity 4πA/P² and elongation √(λmin/λmax) of the pixel-centre covariance, on the same slice.",
    "Volume in ml by the affine (for the LGG data, identity affine: voxel count / 1000).",
    "Fisher's exact test (exact network enumeration, two-sided) on level x (low, high) tables; split at the median of "
    "the test's patients (values equal to the median count as low); a patient without a subtype value or feature value "
    "is left out of that test and counted.",
) + tuple(f"{k}: {v}" for k, v in FEATURE_LABELS.items())
