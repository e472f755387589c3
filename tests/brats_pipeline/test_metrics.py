"""Metrics: known answers, BraTS empty-region conventions, anisotropic spacing, independent cross-check."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_pipeline.constants import BRATS2021
from brats_pipeline.metrics import (
    BRATS_EMPTY_HD95,
    METRIC_NAMES,
    STAT_NAMES,
    aggregate,
    case_metrics,
    case_metrics_from_labels,
    hausdorff_distance,
    region_metrics,
)

SHAPE = (20, 20, 20)


def _cube(lo: tuple[int, int, int], size: int = 10, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return m


# ------------------------------------------------------------------------- known answers
def test_perfect_prediction():
    m = _cube((5, 5, 5))
    r = region_metrics(m, m, spacing=(1.0, 1.0, 2.0))
    assert set(r) == set(METRIC_NAMES)
    assert r["dice"] == r["iou"] == r["precision"] == r["recall"] == r["specificity"] == 1.0
    assert r["hd95"] == 0.0
    assert r["pred_volume_ml"] == r["true_volume_ml"] == pytest.approx(1000 * 2.0 / 1000)


def test_half_overlapping_cubes():
    truth = _cube((5, 5, 5), size=4)  # 64 voxels
    pred = np.roll(truth, 2, axis=0)  # 32 shared
    r = region_metrics(pred, truth, spacing=(1.0, 1.0, 1.0))
    n = truth.size
    assert r["dice"] == pytest.approx(2 * 32 / (2 * 32 + 32 + 32))  # 0.5
    assert r["iou"] == pytest.approx(32 / 96)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["specificity"] == pytest.approx((n - 96) / (n - 64))
    assert r["pred_volume_ml"] == r["true_volume_ml"] == pytest.approx(0.064)


def test_hd95_of_two_voxels_uses_spacing_per_axis():
    a = np.zeros(SHAPE, dtype=bool)
    b = np.zeros(SHAPE, dtype=bool)
    a[5, 5, 5] = True
    b[5, 8, 9] = True  # 3 voxels along y (1 mm), 4 along z (3 mm)
    expected = math.sqrt((3 * 1.0) ** 2 + (4 * 3.0) ** 2)
    assert hausdorff_distance(a, b, spacing=(1.0, 1.0, 3.0)) == pytest.approx(expected, rel=1e-6)
    assert region_metrics(a, b, spacing=(1.0, 1.0, 3.0))["hd95"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("axis", "expected_mm"), [(0, 2 * 0.8), (1, 2 * 1.0), (2, 2 * 3.0)])
def test_hd95_of_a_shifted_cube_is_the_shift_in_mm(axis, expected_mm):
    """A 10^3 cube shifted by 2 voxels: 20 % of each surface (the face left behind) is exactly 2 voxels away."""
    truth = _cube((5, 5, 5))
    pred = np.roll(truth, 2, axis=axis)
    r = region_metrics(pred, truth, spacing=(0.8, 1.0, 3.0))
    assert r["hd95"] == pytest.approx(expected_mm, rel=1e-6)
    assert r["dice"] == pytest.approx(0.8)


def test_hd95_ignores_a_few_outliers_but_hd100_does_not():
    truth = _cube((2, 2, 2), size=12)
    pred = truth.copy()
    pred[18, 18, 18] = True  # one stray voxel
    far = math.sqrt(3 * (18 - 13) ** 2)  # to the cube's corner (13, 13, 13)
    assert hausdorff_distance(pred, truth, percentile=100) == pytest.approx(far, rel=1e-6)
    assert hausdorff_distance(pred, truth) == 0.0


# ---------------------------------------------------------------- BraTS empty conventions
def test_both_empty_is_a_perfect_score():
    empty = np.zeros(SHAPE, dtype=bool)
    r = region_metrics(empty, empty)
    assert r == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "precision": 1.0,
        "recall": 1.0,
        "specificity": 1.0,
        "pred_volume_ml": 0.0,
        "true_volume_ml": 0.0,
    }


def test_false_positive_on_empty_truth():
    pred = _cube((5, 5, 5), size=2)
    r = region_metrics(pred, np.zeros(SHAPE, dtype=bool))
    assert r["dice"] == r["iou"] == 0.0
    assert r["hd95"] == pytest.approx(373.128664, abs=1e-5) == BRATS_EMPTY_HD95
    assert r["precision"] == 0.0 and r["recall"] == 0.0
    assert r["specificity"] == pytest.approx(1 - 8 / 8000)
    assert r["pred_volume_ml"] == pytest.approx(0.008) and r["true_volume_ml"] == 0.0


def test_missed_region_with_empty_prediction():
    truth = _cube((5, 5, 5), size=2)
    r = region_metrics(np.zeros(SHAPE, dtype=bool), truth)
    assert r["dice"] == r["iou"] == r["precision"] == r["recall"] == 0.0
    assert r["hd95"] == BRATS_EMPTY_HD95
    assert r["specificity"] == 1.0


def test_empty_hd95_value_is_configurable():
    truth = _cube((5, 5, 5), size=2)
    assert math.isnan(region_metrics(np.zeros(SHAPE, bool), truth, empty_hd95=float("nan"))["hd95"])
    with pytest.raises(ValueError, match="non-empty masks"):
        hausdorff_distance(np.zeros(SHAPE, bool), truth)


# ------------------------------------------------------------------- cases, labels, tasks
def _brats_labels() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:16, 4:16, 4:16] = 2  # edema
    label[7:13, 7:13, 7:13] = 1  # necrosis
    label[9:11, 9:11, 9:11] = 4  # enhancing
    return label


def test_case_metrics_from_brats_labels():
    truth = _brats_labels()
    pred = truth.copy()
    pred[pred == 4] = 1  # enhancing tumour missed (called necrosis)
    res = case_metrics_from_labels(pred, truth, BRATS2021, spacing=(1.0, 1.0, 1.0))
    assert list(res) == ["TC", "WT", "ET"]
    assert res["TC"]["dice"] == 1.0 and res["WT"]["dice"] == 1.0
    assert res["TC"]["true_volume_ml"] == pytest.approx(6**3 / 1000)
    assert res["WT"]["true_volume_ml"] == pytest.approx(12**3 / 1000)
    assert res["ET"]["dice"] == 0.0 and res["ET"]["hd95"] == BRATS_EMPTY_HD95
    assert res["ET"]["true_volume_ml"] == pytest.approx(0.008) and res["ET"]["pred_volume_ml"] == 0.0


def test_case_metrics_from_labels_accepts_a_task_name_and_channel_dim():
    truth = _brats_labels()
    truth[truth == 4] = 3  # BraTS 2023 scheme: ET is 3
    res = case_metrics_from_labels(truth[None], truth[None], "brats2023", spacing=(1, 1, 1))
    assert all(r["dice"] == 1.0 for r in res.values())


def test_labels_outside_the_scheme_are_rejected():
    truth = _brats_labels()
    with pytest.raises(ValueError, match="label values \\[3\\] are not in the brats2021 scheme"):
        case_metrics_from_labels(np.full(SHAPE, 3, np.uint8), truth, BRATS2021, spacing=(1, 1, 1))


def test_case_metrics_takes_torch_region_maps():
    truth = BRATS2021.labels_to_regions(torch.from_numpy(_brats_labels()))
    res = case_metrics(truth, truth, (1.0, 1.0, 1.0), BRATS2021.region_names)
    assert [r["dice"] for r in res.values()] == [1.0, 1.0, 1.0]


def test_input_checks():
    m = np.zeros((2, *SHAPE), dtype=bool)
    with pytest.raises(ValueError, match="region_names must be 2 distinct names"):
        case_metrics(m, m, (1, 1, 1), ["TC"])
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(m, m[:1], (1, 1, 1), ["TC", "WT"])
    with pytest.raises(ValueError, match="shape \\(R, X, Y, Z\\)"):
        case_metrics(m[0], m[0], (1, 1, 1), ["TC"])
    with pytest.raises(ValueError, match="spacing must be 3 positive numbers"):
        region_metrics(m[0], m[0], spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing must be 3 positive numbers"):
        region_metrics(m[0], m[0], spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="pred must be boolean"):
        region_metrics(np.full(SHAPE, 0.7), m[0])
    assert region_metrics(m[0].astype(np.uint8), m[0])["dice"] == 1.0  # 0/1 integers are fine


# ------------------------------------------------------------------------------ aggregate
def test_aggregate_statistics():
    cases = [
        {"ET": {"dice": d, "hd95": h}} for d, h in [(0.2, 1.0), (0.4, 2.0), (0.6, float("nan")), (0.8, 4.0)]
    ]
    stats = aggregate(cases)
    dice = stats["ET"]["dice"]
    assert set(dice) == set(STAT_NAMES)
    assert dice["mean"] == pytest.approx(0.5) and dice["median"] == pytest.approx(0.5)
    assert dice["std"] == pytest.approx(math.sqrt(0.2 / 3))  # sample std
    assert dice["min"] == pytest.approx(0.2) and dice["max"] == pytest.approx(0.8)
    assert dice["p5"] == pytest.approx(0.23) and dice["p95"] == pytest.approx(0.77)  # 90 % interval
    assert dice["n"] == 4
    hd = stats["ET"]["hd95"]  # NaN left out
    assert hd["n"] == 3 and hd["mean"] == pytest.approx(7 / 3) and hd["median"] == 2.0


def test_aggregate_edge_cases():
    assert aggregate([{"WT": {"dice": 0.9}}])["WT"]["dice"]["std"] == 0.0
    all_nan = aggregate([{"WT": {"hd95": float("nan")}}])["WT"]["hd95"]
    assert all_nan["n"] == 0 and math.isnan(all_nan["mean"])
    with pytest.raises(ValueError, match="at least one case"):
        aggregate([])
    with pytest.raises(ValueError, match="lacks region/metric WT/hd95"):
        aggregate([{"WT": {"hd95": 1.0}}, {"WT": {"dice": 1.0}}])


# ---------------------------------------------------- independent cross-check (SimpleITK)
def _blob(seed: int, shape=(40, 36, 24)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random(shape), 2.5) > 0.5
    m[[0, -1]] = False
    m[:, [0, -1]] = False
    m[:, :, [0, -1]] = False
    return m


def _sitk(mask: np.ndarray, spacing):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.transpose(2, 1, 0).astype(np.uint8))  # x,y,z -> SimpleITK's z,y,x
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _sitk_hd95(pred: np.ndarray, truth: np.ndarray, spacing) -> float:
    """Surfaces from SimpleITK's BinaryContour, nearest-surface distances by k-d tree (no MONAI, no EDT)."""
    import SimpleITK as sitk
    from scipy.spatial import cKDTree

    def surface_points(mask):
        contour = sitk.BinaryContour(
            _sitk(mask, spacing), fullyConnected=False, backgroundValue=0, foregroundValue=1
        )
        return np.argwhere(sitk.GetArrayFromImage(contour).transpose(2, 1, 0)) * np.asarray(spacing)

    p, t = surface_points(pred), surface_points(truth)
    d_pt = cKDTree(t).query(p)[0]
    d_tp = cKDTree(p).query(t)[0]
    return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))  # both directions pooled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_iou_volume_hd95_agree_with_simpleitk(seed):
    import SimpleITK as sitk

    spacing = (0.9, 1.2, 2.5)
    truth = _blob(seed)
    pred = _blob(seed + 100)
    r = region_metrics(pred, truth, spacing)

    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(_sitk(truth, spacing), _sitk(pred, spacing))
    assert r["dice"] == pytest.approx(overlap.GetDiceCoefficient(), rel=1e-9)
    assert r["iou"] == pytest.approx(overlap.GetJaccardCoefficient(), rel=1e-9)

    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(_sitk(pred, spacing))
    assert r["pred_volume_ml"] == pytest.approx(shape.GetPhysicalSize(1) / 1000, rel=1e-9)

    assert r["hd95"] == pytest.approx(_sitk_hd95(pred, truth, spacing), rel=1e-5)


