"""Radiogenomics on the real TCGA LGG patients of ``../shared/data/lgg`` (skipped cleanly without it).

Every output is checked against an independent recomputation: the measured component and slice
from the label files (scipy), the patients left out from ``clinical.csv`` (csv module), each
table from ``features.csv``, each p by enumerating every table with scipy's multivariate
hypergeometric pmf (and ``scipy.stats.fisher_exact`` for 2 x 2), Bonferroni from p.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from brats_pipeline.cli.radiogenomics import main
from brats_pipeline.radiogenomics.features import FEATURES

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lgg_flair_segmentation"
SUBTYPES = ("RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster", "OncosignCluster",
            "COCCluster")
#: The README's BEVR row on the 50 patients (default: largest component, median split).
README_BEVR_P = {"RNASeqCluster": 0.013, "MethylationCluster": 0.0357, "miRNACluster": 0.0657, "CNCluster": 0.0395,
                 "RPPACluster": 0.15, "OncosignCluster": 0.504, "COCCluster": 0.0129}


def _lgg_patients(lgg_dir: Path) -> list[str]:
    return sorted(p.name for p in lgg_dir.iterdir() if p.is_dir() and p.name.startswith("TCGA_"))


def _datalist(lgg_dir: Path, patients: list[str], path: Path) -> Path:
    entries = [{"case_id": p, "image": [str(lgg_dir / p / f"{p}_{m}.nii.gz") for m in ("t1", "flair", "t1c")],
                "label": str(lgg_dir / p / f"{p}_seg.nii.gz")} for p in patients]
    path.write_text(json.dumps({"task": "lgg", "training": entries}))
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def exact_rx2_by_enumeration(table: np.ndarray) -> float:
    """Fisher's exact p of an r x 2 table: every table with the same margins, weighted by the
    multivariate hypergeometric pmf, summed over those no more probable than the observed one."""
    from scipy.stats import multivariate_hypergeom

    t = np.asarray(table, dtype=np.int64)
    t = t[t.sum(axis=1) > 0]
    m, n = t.sum(axis=1), int(t[:, 0].sum())
    if len(m) < 2:
        return 1.0
    grid = np.stack(np.meshgrid(*[np.arange(k + 1) for k in m[:-1]], indexing="ij"), -1).reshape(-1, len(m) - 1)
    last = n - grid.sum(axis=1)
    ok = (last >= 0) & (last <= m[-1])
    pmf = multivariate_hypergeom.pmf(np.c_[grid[ok], last[ok]], m, n)
    observed = multivariate_hypergeom.pmf(t[:, 0], m, n)
    return float(min(1.0, pmf[pmf <= observed * (1 + 1e-7)].sum()))


def _largest_component(label_file: Path) -> np.ndarray:
    import nibabel as nib
    from scipy import ndimage

    mask = np.asarray(nib.load(str(label_file)).dataobj) != 0
    labels, n = ndimage.label(mask, np.ones((3, 3, 3), dtype=bool))
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])) if n > 1 else mask


def check_real_outputs(out: Path, lgg_dir: Path, patients: list[str], features: tuple[str, ...]) -> dict[tuple[str, str], dict]:
    """Every file written and every number in features.csv / associations.csv recomputed; returns the rows."""
    from scipy.stats import fisher_exact

    feats = {r["case_id"]: r for r in _read_csv(out / "features.csv")}
    assert sorted(feats) == patients
    for cid, r in feats.items():
        assert cid.startswith(r["patient_id"] + "_"), (cid, r["patient_id"])  # prefix match: TCGA_CS_4942 <- ..._19970222
        kept = _largest_component(lgg_dir / cid / f"{cid}_seg.nii.gz")
        assert int(r["n_voxels"]) == kept.sum() and float(r["volume_ml"]) == pytest.approx(kept.sum() / 1000)  # identity affine
        assert int(r["slice_index"]) == int(np.argmax(kept.sum(axis=(0, 1))))  # largest axial slice of the component
        # the convex hull lies inside the enclosing ellipsoid, so BEVR <= solidity <= 1
        assert 0.1 < float(r["bevr"]) <= float(r["solidity"]) <= 1, r
        assert 0 < float(r["mf"]) < 0.2 and 0 < float(r["asd"]) < 0.3 and 0 < float(r["circularity"]) <= 1, r
    with (lgg_dir / "clinical.csv").open(newline="") as fh:
        clinical = {row["Patient"]: row for row in csv.DictReader(fh)}
    rows = {(r["feature"], r["subtype"]): r for r in _read_csv(out / "associations.csv")}
    assert set(rows) == {(f, s) for f in features for s in SUBTYPES}
    for (name, subtype), r in rows.items():
        have = [(clinical[f["patient_id"]][subtype].strip(), float(f[name])) for f in feats.values()]
        missing = sum(1 for level, _ in have if not level)
        have = [(level, v) for level, v in have if level]
        assert (int(r["n"]), int(r["n_missing_subtype"]), int(r["n_missing_feature"])) == (len(have), missing, 0)
        median = float(np.median([v for _, v in have]))
        levels = sorted({level for level, _ in have}, key=float)
        table = np.array([[sum(1 for lv, v in have if lv == level and (v > median) == high) for high in (False, True)]
                          for level in levels])
        assert r["table"] == " ".join(f"{lv}:{lo}/{hi}" for lv, (lo, hi) in zip(levels, table)), (name, subtype)
        p = float(r["p"])
        assert 0 < p <= 1
        assert p == pytest.approx(exact_rx2_by_enumeration(table), rel=1e-5), (name, subtype, table.tolist())
        if len(levels) == 2:
            assert p == pytest.approx(fisher_exact(table).pvalue, rel=1e-5)
        assert float(r["p_bonferroni"]) == pytest.approx(min(1.0, p * len(SUBTYPES)), rel=1e-5)
        assert p <= float(r["p_holm"]) <= float(r["p_bonferroni"]) <= 1
    summary = (out / "summary.md").read_text()
    page = (out / "report.html").read_text()
    figures = ["pvalues"] + [f"{kind}_{f}" for kind in ("by_subtype", "examples") for f in features]
    for f in features:
        assert f"\n| {f} | " in summary
    for fig in figures:
        png = out / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, fig
        assert f'src="figures/{fig}.png"' in page, fig
    assert "<h2>Definitions</h2>" in page and page.count("<table>") >= 2
    return rows


def test_real_lgg_subset_end_to_end(lgg_dir: Path, tmp_path: Path) -> None:
    """Six real patients through a datalist, two features: seconds."""
    patients = _lgg_patients(lgg_dir)[::8][:6]
    out = tmp_path / "rg"
    assert main(["--labels", str(_datalist(lgg_dir, patients, tmp_path / "lgg.json")), "--clinical",
                 str(lgg_dir / "clinical.csv"), "-o", str(out), "--features", "bevr,asd", "--no-progress"]) == 0
    check_real_outputs(out, lgg_dir, patients, ("bevr", "asd"))


def _perturbed_predictions(lgg_dir: Path, patients: list[str], folder: Path) -> None:
    """``<case>.nii.gz`` as brats-infer writes them: each manual mask dilated by one pixel in-plane,
    plus three 2 x 2 false-positive specks in corners of the field of view (what automatic masks do)."""
    import nibabel as nib
    from scipy import ndimage

    from preprocessing.io import write_nifti

    folder.mkdir()
    for cid in patients:
        img = nib.load(str(lgg_dir / cid / f"{cid}_seg.nii.gz"))
        mask = ndimage.binary_dilation(np.asarray(img.dataobj) != 0, np.ones((3, 3, 1), dtype=bool))
        z = mask.shape[2]
        mask[4:6, 4:6, 0] = mask[-6:-4, 4:6, z // 2] = mask[4:6, -6:-4, z - 1] = True
        write_nifti(mask.astype(np.uint8), img.affine, folder / f"{cid}.nii.gz")


def test_real_predictions_vs_manual_and_the_component_choice(lgg_dir: Path, tmp_path: Path) -> None:
    """``--from pred --truth``: the comparison table on five real patients whose "predictions" are
    their manual masks, dilated and with specks. The default (largest component) drops the specks;
    all components together let them blow up the enclosing ellipsoid."""
    patients = _lgg_patients(lgg_dir)[3::10]
    _perturbed_predictions(lgg_dir, patients, tmp_path / "pred")
    truth = _datalist(lgg_dir, patients, tmp_path / "truth.json")
    common = ["--labels", str(tmp_path / "pred"), "--from", "pred", "--truth", str(truth), "--clinical",
              str(lgg_dir / "clinical.csv"), "--features", "bevr,mf,volume_ml", "--no-progress"]
    assert main(common + ["-o", str(tmp_path / "largest")]) == 0
    assert main(common + ["-o", str(tmp_path / "all"), "--components", "all", "--no-figures"]) == 0
    comp = {r["feature"]: r for r in _read_csv(tmp_path / "largest" / "comparison.csv")}
    assert all(int(comp[f]["n"]) == len(patients) for f in comp)
    assert float(comp["volume_ml"]["bias"]) > 0 and float(comp["volume_ml"]["pearson_r"]) > 0.99
    assert abs(float(comp["bevr"]["bias"])) < 0.05 and float(comp["bevr"]["pearson_r"]) > 0.9
    assert float(comp["mf"]["pearson_r"]) > 0.8
    assert float(comp["bevr"]["loa_low"]) < float(comp["bevr"]["bias"]) < float(comp["bevr"]["loa_high"])
    pred = {r["case_id"]: r for r in _read_csv(tmp_path / "largest" / "features.csv")}
    manual = {r["case_id"]: r for r in _read_csv(tmp_path / "largest" / "features_manual.csv")}
    for cid in patients:
        assert int(pred[cid]["n_components"]) == int(manual[cid]["n_components"]) + 3
        assert float(pred[cid]["kept_fraction"]) < 1
    spread = {r["case_id"]: r for r in _read_csv(tmp_path / "all" / "features.csv")}
    for cid in patients:
        assert float(spread[cid]["bevr"]) < 0.1 * float(pred[cid]["bevr"]), cid  # the specks span the field of view
    assert "Predicted vs manual masks" in (tmp_path / "largest" / "summary.md").read_text()
    for name in ("associations_manual.csv", "figures/bland_altman.png", "figures/pred_vs_manual.png"):
        assert (tmp_path / "largest" / name).stat().st_size > 0, name


@pytest.mark.slow
def test_real_lgg_patients_end_to_end(lgg_dir: Path, tmp_path: Path) -> None:
    """Every patient of ../shared/data/lgg, every feature and figure (about 25 s on 2 CPU cores):
    every number recomputed, and the README's BEVR row reproduced."""
    out = tmp_path / "rg"
    assert main(["--labels", str(lgg_dir), "--clinical", str(lgg_dir / "clinical.csv"), "-o", str(out),
                 "--no-progress", "--workers", "2"]) == 0
    rows = check_real_outputs(out, lgg_dir, _lgg_patients(lgg_dir), FEATURES)
    for subtype, p in README_BEVR_P.items():
        assert float(rows["bevr", subtype]["p"]) == pytest.approx(p, rel=5e-3), subtype
    assert (int(rows["bevr", "RNASeqCluster"]["n"]), int(rows["bevr", "RNASeqCluster"]["n_missing_subtype"])) == (39, 11)


