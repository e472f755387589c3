"""Overlap removal: :func:`find_overlap` applies one rule, :func:`remove_overlap` drops the cases found.

The rule is the name mapping when a CSV is given (:mod:`brats_pipeline.data.overlap.by_name`),
else image content (:mod:`brats_pipeline.data.overlap.by_content`); the package docstring
(:mod:`brats_pipeline.data.overlap`) describes both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from brats_pipeline.constants import get_task
from brats_pipeline.data.overlap.by_content import match_by_content
from brats_pipeline.data.overlap.by_name import match_by_name
from brats_pipeline.data.overlap.cohorts import Cohort, OverlapReport, datalist_modalities, load_cohort


def find_overlap(
    test: Cohort,
    training: Sequence[Cohort],
    name_mapping: str | os.PathLike | None = None,
    mapping_columns: Sequence[str] | None = None,
    require: str = "any",
    workers: int = 1,
    progress: bool = False,
) -> OverlapReport:
    """The cases of ``test`` that are also in a ``training`` cohort: by ``name_mapping`` when given, else by content."""
    if not training:
        raise ValueError("no training cohort to compare the test cohort with")
    if name_mapping is not None:
        return match_by_name(training, test.case_ids, name_mapping, mapping_columns)
    if mapping_columns is not None:
        raise ValueError("mapping columns were named without a name-mapping CSV")
    return match_by_content(training, test, require, workers, progress)


def remove_overlap(
    datalist: Mapping[str, Any],
    training: Iterable[Cohort | str | os.PathLike],
    name_mapping: str | os.PathLike | None = None,
    mapping_columns: Sequence[str] | None = None,
    require: str = "any",
    workers: int = 1,
    progress: bool = False,
) -> tuple[dict[str, Any], OverlapReport]:
    """A copy of ``datalist`` without the cases that are also in a training cohort, and what was removed.

    Both ``training`` (labelled) and ``testing`` entries are examined. The remaining labelled
    cases get their folds again (:func:`~brats_pipeline.data.datalist.assign_folds`, the
    datalist's ``num_folds`` and ``seed``), so folds stay balanced; ``numTraining``/``numTest``
    follow, and ``removed_overlap`` records the rule, the sources and each removed case.

    Args:
        datalist: a test cohort's datalist (:func:`~brats_pipeline.data.datalist.build_datalist`).
        training: training cohorts: :class:`Cohort`, datalist JSON files or dataset folders
            (in the datalist's task layout, :func:`load_cohort`).
        name_mapping, mapping_columns, require, workers, progress: :func:`find_overlap`.

    Raises:
        ValueError: bad mapping CSV or columns, too few patients left for the folds (naming the cause);
            preprocessing.io.ImageFileError: an unreadable image; FileNotFoundError: a missing cohort or CSV.
    """
    from brats_pipeline.data.datalist import assign_folds

    task = get_task(datalist["task"])
    cohorts = [c if isinstance(c, Cohort) else load_cohort(c, task) for c in training]
    entries = [e for key in ("training", "testing") for e in datalist.get(key, [])]
    test = Cohort(str(datalist.get("root", "test cohort")), tuple(entries), datalist_modalities(datalist))
    report = find_overlap(test, cohorts, name_mapping, mapping_columns, require, workers, progress)
    removed = set(report.removed)
    out = dict(datalist)
    labelled = [dict(e) for e in datalist.get("training", []) if e["case_id"] not in removed]
    if labelled and "fold" in labelled[0]:
        folds = int(datalist.get("num_folds", 5))
        try:
            fold_of = assign_folds([e["case_id"] for e in labelled], task, folds, int(datalist.get("seed", 0)))
        except ValueError as exc:
            raise ValueError(f"after removing {len(removed)} overlapping case(s): {exc} (use fewer folds)") from None
        for e in labelled:
            e["fold"] = fold_of[e["case_id"]]
    out["training"] = labelled
    out["testing"] = [e for e in datalist.get("testing", []) if e["case_id"] not in removed]
    out["numTraining"], out["numTest"] = len(out["training"]), len(out["testing"])
    out["removed_overlap"] = {
        "method": report.method,
        "training_cohorts": [c.source for c in cohorts],
        "name_mapping": report.name_mapping,
        "columns": list(report.columns) if report.columns else None,
        "require": require if report.method == "content" else None,
        "removed": [asdict(m) for m in report.matches],
        "unmapped": report.unmapped,
    }
    return out, report
