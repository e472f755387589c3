"""Radiogenomics: shape features with known answers, Fisher's exact test by hand, id matching, the CLI on
synthetic masks. The real LGG patients: ``test_radiogenomics_real.py``."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from brats_pipeline.cli.radiogenomics import main
from brats_pipeline.radiogenomics.ellipsoid import min_volume_ellipsoid
from brats_pipeline.radiogenomics.features import shape_features
from brats_pipeline.radiogenomics.margin import margin_features
from brats_pipeline.radiogenomics.stats import (
    associations,
    bonferroni,
    fisher_exact_rx2,
    holm,
    match_patients,
    read_clinical,
)
from preprocessing.io import write_nifti

CUBE_BEVR = 2 / (math.pi * math.sqrt(3))


def ellipsoid_mask(a: float, b: float, c: float, rotation: np.ndarray | None = None, offset=(0.3, -0.2, 0.1)) -> np.ndarray:
    """Voxel centres inside the ellipsoid x²/a² + y²/b² + z²/c² <= 1 (optionally rotated)."""
    n = int(2 * max(a, b, c)) + 7
    g = np.indices((n, n, n)).reshape(3, -1).T - (n - 1) / 2 - np.asarray(offset)
    if rotation is not None:
        g = g @ rotation
    return ((g / np.array([a, b, c])) ** 2).sum(axis=1).reshape(n, n, n) <= 1


def rotation(ax: float, ay: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    return rx @ ry


def planar_shape(kind: str, angle: float = 0.0, r0: float = 25.0, n: int = 80, depth: int = 3) -> np.ndarray:
    """A 2D shape repeated over ``depth`` slices: disc, 8-pointed star (smooth) or gear (square teeth)."""
    x, y = np.indices((n, n)) - (n - 1) / 2 + 0.3
    theta = np.arctan2(y, x) - angle
    radius = {"disc": r0 + 0 * theta, "star": r0 + 0.25 * r0 * np.sin(8 * theta),
              "gear": r0 + 0.25 * r0 * np.sign(np.sin(8 * theta))}[kind]
    return np.repeat((np.hypot(x, y) <= radius)[:, :, None], depth, axis=2)


# ------------------------------------------------------------------ BEVR and the enclosing ellipsoid
def test_khachiyan_recovers_an_ellipsoid_from_points_on_its_surface() -> None:
    rng = np.random.default_rng(0)
    u = rng.normal(size=(400, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    points = u * [5.0, 3.0, 2.0] @ rotation(0.4, 1.1).T + [1.0, -2.0, 3.0]
    e = min_volume_ellipsoid(points, tol=1e-7)
    assert np.allclose(e.semi_axes, [5.0, 3.0, 2.0], rtol=2e-3)
    assert np.allclose(e.centre, [1.0, -2.0, 3.0], atol=1e-2)
    assert e.volume == pytest.approx(4 / 3 * math.pi * 30, rel=3e-3)
    with pytest.raises(ValueError, match="lower-dimensional"):
        min_volume_ellipsoid(np.c_[rng.normal(size=(20, 2)), np.zeros(20)])


@pytest.mark.parametrize("shape", [(6, 6, 6), (4, 9, 2), (1, 1, 1)])
def test_box_bevr_is_that_of_a_cube_whatever_its_sides(shape: tuple[int, int, int]) -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2:2 + shape[0], 3:3 + shape[1], 4:4 + shape[2]] = True
    f = shape_features(mask, np.diag([0.9, 0.9, 5.5, 1.0]))
    assert f["bevr"] == pytest.approx(CUBE_BEVR, rel=1e-4)
    assert f["solidity"] == pytest.approx(1.0)
    assert f["volume_ml"] == pytest.approx(np.prod(shape) * 0.9 * 0.9 * 5.5 / 1000)


@pytest.mark.parametrize(
    "axes, rot, expected",
    [((8, 8, 8), None, 0.75), ((20, 20, 20), None, 0.88), ((14, 10, 7), rotation(0.5, 0.9), 0.78), ((20, 20, 3), None, 0.70)],
)
def test_voxelised_ellipsoid_bevr_is_one_minus_the_measured_discretisation_error(axes, rot, expected: float) -> None:
    """The union of the voxel cubes sticks out of the ellipsoid by up to a half voxel diagonal:
    BEVR ≈ 1 - 2.3 / r for a ball of radius r voxels (README table); within 0.025 of it here."""
    f = shape_features(ellipsoid_mask(*axes, rotation=rot))
    assert f["bevr"] == pytest.approx(expected, abs=0.025)
    assert f["bevr"] < 1


def test_bevr_approaches_one_as_the_ellipsoid_grows() -> None:
    """The discretisation error shrinks as 1 / radius: measured (1 - BEVR) x r = 2.03, 2.17, 2.34, 2.40 for
    balls of radius 8, 12, 20, 30 voxels, rising towards 3 x √3/2 ≈ 2.6 (the voxel corners stick out of
    the ball by up to half a voxel diagonal): BEVR ≈ 1 - 2.3 / r in the README."""
    radii = (8, 12, 20, 30)
    values = [shape_features(ellipsoid_mask(r, r, r))["bevr"] for r in radii]
    assert values == sorted(values) and values[-1] < 1
    scaled = [(1 - v) * r for r, v in zip(radii, values)]
    assert scaled == sorted(scaled) and 1.9 < scaled[0] and scaled[-1] < 3 * math.sqrt(3) / 2, scaled


def test_two_separated_blobs_have_lower_bevr_with_all_components_and_the_largest_is_the_default() -> None:
    ball = ellipsoid_mask(6, 6, 6)
    two = np.zeros((ball.shape[0] * 3, ball.shape[1], ball.shape[2]), dtype=bool)
    two[: ball.shape[0]] = ball
    two[-ball.shape[0]:] = ball
    one = shape_features(ball)
    pair = shape_features(two, components="all")
    assert pair["n_components"] == 2 and one["n_components"] == 1 and pair["kept_fraction"] == 1.0
    # two balls 2 diameters apart: the enclosing ellipsoid is about 3 balls long, so BEVR drops by more than half
    assert pair["bevr"] < 0.5 * one["bevr"]
    assert pair["solidity"] < 0.5 * one["solidity"]
    assert pair["volume_ml"] == pytest.approx(2 * one["volume_ml"])
    # default: the largest component only (ties: the first in array order), i.e. one ball
    largest = shape_features(two)
    assert largest["n_components"] == 2 and largest["kept_fraction"] == pytest.approx(0.5)
    for key in ("bevr", "solidity", "volume_ml", "mf", "asd"):
        assert largest[key] == pytest.approx(one[key], rel=1e-9), key
    with pytest.raises(ValueError, match="unknown components"):
        shape_features(two, components="biggest")


def test_a_far_false_positive_speck_leaves_the_default_features_alone() -> None:
    """What automatic masks do (README: up to 20 specks per predicted LGG mask): a 2x2x2 speck 30 voxels
    away collapses BEVR with all components and changes nothing with the largest component."""
    ball = ellipsoid_mask(8, 7, 5)
    mask = np.zeros((ball.shape[0] + 40, ball.shape[1], ball.shape[2]), dtype=bool)
    mask[: ball.shape[0]] = ball
    mask[-3:-1, 5:7, 5:7] = True
    clean, specked, everything = shape_features(ball), shape_features(mask), shape_features(mask, components="all")
    assert specked["n_components"] == 2 and specked["kept_fraction"] == pytest.approx(ball.sum() / (ball.sum() + 8))
    for key in ("bevr", "solidity", "volume_ml", "mf", "asd", "circularity", "elongation"):
        assert specked[key] == pytest.approx(clean[key], rel=1e-9), key
    assert everything["bevr"] < 0.5 * clean["bevr"]


def test_ratios_do_not_depend_on_voxel_spacing_and_2d_features_not_on_slice_spacing() -> None:
    mask = ellipsoid_mask(9, 6, 4, rotation=rotation(0.3, 0.2))
    iso = shape_features(mask, np.eye(4))
    aniso = shape_features(mask, np.diag([0.7, 0.7, 6.0, 1.0]))
    for key in ("bevr", "solidity", "mf", "asd", "circularity", "elongation"):
        assert aniso[key] == pytest.approx(iso[key], rel=1e-9), key
    assert aniso["volume_ml"] == pytest.approx(iso["volume_ml"] * 0.7 * 0.7 * 6.0)


def test_empty_and_tiny_masks() -> None:
    empty = shape_features(np.zeros((5, 5, 5), dtype=bool))
    assert empty["volume_ml"] == 0 and empty["n_voxels"] == 0 and empty["n_components"] == 0
    assert all(math.isnan(empty[k]) for k in ("bevr", "solidity", "mf", "asd", "circularity", "elongation"))
    one = np.zeros((5, 5, 5), dtype=bool)
    one[2, 2, 2] = True
    tiny = shape_features(one)
    assert tiny["bevr"] == pytest.approx(CUBE_BEVR) and math.isnan(tiny["mf"]) and math.isnan(tiny["asd"])


# ------------------------------------------------------------------ margin fluctuation and angular SD
def test_disc_has_mf_and_asd_near_zero_and_star_and_gear_clearly_higher() -> None:
    disc = margin_features(planar_shape("disc"))
    star = margin_features(planar_shape("star"))
    gear = margin_features(planar_shape("gear"))
    assert disc.mf < 0.01 and disc.asd < 0.01
    assert disc.circularity == pytest.approx(1.0, abs=0.02) and disc.elongation == pytest.approx(1.0, abs=0.01)
    for shape in (star, gear):
        assert shape.mf > 0.08 and shape.asd > 0.1
        assert shape.circularity < 0.6
    assert gear.mf > star.mf and gear.asd > star.asd


@pytest.mark.parametrize("kind", ["star", "gear"])
def test_mf_and_asd_are_rotation_invariant_within_four_percent(kind: str) -> None:
    values = np.array([[m.mf, m.asd] for m in (margin_features(planar_shape(kind, a)) for a in np.linspace(0, np.pi / 4, 5))])
    assert np.ptp(values, axis=0).max() / values.mean(axis=0).min() < 0.04  # measured: up to 3.1 % (README)


def test_margin_is_measured_on_the_largest_slice_largest_component() -> None:
    mask = np.zeros((60, 60, 5), dtype=bool)
    mask[:, :, 1] = planar_shape("disc", r0=10, n=60, depth=1)[:, :, 0]
    mask[:, :, 3] = planar_shape("star", r0=20, n=60, depth=1)[:, :, 0]
    mask[0:3, 0:3, 3] = True  # a small second component on the same slice
    m = margin_features(mask)
    assert m.slice_index == 3
    assert m.centroid == pytest.approx([29.5 - 0.3, 29.5 - 0.3], abs=0.6)
    with pytest.raises(ValueError, match="n_sectors"):
        margin_features(mask, n_sectors=1)


# ------------------------------------------------------------------ statistics
def test_fisher_2x2_by_hand_and_scipy() -> None:
    from scipy.stats import fisher_exact

    # rows 4, 4; column 0 total 4: P(x) = C(4,x) C(4,4-x) / C(8,4) = (1, 16, 36, 16, 1) / 70
    # observed x = 3 (P 16/70); as or less probable: x = 0, 1, 3, 4 -> 34/70
    assert fisher_exact_rx2([[3, 1], [1, 3]]) == pytest.approx(34 / 70, rel=1e-12)
    assert fisher_exact([[3, 1], [1, 3]]).pvalue == pytest.approx(34 / 70, rel=1e-12)
    rng = np.random.default_rng(1)
    for table in rng.integers(0, 9, size=(40, 2, 2)):
        assert fisher_exact_rx2(table) == pytest.approx(fisher_exact(table).pvalue, rel=1e-9, abs=1e-12)


def test_fisher_3x2_by_hand_and_scipy_monte_carlo() -> None:
    from scipy.stats import MonteCarloMethod, fisher_exact

    # rows 3, 3, 3; column 0 total 4; weight of (x1, x2, x3) = C(3,x1) C(3,x2) C(3,x3), sum C(9,4) = 126.
    # Observed (3, 1, 0): weight 3. Tables of weight <= 3: the 6 permutations of (3, 1, 0) -> p = 18/126 = 1/7.
    assert fisher_exact_rx2([[3, 0], [1, 2], [0, 3]]) == pytest.approx(1 / 7, rel=1e-12)
    mc = fisher_exact([[3, 0], [1, 2], [0, 3]], method=MonteCarloMethod(n_resamples=20000, rng=np.random.default_rng(0)))
    assert mc.pvalue == pytest.approx(1 / 7, abs=0.01)
    assert fisher_exact_rx2([[2, 0], [0, 0], [1, 3]]) == fisher_exact_rx2([[2, 0], [1, 3]])  # empty rows dropped
    assert fisher_exact_rx2([[4, 0], [2, 0]]) == 1.0
    with pytest.raises(ValueError, match="r x 2"):
        fisher_exact_rx2([[1, 2, 3], [4, 5, 6]])


def test_fisher_rx2_equals_enumeration_of_every_table() -> None:
    rng = np.random.default_rng(2)
    for table in (rng.integers(0, 6, size=(4, 2)) for _ in range(15)):
        rows, c0 = table.sum(axis=1), table[:, 0].sum()

        def logp(x, rows=rows):
            return sum(math.log(math.comb(int(n), int(k))) for n, k in zip(rows, x))

        observed = logp(table[:, 0])
        p = sum(math.exp(logp(x)) for x in itertools.product(*(range(n + 1) for n in rows))
                if sum(x) == c0 and logp(x) <= observed + 1e-7) / math.comb(int(rows.sum()), int(c0))
        assert fisher_exact_rx2(table) == pytest.approx(min(1.0, p), rel=1e-9)


def test_bonferroni_and_holm_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert bonferroni(p) == pytest.approx([0.04, 0.16, 0.12, 0.02])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_case_ids_match_patient_ids_by_prefix() -> None:
    matched, unmatched = match_patients(
        ["TCGA_CS_4942_19970222", "TCGA_CS_49421_20000101", "TCGA_DU_5853", "BraTS-GLI-00001-000", "other"],
        ["TCGA_CS_4942", "TCGA_DU_5853", "TCGA_DU", "BraTS-GLI-00001"],
    )
    assert matched == {"TCGA_CS_4942_19970222": "TCGA_CS_4942", "TCGA_DU_5853": "TCGA_DU_5853",
                       "BraTS-GLI-00001-000": "BraTS-GLI-00001"}
    assert unmatched == ["TCGA_CS_49421_20000101", "other"]
    with pytest.raises(ValueError, match="both match patient 'TCGA_CS_4942'"):
        match_patients(["TCGA_CS_4942_1", "TCGA_CS_4942_2"], ["TCGA_CS_4942"])


def write_clinical(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Patient", "RNASeqCluster", "grade"])
        w.writerows(rows)
    return path


def test_missing_cluster_values_are_left_out_and_counted(tmp_path: Path) -> None:
    clinical = read_clinical(write_clinical(tmp_path / "c.csv", [
        ("P1", "1", "2"), ("P2", "1", "2"), ("P3", "1", "2"), ("P4", "2", "2"),
        ("P5", "2", "2"), ("P6", "2", "2"), ("P7", "", "2"), ("P8", "NA", "2")]))
    assert clinical.subtypes == ["RNASeqCluster"] and clinical.values["P8"]["RNASeqCluster"] is None
    feats = {f"P{i}_2001": {"bevr": v} for i, v in enumerate([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 0.05], start=1)}
    feats["P9_2001"] = {"bevr": 0.5}  # no clinical row
    feats["P6_2001"] = {"bevr": float("nan")}
    rows, matching = associations(feats, clinical, ["bevr"])
    row = rows[0]
    assert (row["n"], row["n_missing_subtype"], row["n_missing_feature"]) == (5, 2, 1)
    assert matching["unmatched_cases"] == ["P9_2001"]
    # median of 0.1, 0.2, 0.3, 0.6, 0.7 is 0.3: level 1 -> 3 low / 0 high, level 2 -> 0 low / 2 high
    assert row["threshold"] == pytest.approx(0.3) and row["table"] == [[3, 0], [0, 2]]
    assert row["p"] == pytest.approx(fisher_exact_rx2([[3, 0], [0, 2]])) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no column"):
        read_clinical(tmp_path / "c.csv", subtypes=["COCCluster"])


# ------------------------------------------------------------------ the command line
def write_cases(folder: Path, n: int, dilate: bool = False) -> list[str]:
    """``n`` cases ``P<i>_20000101.nii.gz``: ellipsoids of growing irregularity (bumps) in 40x40x12 volumes."""
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        x, y, z = np.indices((40, 40, 12)) - np.array([19.5, 19.5, 5.5])[:, None, None, None]
        theta = np.arctan2(y, x)
        radius = 12 + 0.4 * i * np.sin((3 + i) * theta)
        mask = (np.hypot(x, y) / radius) ** 2 + (z / 4.5) ** 2 <= 1
        if dilate:
            mask = ndimage.binary_dilation(mask)
        cid = f"P{i}_20000101"
        write_nifti(mask.astype(np.uint8), np.diag([1.0, 1.0, 3.0, 1.0]), folder / f"{cid}.nii.gz")
        ids.append(cid)
    return ids


def test_cli_pred_vs_manual_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cases(tmp_path / "manual", 6)
    write_cases(tmp_path / "pred", 6, dilate=True)
    write_clinical(tmp_path / "c.csv", [(f"P{i}", str(1 + i % 2), "2") for i in range(6)])
    out = tmp_path / "out"
    code = main(["--labels", str(tmp_path / "pred"), "--from", "pred", "--truth", str(tmp_path / "manual"),
                 "--clinical", str(tmp_path / "c.csv"), "-o", str(out), "--features", "mf,volume_ml", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mf |" in printed and "Predicted vs manual" in printed
    for name in ("features.csv", "associations.csv", "features_manual.csv", "associations_manual.csv", "comparison.csv",
                 "summary.md", "report.html", "figures/pvalues.png", "figures/bland_altman.png", "figures/pred_vs_manual.png",
                 "figures/by_subtype_mf.png", "figures/examples_volume_ml.png", "figures/examples_mf.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.rglob(".*tmp*"))
    with (out / "comparison.csv").open() as fh:
        comp = {r["feature"]: r for r in csv.DictReader(fh)}
    assert float(comp["volume_ml"]["bias"]) > 0  # dilated predictions are larger
    assert float(comp["mf"]["pearson_r"]) > 0.9  # the bumps survive a one-voxel dilation
    with (out / "features.csv").open() as fh:
        feats = list(csv.DictReader(fh))
    assert [r["patient_id"] for r in feats] == [f"P{i}" for i in range(6)]
    mf = [float(r["mf"]) for r in feats]
    assert mf[0] < mf[-1]


def test_cli_usage_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cases(tmp_path / "lab", 2)
    write_clinical(tmp_path / "c.csv", [("P0", "1", "2"), ("P1", "2", "2")])
    bad = [
        ["--labels", str(tmp_path / "lab"), "-o", str(tmp_path / "o")],  # no --clinical
        ["--labels", str(tmp_path / "nowhere"), "--clinical", str(tmp_path / "c.csv"), "-o", str(tmp_path / "o")],
        ["--labels", str(tmp_path / "lab"), "--clinical", str(tmp_path / "c.csv"), "-o", str(tmp_path / "o"), "--split", "2"],
        ["--labels", str(tmp_path / "lab"), "--clinical", str(tmp_path / "c.csv"), "-o", str(tmp_path / "o"), "--features", "x"],
        ["--labels", str(tmp_path / "lab"), "--clinical", str(tmp_path / "c.csv"), "-o", str(tmp_path / "o"),
         "--components", "biggest"],
    ]
    for argv in bad:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        assert code == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("brats-radiogenomics: error:") and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_bad_mask_is_reported_and_the_rest_analysed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset folder in the LGG layout (segmentations only); one label file is truncated."""
    flat = tmp_path / "flat"
    ids = write_cases(flat, 4)
    root = tmp_path / "lgg"
    for cid in ids:
        (root / cid).mkdir(parents=True)
        data = (flat / f"{cid}.nii.gz").read_bytes()
        (root / cid / f"{cid}_seg.nii.gz").write_bytes(data[: len(data) // 2] if cid == ids[2] else data)
    write_clinical(tmp_path / "c.csv", [(f"P{i}", str(1 + i % 2), "2") for i in range(4)])
    code = main(["--labels", str(root), "--clinical", str(tmp_path / "c.csv"), "-o", str(tmp_path / "o"), "--no-figures",
                 "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"FAILED {ids[2]}" in err and f"{ids[2]}_seg.nii.gz" in err
    with (tmp_path / "o" / "features.csv").open() as fh:
        assert [r["case_id"] for r in csv.DictReader(fh)] == [ids[0], ids[1], ids[3]]