@pytest.mark.slow
def test_real_bundle_predictions_agree_with_manual_masks(lgg_dir: Path, tmp_path: Path) -> None:
    """The shipped LGG bundle predicts ten patients (``brats-infer``; it was trained on them, so this
    checks the path, not generalisation); the features of its masks track the manual ones."""
    from brats_pipeline.cli.infer import main as infer_main

    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip(f"{BUNDLE}/models/model.pt absent")
    patients = _lgg_patients(lgg_dir)[::5]
    truth = _datalist(lgg_dir, patients, tmp_path / "lgg.json")
    assert infer_main(["-i", str(truth), "-o", str(tmp_path / "pred"), "--bundle", str(BUNDLE), "--device", "cpu",
                       "--no-progress"]) == 0
    assert main(["--labels", str(tmp_path / "pred"), "--from", "pred", "--truth", str(truth), "--clinical",
                 str(lgg_dir / "clinical.csv"), "-o", str(tmp_path / "rg"), "--no-progress", "--no-figures"]) == 0
    comp = {r["feature"]: r for r in _read_csv(tmp_path / "rg" / "comparison.csv")}
    # measured on these ten: Pearson r bevr 0.88, volume 0.997, mf 0.91, asd 0.90; BEVR bias +0.037
    assert float(comp["volume_ml"]["pearson_r"]) > 0.98
    assert float(comp["bevr"]["pearson_r"]) > 0.7 and abs(float(comp["bevr"]["bias"])) < 0.08
    assert float(comp["mf"]["pearson_r"]) > 0.7 and float(comp["asd"]["pearson_r"]) > 0.7
