"""Evaluation: numbers on known pairs, missing/mismatched predictions, output files, CLI exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from brats_pipeline.cli.evaluate import main as evaluate_main
from brats_pipeline.data.datalist import write_datalist
from brats_pipeline.evaluation import evaluate_case, evaluate_folder, summary_markdown, write_evaluation
from preprocessing.io import write_nifti

AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along x: a voxel is 2 mm^3 = 0.002 ml


def _truth() -> np.ndarray:
    t = np.zeros((20, 20, 20), dtype=np.uint8)
    t[4:12, 4:12, 4:12] = 2  # ED: WT only (512 voxels)
    t[6:10, 6:10, 6:10] = 1  # NCR: TC (64 voxels)
    return t  # no ET


def _pred() -> np.ndarray:
    p = np.zeros((20, 20, 20), dtype=np.uint8)
    p[5:13, 4:12, 4:12] = 2  # WT shifted by one voxel (2 mm) along x
    p[6:10, 6:10, 6:10] = 1  # TC exact
    return p


def _write_pair(tmp: Path, case_id: str, pred: np.ndarray | None, truth: np.ndarray, pred_affine=AFFINE) -> dict:
    truth_path = write_nifti(truth, AFFINE, tmp / "truth" / f"{case_id}_seg.nii.gz", dtype=np.uint8)
    if pred is not None:
        write_nifti(pred, pred_affine, tmp / "pred" / f"{case_id}.nii.gz", dtype=np.uint8)
    (tmp / "pred").mkdir(exist_ok=True)
    return {"case_id": case_id, "image": [str(truth_path)] * 4, "label": str(truth_path), "fold": 0}


def test_metrics_of_a_known_pair(tmp_path: Path) -> None:
    entry = _write_pair(tmp_path, "a", _pred(), _truth())
    m = evaluate_case(tmp_path / "pred" / "a.nii.gz", entry["label"], "brats2021")
    # WT: 512 true, 512 predicted, overlap 7 * 8 * 8 = 448
    assert m["WT"]["dice"] == pytest.approx(2 * 448 / 1024)
    assert m["WT"]["iou"] == pytest.approx(448 / 576)
    assert m["WT"]["precision"] == pytest.approx(448 / 512) and m["WT"]["recall"] == pytest.approx(448 / 512)
    assert m["WT"]["specificity"] == pytest.approx((8000 - 576) / (8000 - 512))
    assert m["WT"]["true_volume_ml"] == pytest.approx(512 * 0.002)
    assert m["WT"]["hd95"] == pytest.approx(2.0)  # the shift is one 2 mm voxel
    assert m["TC"]["dice"] == 1.0 and m["TC"]["hd95"] == 0.0
    assert m["ET"]["dice"] == 1.0 and m["ET"]["hd95"] == 0.0  # both empty: BraTS convention


def test_folder_reports_missing_and_mismatched_cases(tmp_path: Path) -> None:
    entries = [
        _write_pair(tmp_path, "a", _pred(), _truth()),
        _write_pair(tmp_path, "b", _truth(), _truth()),
        _write_pair(tmp_path, "gone", None, _truth()),
        _write_pair(tmp_path, "shifted", _truth(), _truth(), pred_affine=np.diag([1.0, 1.0, 1.0, 1.0])),
    ]
    result = evaluate_folder(tmp_path / "pred", entries, "brats2021")
    assert list(result.per_case) == ["a", "b"]
    assert result.missing == ["gone"]
    assert "affine differs" in result.failed["shifted"] and "shifted.nii.gz" in result.failed["shifted"]
    assert not result.ok
    summary = result.summary()
    assert summary["WT"]["dice"]["mean"] == pytest.approx((0.875 + 1.0) / 2)
    assert summary["WT"]["dice"]["n"] == 2
    paths = write_evaluation(result, tmp_path / "eval")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 6 and rows[0]["case_id"] == "a" and rows[0]["region"] == "TC"
    assert float(next(r for r in rows if r["case_id"] == "a" and r["region"] == "WT")["dice"]) == pytest.approx(0.875)
    data = json.loads(paths["json"].read_text())
    assert data["missing"] == ["gone"] and "shifted" in data["failed"] and data["n_cases"] == 2
    md = paths["markdown"].read_text()
    assert "| WT | 0.938 ± 0.088 |" in md and "Missing predictions (1): gone" in md


def test_labels_outside_the_scheme_fail_the_case(tmp_path: Path) -> None:
    bad = _truth()
    bad[0, 0, 0] = 3  # not a brats2021 label
    entries = [_write_pair(tmp_path, "a", bad, _truth())]
    result = evaluate_folder(tmp_path / "pred", entries, "brats2021")
    assert "label values [3]" in result.failed["a"]


def test_summary_markdown_without_cases() -> None:
    assert "no case evaluated" in summary_markdown({})


def test_cli_exit_codes_and_outputs(tmp_path: Path) -> None:
    entries = [_write_pair(tmp_path, "a", _pred(), _truth()), _write_pair(tmp_path, "gone", None, _truth())]
    dl = {"task": "brats2021", "training": entries, "testing": []}
    write_datalist(dl, tmp_path / "dl.json")
    args = ["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "dl.json"), "-o", str(tmp_path / "eval"), "--no-progress"]
    assert evaluate_main(args) == 1
    assert evaluate_main([*args, "--allow-missing", "--report", "--no-surfaces"]) == 0
    for name in ("metrics.csv", "summary.json", "summary.md", "report.html", "figures/a_planes.png", "figures/dice_boxplot.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "Missing predictions (1): gone" in (tmp_path / "eval" / "report.html").read_text()
    assert evaluate_main(["--pred", str(tmp_path / "nope"), "--truth", str(tmp_path / "dl.json"), "-o", str(tmp_path / "e2")]) == 2
