"""Summarise a study's finished runs: curves, selected epochs, per-case metrics, statistics, paired tests; JSON and CSV.

:func:`summarise` reads what :mod:`brats_pipeline.study.runner` wrote (it trains nothing) and
returns one plain dict (``OUT/summary.json``); :func:`write_summary` writes it with the CSV tables:

* ``summary.json`` — ``{"study", "regions", "arms": [{name, index, key, overrides, folder, runs:
  [{fold, status, selection, n_cases, train_seconds, error}], n_cases, per_case: {case_id:
  {region: {metric: value}}}, case_folds: {case_id: fold}, summary: {region: {metric: {stat:
  value}}}}], "paired": [...], "curves": {arm: {fold: curves}}, "incomplete": [{arm, fold,
  status}]}``;
* ``per_case.csv`` — ``arm,fold,case_id,region,dice,iou,hd95,...`` (the runs' own evaluations);
  floats in every CSV are written exactly (shortest round-trip form), so statistics recomputed
  from them equal the tables';
* ``summary.csv`` — ``arm,region,metric,mean,median,std,min,max,p5,p95,n``
  (:func:`brats_pipeline.metrics.aggregate` over every case of every fold of the arm);
* ``paired.csv`` — per arm other than the reference, region and metric: ``n`` paired cases,
  mean and median of ``arm - reference``, the Wilcoxon signed-rank statistic and p value;
* ``selection.csv`` — ``arm,fold,epoch,step,score,val_loss,val_dice,checkpoint``.

Per-case metrics of an arm pool its folds (each case is validated in one fold). **Paired
differences** take the cases both arms evaluated with a finite value, ``arm - reference`` per
case; the test is ``scipy.stats.wilcoxon`` (two-sided, zero differences dropped, SciPy's default
exact/approximate choice) on them. With fewer than 2 pairs, or every difference zero, there is
no test: ``p_value`` is ``None`` and ``note`` says why.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.study.runner import read_marker, run_paths, run_status
from brats_pipeline.study.selection import read_curves
from brats_pipeline.study.spec import Study

#: Metrics compared between arms (paired tests, report tables): (label, metric, decimals).
COMPARED_METRICS = (("Dice", "dice", 3), ("HD95 (mm)", "hd95", 2))
STATS = ("mean", "median", "std", "min", "max", "p5", "p95", "n")


def paired_test(reference: Mapping[str, float], other: Mapping[str, float]) -> dict[str, Any]:
    """Paired ``other - reference`` over the cases both have (finite values), and the Wilcoxon signed-rank test.

    Args:
        reference / other: ``{case_id: value}``.

    Returns:
        ``{"n", "cases", "differences", "mean_difference", "median_difference", "statistic", "p_value", "note"}``
        (``None`` where undefined; see the module docstring).
    """
    import numpy as np

    cases = sorted(c for c in reference if c in other and math.isfinite(float(reference[c])) and math.isfinite(float(other[c])))
    diffs = [float(other[c]) - float(reference[c]) for c in cases]
    out: dict[str, Any] = {"n": len(diffs), "cases": cases, "differences": diffs,
                           "mean_difference": float(np.mean(diffs)) if diffs else None,
                           "median_difference": float(np.median(diffs)) if diffs else None,
                           "statistic": None, "p_value": None, "note": ""}
    if len(diffs) < 2:
        out["note"] = f"n = {len(diffs)}: too few paired cases for a test"
    elif not any(diffs):
        out["note"] = f"all {len(diffs)} differences are zero: no test"
    else:
        from scipy.stats import wilcoxon

        result = wilcoxon(diffs)
        out["statistic"], out["p_value"] = float(result.statistic), float(result.pvalue)
        zeros = sum(d == 0 for d in diffs)
        if zeros:
            out["note"] = f"{zeros} zero difference(s) left out of the ranks"
    return out


def _run_record(study: Study, out: Path, arm: Any, fold: int) -> dict[str, Any]:
    paths, status = run_paths(out, study, arm, fold), run_status(out, study, arm, fold)
    record: dict[str, Any] = {"fold": fold, "status": status, "folder": str(paths.root)}
    trained = read_marker(paths.trained)
    if trained:
        record["train_seconds"] = trained.get("train_seconds")
        record["global_step"] = trained.get("global_step")
    if status == "failed":
        record["error"] = (read_marker(paths.failed) or {}).get("error", "")
    if status == "done":
        done = read_marker(paths.done) or {}
        record["selection"] = done["selection"]
        record["evaluation"] = str(paths.evaluation(int(done["selection"]["epoch"])) / "summary.json")
    return record


def summarise(study: Study, out: str | Path) -> dict[str, Any]:
    """Everything the report shows, read from the runs under ``out`` (see the module docstring).

    Runs that are not done are listed in ``incomplete`` and left out of the statistics.
    """
    import json

    from brats_pipeline.metrics import aggregate

    out = Path(out)
    arms, curves, incomplete, regions = [], {}, [], []
    for index, arm in enumerate(study.arms):
        runs = [_run_record(study, out, arm, fold) for fold in study.folds]
        per_case: dict[str, Any] = {}
        case_folds: dict[str, int] = {}
        curves[arm.name] = {}
        for run in runs:
            paths = run_paths(out, study, arm, run["fold"])
            if paths.metrics.is_file():
                curves[arm.name][str(run["fold"])] = read_curves(paths.metrics).as_dict()
            if run["status"] != "done":
                incomplete.append({"arm": arm.name, "fold": run["fold"], "status": run["status"], "error": run.get("error", "")})
                continue
            evaluation = json.loads(Path(run["evaluation"]).read_text(encoding="utf-8"))
            run["n_cases"] = evaluation["n_cases"]
            for cid, metrics in evaluation["per_case"].items():
                per_case[cid], case_folds[cid] = metrics, run["fold"]
                regions += [r for r in metrics if r not in regions]
        arms.append({"name": arm.name, "index": index, "key": study.arm_key(arm), "overrides": study.resolved_overrides(arm),
                     "runs": runs, "n_cases": len(per_case), "per_case": per_case, "case_folds": case_folds,
                     "summary": aggregate(per_case.values()) if per_case else {}})
    reference = next(a for a in arms if a["name"] == study.reference)
    paired = []
    for arm in arms:
        if arm is reference:
            continue
        for region in regions:
            for _, metric, _ in COMPARED_METRICS:
                values = [{cid: m[region][metric] for cid, m in a["per_case"].items() if region in m}
                          for a in (reference, arm)]
                paired.append({"arm": arm["name"], "reference": reference["name"], "region": region, "metric": metric,
                               **paired_test(*values)})
    return {
        "study": {"path": str(study.path), "name": study.name, "description": study.description,
                  "base_config": str(study.base_config), "datalist": str(study.require_datalist()), "folds": study.folds,
                  "seed": study.seed, "selection_rule": study.selection.as_dict(),
                  "selection_text": study.selection.describe(), "reference": study.reference},
        "regions": regions, "arms": arms, "paired": paired, "curves": curves, "incomplete": incomplete,
    }


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])  # floats exactly
    return buf.getvalue()


def summary_tables(summary: Mapping[str, Any]) -> dict[str, str]:
    """The CSV texts: ``per_case``, ``summary``, ``paired`` and ``selection`` (see the module docstring)."""
    from brats_pipeline.metrics import METRIC_NAMES

    per_case, stats, selection = [], [], []
    for arm in summary["arms"]:
        for cid, regions in arm["per_case"].items():
            for region, metrics in regions.items():
                per_case.append([arm["name"], arm["case_folds"][cid], cid, region, *(metrics.get(m) for m in METRIC_NAMES)])
        for region, metrics in arm["summary"].items():
            for metric, values in metrics.items():
                stats.append([arm["name"], region, metric, *(values.get(s) for s in STATS)])
        for run in arm["runs"]:
            sel = run.get("selection")
            if sel:
                selection.append([arm["name"], run["fold"], sel["epoch"], sel["step"], sel["score"], sel["val_loss"],
                                  sel["val_dice"], sel["checkpoint"]])
    paired = [[p["arm"], p["reference"], p["region"], p["metric"], p["n"], p["mean_difference"], p["median_difference"],
               p["statistic"], p["p_value"], p["note"]] for p in summary["paired"]]
    return {
        "per_case": _csv(["arm", "fold", "case_id", "region", *METRIC_NAMES], per_case),
        "summary": _csv(["arm", "region", "metric", *STATS], stats),
        "paired": _csv(["arm", "reference", "region", "metric", "n", "mean_difference", "median_difference", "statistic",
                        "p_value", "note"], paired),
        "selection": _csv(["arm", "fold", "epoch", "step", "score", "val_loss", "val_dice", "checkpoint"], selection),
    }


def write_summary(summary: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``summary.json`` and the CSV tables into ``out`` (atomically); returns their paths by name."""
    from preprocessing.outputs import atomic_path, write_json

    out = Path(out)
    paths = {"json": write_json(summary, out / "summary.json")}
    for name, text in summary_tables(summary).items():
        paths[name] = out / f"{name}.csv"
        with atomic_path(paths[name]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
