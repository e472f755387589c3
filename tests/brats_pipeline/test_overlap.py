"""External cohorts: test cases that are also training cases are found and removed, by the name-mapping
CSV or by image content (byte-identical copies, the same image re-saved with another header, reoriented),
while different images (one voxel off, another phantom) stay; brats-datalist says how many it removed."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_pipeline.cli.datalist import main as datalist_main
from brats_pipeline.data.datalist import build_datalist, load_datalist, write_datalist
from brats_pipeline.data.overlap.by_content import image_fingerprints, match_by_content
from brats_pipeline.data.overlap.by_name import match_by_name, read_name_mapping
from brats_pipeline.data.overlap.cohorts import Cohort, load_cohort
from brats_pipeline.data.overlap.removal import remove_overlap
from brats_pipeline.data.synthetic import make_phantom, write_case, write_cohort
from preprocessing.identity import voxel_digest

SHAPE = (32, 32, 24)
TASK = "brats2021"
SUFFIXES = ("t1", "t1ce", "t2", "flair", "seg")
#: Test cases that are training cases (by content), and what became of each.
SAME = {"BraTS2021_00100": "BraTS2021_00000",  # byte-identical copy
        "BraTS2021_00101": "BraTS2021_00001",  # re-saved: other affine, description, dtype, scale factor, .nii
        "BraTS2021_00104": "BraTS2021_00003",  # reoriented: voxels flipped along x with the affine
        "BraTS2021_00105": "BraTS2021_00003"}  # header only: the affine's x axis flipped, voxels as they were
OTHER = ("BraTS2021_00102", "BraTS2021_00103")  # another phantom; a training case with one voxel changed


def _files(case: Path) -> dict[str, Path]:
    return {s: next(case.glob(f"*_{s}.nii*")) for s in SUFFIXES}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype: type, description: str = "") -> Path:
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    if description:
        img.header["descrip"] = description.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _resave(src: Path, dst: Path, case_id: str) -> None:
    """Every file of ``src`` again under ``case_id``, each with another header; the voxel values unchanged."""
    files = _files(src)
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -3.0, 2.5)
    for suffix, path in files.items():
        data, affine = _load(path)
        affine = shift @ affine
        out = dst / case_id / f"{case_id}_{suffix}"
        if suffix == "t1":  # float32, uncompressed, a description
            _save(data, affine, out.with_name(out.name + ".nii"), np.float32, "re-saved by another tool")
        elif suffix == "t1ce":  # int16 holding 2x the value, scale factor 0.5 in the header
            nii = _save(2 * data.astype(np.int32), affine, out.with_name(out.name + ".nii"), np.int16)
            raw = bytearray(nii.read_bytes())
            assert struct.unpack_from("<i", raw, 0)[0] == 348  # a little-endian NIfTI-1 header
            struct.pack_into("<ff", raw, 112, 0.5, 0.0)  # scl_slope, scl_inter
            nii.write_bytes(bytes(raw))
            assert np.array_equal(np.asarray(nib.load(str(nii)).dataobj), data)
        elif suffix == "t2":  # int32, gzip
            _save(data, affine, out.with_name(out.name + ".nii.gz"), np.int32, "BraTS 2021")
        else:
            _save(data, affine, out.with_name(out.name + ".nii.gz"), np.uint8 if suffix == "seg" else np.int16)


def _reorient(src: Path, dst: Path, case_id: str, move_voxels: bool) -> None:
    """``move_voxels``: flip x with the affine (one world image); else flip the affine's x axis only."""
    for suffix, path in _files(src).items():
        data, affine = _load(path)
        flipped = affine.copy()
        flipped[:3, 0] = -affine[:3, 0]
        if move_voxels:
            data = data[::-1]
            flipped[:3, 3] = affine[:3, 3] + (data.shape[0] - 1) * affine[:3, 0]
        _save(data, flipped, dst / case_id / f"{case_id}_{suffix}.nii.gz", data.dtype.type)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/`` (4 phantoms, its datalist ``train.json``) and ``test/`` (6 cases: 4 are training cases)."""
    root = tmp_path_factory.mktemp("overlap")
    write_cohort(root / "train", TASK, n_cases=4, shape=SHAPE, seed=0)
    write_datalist(build_datalist(root / "train", TASK, folds=2, check="none"), root / "train.json")
    train, test = root / "train", root / "test"
    test.mkdir()
    copy = test / "BraTS2021_00100"
    shutil.copytree(train / "BraTS2021_00000", copy)
    for f in copy.iterdir():
        f.rename(copy / f.name.replace("BraTS2021_00000", "BraTS2021_00100"))
    _resave(train / "BraTS2021_00001", test, "BraTS2021_00101")
    write_case(make_phantom(TASK, SHAPE, seed=[1, 2]), test, "BraTS2021_00102")
    for suffix, path in _files(train / "BraTS2021_00002").items():  # one voxel off in every image
        data, affine = _load(path)
        if suffix != "seg":
            data = data.copy()
            data[5, 6, 7] += 1
        _save(data, affine, test / "BraTS2021_00103" / f"BraTS2021_00103_{suffix}.nii.gz", data.dtype.type)
    _reorient(train / "BraTS2021_00003", test, "BraTS2021_00104", move_voxels=True)
    _reorient(train / "BraTS2021_00003", test, "BraTS2021_00105", move_voxels=False)
    return root


def test_the_test_cohort_is_what_it_claims(cohorts: Path) -> None:
    """The copies are what their names say: one byte-identical, the others other bytes and headers."""
    train, test = cohorts / "train", cohorts / "test"
    a, b = _files(train / "BraTS2021_00000"), _files(test / "BraTS2021_00100")
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in SUFFIXES)
    resaved = _files(test / "BraTS2021_00101")
    assert {p.name.split(".", 1)[1] for p in resaved.values()} == {"nii", "nii.gz"}
    original = _files(train / "BraTS2021_00001")
    for s in SUFFIXES:
        assert resaved[s].read_bytes() != original[s].read_bytes()
        assert np.array_equal(_load(resaved[s])[0], _load(original[s])[0])
        assert not np.allclose(_load(resaved[s])[1], _load(original[s])[1])
    assert nib.load(str(resaved["t1"])).get_data_dtype() == np.float32
    assert nib.load(str(resaved["t1ce"])).dataobj.slope == 0.5
    datalist = build_datalist(test, TASK, folds=2, check="full")  # every test case is a usable case
    assert datalist["numTraining"] == 6 and not datalist["skipped"]


def test_voxel_digest_is_the_values_not_the_storage() -> None:
    a = np.arange(60, dtype=np.int16).reshape(3, 4, 5) - 30
    assert voxel_digest(a) == voxel_digest(a.astype(np.float32)) == voxel_digest(a.astype(np.float64))
    assert voxel_digest(a) == voxel_digest(np.asfortranarray(a))  # memory order is not content
    assert voxel_digest(a) != voxel_digest(a.reshape(4, 3, 5))  # nor is the shape the same image
    b = a.copy()
    b[1, 2, 3] += 1
    assert voxel_digest(a) != voxel_digest(b)
    assert voxel_digest(np.array([-0.0, np.nan])) == voxel_digest(np.array([0.0, -np.nan]))


def test_constant_images_are_not_evidence(tmp_path: Path) -> None:
    blank = _save(np.zeros((4, 4, 4)), np.eye(4), tmp_path / "blank.nii.gz", np.int16)
    assert image_fingerprints(blank) == [frozenset()]
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    one = _save(np.arange(64).reshape(4, 4, 4), flipped, tmp_path / "one.nii.gz", np.int16)
    assert len(image_fingerprints(one)[0]) == 2  # as stored and in RAS orientation


# ----------------------------------------------------------------------------- by image content
def test_overlap_by_content(cohorts: Path) -> None:
    test = build_datalist(cohorts / "test", TASK, folds=2, check="none")
    cleaned, report = remove_overlap(test, [cohorts / "train.json"])
    assert report.method == "content" and report.n_test == 6
    assert {m.case_id: m.training_case for m in report.matches} == SAME
    for match in report.matches:
        assert match.cohort == str(cohorts / "train.json")
        assert match.evidence == "same voxels in 4 of 4 image(s): t1c, t1, t2, flair", match
    assert sorted(e["case_id"] for e in cleaned["training"]) == list(OTHER)
    assert cleaned["numTraining"] == 2 and {e["fold"] for e in cleaned["training"]} == {0, 1}  # folds dealt again
    assert cleaned["removed_overlap"]["method"] == "content"
    assert [r["case_id"] for r in cleaned["removed_overlap"]["removed"]] == sorted(SAME)
    assert test["numTraining"] == 6  # the input is not changed
    # a folder of the training cohort is as good as its datalist
    again = remove_overlap(test, [cohorts / "train"])[1]
    assert again.removed == report.removed


def test_content_rule_any_or_all(cohorts: Path, tmp_path: Path) -> None:
    """A test case sharing one image with a training case: removed under 'any', kept under 'all'."""
    write_case(make_phantom(TASK, SHAPE, seed=[2, 0]), tmp_path, "BraTS2021_00200")
    flair = "BraTS2021_00200_flair.nii.gz"
    shutil.copyfile(cohorts / "train" / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz", tmp_path / "BraTS2021_00200" / flair)
    training = [load_cohort(cohorts / "train.json")]
    test = load_cohort(tmp_path, TASK)
    found = match_by_content(training, test, "any")
    assert found.removed == ["BraTS2021_00200"] and found.matches[0].training_case == "BraTS2021_00002"
    assert found.matches[0].evidence == "same voxels in 1 of 4 image(s): flair"
    assert match_by_content(training, test, "all").removed == []
    with pytest.raises(ValueError, match="unknown content rule 'most'"):
        match_by_content(training, test, "most")


def test_an_unreadable_image_is_named(cohorts: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    shutil.copytree(cohorts / "train", train)
    bad = train / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    test = build_datalist(cohorts / "test", TASK, folds=2, check="none")
    with pytest.raises(ValueError, match=f"^{bad}: "):
        remove_overlap(test, [train])


# ----------------------------------------------------------------------------- by the name mapping
def _brats20_train(cohorts: Path, tmp_path: Path) -> Path:
    """The training cohort under BraTS 2020 names (BraTS20_Training_001 ...)."""
    train = tmp_path / "brats20"
    for i in range(4):
        old, new = f"BraTS2021_{i:05d}", f"BraTS20_Training_{i + 1:03d}"
        shutil.copytree(cohorts / "train" / old, train / new)
        for f in (train / new).iterdir():
            f.rename(train / new / f.name.replace(old, new))
    return train


MAPPING = """BraTS2021,BraTS2020,BraTS2019,Site No (represents the originating institution)
BraTS2021_00100,BraTS20_Training_001,BraTS19_2013_0_1,1
BraTS2021_00101,BraTS20_Training_002,,1
BraTS2021_00102,NA,NA,2
BraTS2021_00103,BraTS20_Training_099,,3
BraTS2021_00999,BraTS20_Training_003,,3
"""


def test_overlap_by_name_mapping(cohorts: Path, tmp_path: Path) -> None:
    train = _brats20_train(cohorts, tmp_path)
    csv_path = tmp_path / "BraTS21-17_Mapping.csv"
    csv_path.write_text("\ufeff" + MAPPING, encoding="utf-8")  # the BOM of a spreadsheet export is ignored
    columns, rows = read_name_mapping(csv_path)
    assert columns[:2] == ["BraTS2021", "BraTS2020"] and len(rows) == 5
    test = build_datalist(cohorts / "test", TASK, folds=2, check="none")
    cleaned, report = remove_overlap(test, [train], name_mapping=csv_path)  # columns found from the ids
    assert report.method == "name-mapping" and report.columns == ("BraTS2020", "BraTS2021")
    assert {m.case_id: m.training_case for m in report.matches} == {"BraTS2021_00100": "BraTS20_Training_001",
                                                                    "BraTS2021_00101": "BraTS20_Training_002"}
    assert report.matches[0].evidence == "BraTS21-17_Mapping.csv: BraTS2021 BraTS2021_00100 = BraTS2020 BraTS20_Training_001"
    # 00102 is new (NA), 00103's 2020 case is not in this training cohort; 00104/00105 are not in the CSV
    assert report.unmapped == ["BraTS2021_00104", "BraTS2021_00105"]
    assert sorted(e["case_id"] for e in cleaned["training"]) == ["BraTS2021_00102", "BraTS2021_00103",
                                                                 "BraTS2021_00104", "BraTS2021_00105"]
    assert "removed 2 of 6 test case(s)" in report.describe() and "2 test case(s) not listed" in report.describe()
    named = match_by_name([load_cohort(train, TASK)], [e["case_id"] for e in test["training"]], csv_path,
                          ("BraTS2020", "BraTS2021"))
    assert named.removed == report.removed


def test_brats2020_name_mapping_columns(cohorts: Path, tmp_path: Path) -> None:
    """BraTS 2020's name_mapping.csv style: the columns are named, one case id the other's."""
    train = _brats20_train(cohorts, tmp_path)
    csv_path = tmp_path / "name_mapping.csv"
    csv_path.write_text("Grade,BraTS_2019_subject_ID,BraTS_2020_subject_ID,BraTS_2021_subject_ID\n"
                        "HGG,BraTS19_CBICA_AAB_1,BraTS20_Training_004,BraTS2021_00105\n"
                        "LGG,BraTS19_TMC_09043_1,BraTS20_Training_010,BraTS2021_00102\n")
    test = Cohort("test", tuple({"case_id": f"BraTS2021_0010{i}"} for i in range(6)))
    report = match_by_name([load_cohort(train, TASK)], test.case_ids, csv_path,
                           ("BraTS_2020_subject_ID", "BraTS_2021_subject_ID"))
    assert report.removed == ["BraTS2021_00105"] and len(report.unmapped) == 4


def test_bad_mapping_csvs_are_named(cohorts: Path, tmp_path: Path) -> None:
    train = [load_cohort(_brats20_train(cohorts, tmp_path), TASK)]
    ids = [f"BraTS2021_0010{i}" for i in range(6)]
    good = tmp_path / "map.csv"
    good.write_text(MAPPING)
    with pytest.raises(ValueError, match=rf"^{good}: no column 'BraTS_2020_subject_ID' in the header; columns: BraTS2021, "):
        match_by_name(train, ids, good, ("BraTS_2020_subject_ID", "BraTS2021"))
    with pytest.raises(ValueError, match=rf"^{good}: column 'BraTS2019' holds none of the training cohort's case ids"):
        match_by_name(train, ids, good, ("BraTS2019", "BraTS2021"))
    other = tmp_path / "other.csv"
    other.write_text("a,b\nx,y\n")
    with pytest.raises(ValueError, match=rf"^{other}: no column holds the training cohort's case ids"):
        match_by_name(train, ids, other)
    twice = tmp_path / "twice.csv"
    twice.write_text("old,copy,new\nBraTS20_Training_001,BraTS20_Training_001,BraTS2021_00100\n")
    with pytest.raises(ValueError, match="hold the training cohort's case ids equally often"):
        match_by_name(train, ids, twice)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=rf"^{empty}: name-mapping CSV is empty"):
        read_name_mapping(empty)
    with pytest.raises(FileNotFoundError, match="name-mapping CSV not found"):
        read_name_mapping(tmp_path / "absent.csv")


# ----------------------------------------------------------------------------- brats-datalist
def test_cli_removes_and_says_how_many(cohorts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "external.json"
    args = [str(cohorts / "test"), "--task", TASK, "--folds", "2", "--check", "header"]
    assert datalist_main([*args, "-o", str(out), "--exclude-overlap", str(cohorts / "train.json")]) == 0
    printed = capsys.readouterr().out
    assert "2 labelled case(s) from 2 patient(s)" in printed
    assert "removed 4 of 6 test case(s) also in the training cohort(s), by image content" in printed
    for case, train_case in SAME.items():
        assert f"removed {case}: also {train_case} of {cohorts / 'train.json'} (same voxels" in printed
    written = load_datalist(out)
    assert sorted(e["case_id"] for e in written["training"]) == list(OTHER)
    assert len(written["removed_overlap"]["removed"]) == 4

    train = _brats20_train(cohorts, tmp_path)
    csv_path = tmp_path / "BraTS21-17_Mapping.csv"
    csv_path.write_text(MAPPING)
    mapped = tmp_path / "mapped.json"
    assert datalist_main([*args, "-o", str(mapped), "--exclude-overlap", str(train), "--name-mapping", str(csv_path),
                          "--mapping-columns", "BraTS2020", "BraTS2021"]) == 0
    printed = capsys.readouterr().out
    assert f"removed 2 of 6 test case(s) also in the training cohort(s), by name mapping {csv_path} (BraTS2020 -> BraTS2021)" in printed
    assert "2 test case(s) not listed in the mapping were kept" in printed
    assert json.loads(mapped.read_text())["removed_overlap"]["columns"] == ["BraTS2020", "BraTS2021"]

    bad = tmp_path / "bad.json"
    assert datalist_main([*args, "-o", str(bad), "--exclude-overlap", str(train), "--name-mapping", str(csv_path),
                          "--mapping-columns", "BraTS_2020_subject_ID", "BraTS2021"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"brats-datalist: error: {csv_path}: no column 'BraTS_2020_subject_ID'") and not bad.exists()


def test_cli_mapping_needs_a_training_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        datalist_main([str(tmp_path), "--task", TASK, "-o", str(tmp_path / "x.json"), "--name-mapping", "m.csv"])
    assert exited.value.code == 2 and "need --exclude-overlap" in capsys.readouterr().err