# ------------------------------------------- official BraTS package (optional `eval` extra)
EVAL_PYTHON = Path(__file__).resolve().parents[2] / ".venv-eval" / "bin" / "python"


@pytest.mark.skipif(
    not EVAL_PYTHON.exists(), reason="the official BraTS evaluation is not installed: bash scripts/install_eval.sh"
)
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.0, 2.0)])
def test_dice_hd95_agree_with_the_official_brats_evaluation(tmp_path: Path, spacing) -> None:
    """Same Dice and HD95 as ``brats-evaluation`` (its ``evaluate_single_exam``, ``global_bin_*``) on NIfTI files.

    The official package runs in its own venv (``scripts/install_eval.sh``: its panoptica pins
    an older numpy). Where prediction and truth do not overlap at all, it reports HD95 = inf
    (its zero-true-positive rule); we report the measured distance. See the metrics docstring.
    """
    import nibabel as nib

    affine = np.diag([*spacing, 1.0])
    truth = _brats_labels()
    truth[truth == 4] = 3  # the official "gli" config uses the BraTS 2023 scheme
    blobby = np.where(_blob(7, SHAPE) & (truth == 0), 2, truth).astype(np.uint8)
    preds = {"shift_x": np.roll(truth, 1, axis=0), "shift_y": np.roll(truth, 2, axis=1), "blobby": blobby}
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), affine), ref)
    files = []
    for name, pred in preds.items():
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine), tmp_path / f"{name}.nii.gz")
        files += [str(tmp_path / f"{name}.nii.gz"), str(ref)]
    out = tmp_path / "official.json"
    run = subprocess.run(
        [str(EVAL_PYTHON), str(Path(__file__).with_name("_official_eval.py")), "gli", str(out), *files],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    official = json.loads(out.read_text())
    compared = 0
    for name, pred in preds.items():
        ours = case_metrics_from_labels(pred, truth, "brats2023", spacing=spacing)
        # brats-evaluation 0.0.10 measures HD95 in voxels whatever the NIfTI spacing (BraTS data is
        # 1 mm isotropic); ours is in mm (checked against SimpleITK above), so compare at 1 mm.
        ours_hd = case_metrics_from_labels(pred, truth, "brats2023", spacing=(1.0, 1.0, 1.0))
        theirs = official[str(tmp_path / f"{name}.nii.gz")]
        for region, values in ours.items():
            dsc, hd95 = (theirs[region.lower()][f"global_bin_{m}"] for m in ("dsc", "hd95"))
            assert values["dice"] == pytest.approx(dsc, abs=1e-9), (name, region)
            if dsc > 0:
                assert ours_hd[region]["hd95"] == pytest.approx(hd95, rel=1e-6), (name, region)
                compared += 1
            else:
                assert hd95 is None and math.isfinite(values["hd95"])  # official: inf
    assert compared == 8, compared  # 9 region comparisons, 1 without overlap
    if spacing != (1.0, 1.0, 1.0):  # and the voxel-unit HD95 really differs from ours in mm here
        shifted = case_metrics_from_labels(preds["shift_x"], truth, "brats2023", spacing=spacing)
        assert shifted["WT"]["hd95"] == pytest.approx(0.8) != official[files[0]]["wt"]["global_bin_hd95"]


# ------------------------------------------------------------------- one HD95 definition
def _box_labels(shape: tuple[int, ...], boxes: list[tuple[int, tuple[int, ...], tuple[int, ...]]]) -> np.ndarray:
    """A label map painted box by box (later boxes over earlier ones)."""
    label = np.zeros(shape, np.int16)
    for value, lo, hi in boxes:
        label[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return label


def test_validation_logs_the_hd95_that_brats_evaluate_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation's ``val/hd95_<region>`` is the mean over cases of ``brats-evaluate``'s HD95, empty regions included
    (both empty 0, one empty 373.13 mm), on an anisotropic grid: one definition, the BraTS one."""
    import nibabel as nib
    import pytorch_lightning as pl
    from monai.data import MetaTensor

    from brats_pipeline.cli.evaluate import main as evaluate_main
    from brats_pipeline.module import BratsSegmentationModule

    shape, task = (24, 20, 16), BRATS2021
    affine = np.diag([1.0, 1.2, 2.5, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 3.0)
    cases = {  # case: (truth, prediction); label 2 (ED) around 1 (NCR) around 4 (ET)
        "a": (_box_labels(shape, [(2, (4, 4, 3), (18, 15, 12)), (1, (7, 6, 5), (14, 12, 9)), (4, (9, 8, 6), (12, 11, 8))]),
              _box_labels(shape, [(2, (5, 4, 3), (19, 16, 12)), (1, (8, 6, 5), (15, 13, 10))])),  # ET missed
        "b": (_box_labels(shape, [(2, (3, 3, 2), (12, 12, 8)), (1, (5, 5, 3), (9, 9, 6))]),
              _box_labels(shape, [(2, (3, 4, 2), (13, 12, 9)), (1, (6, 5, 3), (9, 10, 6))])),  # no ET at all
    }
    batches, entries = [], []
    (tmp_path / "pred").mkdir()
    for cid, (truth, pred) in cases.items():
        pred_regions = torch.as_tensor(task.labels_to_regions(pred), dtype=torch.float32)
        image = torch.cat([pred_regions, torch.zeros(1, *shape)])[None]  # the prediction rides in the image
        batches.append({"image": MetaTensor(image, affine=torch.as_tensor(affine)),
                        "label": torch.as_tensor(task.labels_to_regions(truth), dtype=torch.float32)[None]})
        nib.save(nib.Nifti1Image(pred, affine), tmp_path / "pred" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(truth, affine), tmp_path / f"{cid}_seg.nii.gz")
        entries.append({"case_id": cid, "image": [f"{cid}_seg.nii.gz"] * 4, "label": f"{cid}_seg.nii.gz", "fold": 0})

    module = BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 8, 16, 4]}, task=task.name,
                                     roi_size=(16, 16, 16), hd95_every_n_epochs=1)
    monkeypatch.setattr(module, "sliding_window", lambda image: (torch.as_tensor(image)[:, :3] * 2 - 1) * 10)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    (logged,) = trainer.validate(module, dataloaders=loader, verbose=False)

    (tmp_path / "dl.json").write_text(json.dumps({"task": task.name, "training": entries}))
    assert evaluate_main(["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "dl.json"),
                          "-o", str(tmp_path / "eval"), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    hd95 = {(r["case_id"], r["region"]): float(r["hd95"]) for r in rows}
    assert hd95[("a", "ET")] == pytest.approx(BRATS_EMPTY_HD95) and hd95[("b", "ET")] == 0.0
    assert 0 < hd95[("a", "WT")] < 10 and 0 < hd95[("b", "TC")] < 10  # measured, in mm
    for region in task.region_names:
        expected = np.mean([hd95[(cid, region)] for cid in cases])
        assert logged[f"val/hd95_{region}"] == pytest.approx(expected, rel=1e-6), region
