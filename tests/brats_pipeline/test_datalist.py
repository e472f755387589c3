"""Dataset discovery, case checks and datalists with patient-level folds."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from brats_pipeline.cli.datalist import main as datalist_main
from brats_pipeline.cli.synth import main as synth_main
from brats_pipeline.data.datalist import (
    DatasetError,
    assign_folds,
    build_datalist,
    load_datalist,
    split_fold,
    write_datalist,
)
from brats_pipeline.data.discovery import discover_cases
from brats_pipeline.data.synthetic import write_cohort

SHAPE = (32, 32, 24)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brats2021")
    write_cohort(root, "brats2021", n_cases=4, n_unlabelled=1, shape=SHAPE, seed=0)
    return root


@pytest.fixture
def broken(cohort: Path, tmp_path: Path) -> Path:
    """A writable copy of the cohort to break one case of."""
    root = tmp_path / "data"
    shutil.copytree(cohort, root)
    return root


# ----------------------------------------------------------------------------- layouts
def test_brats2021_cohort_datalist(cohort: Path) -> None:
    dl = build_datalist(cohort, "brats2021", folds=2, seed=0)
    assert dl["numTraining"] == 4 and dl["numTest"] == 1 and dl["skipped"] == []
    first = dl["training"][0]
    assert [Path(p).name for p in first["image"]] == [
        "BraTS2021_00000_t1ce.nii.gz",
        "BraTS2021_00000_t1.nii.gz",
        "BraTS2021_00000_t2.nii.gz",
        "BraTS2021_00000_flair.nii.gz",
    ]
    assert Path(first["label"]).name == "BraTS2021_00000_seg.nii.gz"
    assert dl["testing"][0]["case_id"] == "BraTS2021_00004" and "label" not in dl["testing"][0]
    assert dl["modality"] == {"0": "t1c", "1": "t1", "2": "t2", "3": "flair"}
    assert dl["regions"] == {"TC": [1, 4], "WT": [1, 2, 4], "ET": [4]}
    assert sorted(Counter(e["fold"] for e in dl["training"]).values()) == [2, 2]


def test_brats2020_layout_uncompressed_nii(tmp_path: Path, cohort: Path) -> None:
    """BraTS 2020 ships ``BraTS20_Training_001/BraTS20_Training_001_flair.nii`` (not gzipped)."""
    for i, src in enumerate(sorted(p for p in cohort.iterdir() if p.is_dir())[:2], start=1):
        case_id = f"BraTS20_Training_{i:03d}"
        (tmp_path / case_id).mkdir()
        for f in src.iterdir():
            suffix = f.name.removeprefix(src.name).removesuffix(".nii.gz")
            (tmp_path / case_id / f"{case_id}{suffix}.nii").write_bytes(gzip.decompress(f.read_bytes()))
    dl = build_datalist(tmp_path, "brats2020", folds=2)
    assert [e["case_id"] for e in dl["training"]] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert dl["task"] == "brats2021" and dl["training"][0]["image"][0].endswith("_t1ce.nii")


def test_brats2023_layout_groups_timepoints_of_a_patient(tmp_path: Path) -> None:
    write_cohort(tmp_path, "brats2023", n_cases=4, shape=SHAPE)
    # a second time point of patient 00000
    shutil.copytree(tmp_path / "BraTS-GLI-00000-000", tmp_path / "BraTS-GLI-00000-001")
    for f in (tmp_path / "BraTS-GLI-00000-001").iterdir():
        f.rename(f.with_name(f.name.replace("-000-", "-001-")))
    dl = build_datalist(tmp_path, "brats2023", folds=2, seed=3)
    folds = {e["case_id"]: e["fold"] for e in dl["training"]}
    assert len(folds) == 5
    assert folds["BraTS-GLI-00000-000"] == folds["BraTS-GLI-00000-001"]
    assert Path(dl["training"][0]["image"][3]).name.endswith("-t2f.nii.gz")


def test_msd_layout(tmp_path: Path) -> None:
    write_cohort(tmp_path, "msd_task01", n_cases=3, n_unlabelled=1, shape=SHAPE)
    dl = build_datalist(tmp_path, "msd_task01", folds=3)
    assert dl["numTraining"] == 3 and dl["numTest"] == 1
    assert isinstance(dl["training"][0]["image"], str)  # one 4D file, channels last
    assert dl["training"][0]["label"].endswith("labelsTr/BRATS_000.nii.gz")


def test_lgg_style_layout_patient_from_case_id(tmp_path: Path) -> None:
    write_cohort(tmp_path, "lgg", n_cases=3, shape=SHAPE)
    dl = build_datalist(tmp_path, "lgg", folds=3)
    assert [e["patient_id"] for e in dl["training"]] == ["TCGA_SY_0000", "TCGA_SY_0001", "TCGA_SY_0002"]


def test_datalist_loads_with_monai_absolute_and_relative(cohort: Path, tmp_path: Path) -> None:
    dl = build_datalist(cohort, "brats2021", folds=2)
    for relative in (False, True):
        path = write_datalist(dl, tmp_path / f"dl_{relative}.json", relative=relative)
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training")
        assert len(items) == 4
        assert all(Path(p).is_file() for item in items for p in [*item["image"], item["label"]])
        test_items = load_decathlon_datalist(str(path), data_list_key="testing")
        assert len(test_items) == 1
        ours = load_datalist(path)
        assert ours["training"][0]["image"] == items[0]["image"]
    assert not Path(json.loads((tmp_path / "dl_True.json").read_text())["training"][0]["label"]).is_absolute()


# ----------------------------------------------------------------------------- folds
def test_folds_deterministic_balanced_and_seeded() -> None:
    ids = [f"BraTS2021_{i:05d}" for i in range(23)]
    a = assign_folds(ids, "brats2021", 5, seed=0)
    assert a == assign_folds(list(reversed(ids)), "brats2021", 5, seed=0)
    assert sorted(Counter(a.values()).values()) == [4, 4, 5, 5, 5]
    assert a != assign_folds(ids, "brats2021", 5, seed=1)


def test_folds_are_patient_level() -> None:
    ids = [f"TCGA_CS_{p:04d}_{d}" for p in range(6) for d in ("19990101", "20000101")]
    folds = assign_folds(ids, "lgg", 3, seed=0)
    for p in range(6):
        assert folds[f"TCGA_CS_{p:04d}_19990101"] == folds[f"TCGA_CS_{p:04d}_20000101"]
    assert sorted(Counter(folds.values()).values()) == [4, 4, 4]


def test_too_many_folds() -> None:
    with pytest.raises(ValueError, match="cannot make 5 folds from 3 patient"):
        assign_folds(["a", "b", "c"], "brats2021", 5)


def test_split_fold(cohort: Path) -> None:
    dl = build_datalist(cohort, "brats2021", folds=2)
    train, val = split_fold(dl["training"], 1)
    assert len(train) + len(val) == 4 and {e["fold"] for e in val} == {1}
    with pytest.raises(ValueError, match="fold 7 not in"):
        split_fold(dl["training"], 7)


# ----------------------------------------------------------------------------- bad input
def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def _break_missing_modality(case: Path) -> str:
    (case / f"{case.name}_t2.nii.gz").unlink()
    return "missing modality t2"


def _break_unreadable(case: Path) -> str:
    (case / f"{case.name}_t1.nii.gz").write_bytes(b"this is not a NIfTI file" * 10)
    return "unreadable image header"


def _break_truncated(case: Path) -> str:
    path = case / f"{case.name}_flair.nii.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return "truncated or corrupt image data"


def _break_shape(case: Path) -> str:
    path = case / f"{case.name}_t2.nii.gz"
    _rewrite(path, np.ones((32, 32, 20), dtype=np.int16))
    return r"t2 shape \(32, 32, 20\) differs from t1c shape \(32, 32, 24\)"


def _break_affine(case: Path) -> str:
    path = case / f"{case.name}_t1.nii.gz"
    img = nib.load(path)
    _rewrite(path, np.asarray(img.dataobj), np.diag([1.2, 1.2, 1.2, 1.0]))
    return r"t1 affine differs from t1c .*spacing \(1.2, 1.2, 1.2\) vs \(1, 1, 1\)"


def _break_nan(case: Path) -> str:
    path = case / f"{case.name}_t2.nii.gz"
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    _rewrite(path, data)
    return "1 voxels are NaN or Inf"


def _break_constant(case: Path) -> str:
    _rewrite(case / f"{case.name}_t1ce.nii.gz", np.zeros(SHAPE, dtype=np.int16))
    return "constant image"


def _break_label_values(case: Path) -> str:
    path = case / f"{case.name}_seg.nii.gz"
    data = np.asarray(nib.load(path).dataobj).astype(np.uint8)
    data[data == 4] = 3  # BraTS 2023 ET value in a BraTS 2021 dataset
    _rewrite(path, data)
    return r"label values \[3\] are not in the brats2021 scheme"


def _break_non_3d(case: Path) -> str:
    _rewrite(case / f"{case.name}_t1.nii.gz", np.ones((*SHAPE, 2), dtype=np.int16))
    return r"expected a 3D image, got shape \(32, 32, 24, 2\)"


BREAKERS = [
    _break_missing_modality,
    _break_unreadable,
    _break_truncated,
    _break_shape,
    _break_affine,
    _break_nan,
    _break_constant,
    _break_label_values,
    _break_non_3d,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.removeprefix("_break_"))
def test_bad_case_is_skipped_and_reported_by_file(broken: Path, breaker) -> None:
    bad_case = broken / "BraTS2021_00001"
    expected = breaker(bad_case)
    before = _hashes(broken)
    dl = build_datalist(broken, "brats2021", folds=2)
    assert [e["case_id"] for e in dl["training"]] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
    (skipped,) = dl["skipped"]
    assert skipped["case_id"] == "BraTS2021_00001"
    assert Path(skipped["file"]).parent == bad_case
    assert re.search(expected, skipped["reason"]), skipped["reason"]
    assert _hashes(broken) == before  # inputs untouched
    with pytest.raises(DatasetError, match=f"BraTS2021_00001: {re.escape(str(bad_case))}"):
        build_datalist(broken, "brats2021", folds=2, strict=True)


def test_header_check_level_does_not_read_voxels(broken: Path) -> None:
    _break_truncated(broken / "BraTS2021_00001")
    assert build_datalist(broken, "brats2021", folds=2, check="header")["skipped"] == []
    assert len(build_datalist(broken, "brats2021", folds=2, check="full")["skipped"]) == 1


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        discover_cases(tmp_path / "nope", "brats2021")
    with pytest.raises(ValueError, match="no brats2021 cases found"):
        discover_cases(tmp_path, "brats2021")


def test_load_datalist_rejects_other_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"foo": 1}')
    with pytest.raises(ValueError, match="not a brats-pipeline datalist"):
        load_datalist(tmp_path / "x.json")


@pytest.mark.parametrize(("entry", "message"), [
    ({"image": [None]}, r"training\[0\]: 'image' must be a file or a non-empty list of files, got \[None\]"),
    ({"image": []}, r"training\[0\]: 'image' must be a file or a non-empty list of files, got \[\]"),
    ({"image": {"t1": "a.nii.gz"}}, r"training\[0\]: 'image' must be a file"),
    ({"image": "a.nii.gz", "label": ["b.nii.gz"]}, r"training\[0\]: 'label' must be a file"),
    ("a.nii.gz", r"training\[0\] is not an object with 'image'"),
])
def test_load_datalist_names_a_malformed_entry(tmp_path: Path, entry: object, message: str) -> None:
    """A malformed entry is a ValueError naming the datalist and the entry (it was a TypeError deep in path handling)."""
    import json

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"task": "lgg", "training": [entry]}))
    with pytest.raises(ValueError, match=message) as err:
        load_datalist(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- CLIs
def test_cli_synth_then_datalist(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cohort"
    assert (
        synth_main(
            [str(out), "--cases", "5", "--task", "brats2021", "--shape", "32", "32", "32", "--seed", "0"]
        )
        == 0
    )
    assert (
        datalist_main([str(out), "--task", "brats2021", "-o", str(tmp_path / "dl.json"), "--folds", "5"]) == 0
    )
    printed = capsys.readouterr().out
    assert "5 labelled case(s) from 5 patient(s), 0 unlabelled, 0 skipped" in printed
    assert "folds: 0: 1, 1: 1, 2: 1, 3: 1, 4: 1" in printed
    assert len(load_datalist(tmp_path / "dl.json")["training"]) == 5


def test_cli_strict_fails_default_lists(broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _break_missing_modality(broken / "BraTS2021_00002")
    out = tmp_path / "dl.json"
    assert datalist_main([str(broken), "--task", "brats2021", "-o", str(out), "--folds", "2"]) == 0
    assert "skipped BraTS2021_00002:" in capsys.readouterr().out
    assert (
        datalist_main(
            [
                str(broken),
                "--task",
                "brats2021",
                "-o",
                str(tmp_path / "strict.json"),
                "--folds",
                "2",
                "--strict",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "1 unusable case(s)" in err and "missing modality t2" in err
    assert not (tmp_path / "strict.json").exists()


# ----------------------------------------------------------------------------- real data
def test_real_lgg_datalist(lgg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lgg.json"
    patients = sorted(p.name for p in lgg_dir.iterdir() if p.is_dir() and (p / f"{p.name}_seg.nii.gz").exists())
    n = len(patients)
    assert n >= 5, f"expected the LGG patient folders in {lgg_dir}, found {n}"
    assert datalist_main([str(lgg_dir), "--task", "lgg", "-o", str(out)]) == 0
    dl = load_datalist(out)
    assert dl["numTraining"] == n and dl["skipped"] == []
    assert sorted(e["case_id"] for e in dl["training"]) == patients
    sizes = sorted(Counter(e["fold"] for e in dl["training"]).values())
    assert len(sizes) == 5 and sum(sizes) == n and sizes[-1] - sizes[0] <= 1  # balanced patient-level folds
    for entry in dl["training"]:
        names = [Path(p).name for p in entry["image"]]
        cid = entry["case_id"]
        assert names == [f"{cid}_t1.nii.gz", f"{cid}_flair.nii.gz", f"{cid}_t1c.nii.gz"]
        assert Path(entry["label"]).name == f"{cid}_seg.nii.gz"
    assert f"{n} labelled case(s) from {n} patient(s)" in capsys.readouterr().out
