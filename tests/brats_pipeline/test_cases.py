"""The one case reader (:mod:`brats_pipeline.data.cases`) on real files: datalists, folders, ids, image files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_pipeline.data.cases import case_id_of, image_files, read_cases
from brats_pipeline.data.datalist import build_datalist, write_datalist
from brats_pipeline.data.synthetic import write_cohort

TASK = "brats2021"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three labelled and one unlabelled brats2021 phantoms (24³) under ``data/``, and their datalist ``dl.json``."""
    root = tmp_path_factory.mktemp("cases")
    write_cohort(root / "data", TASK, n_cases=3, n_unlabelled=1, shape=(24, 24, 24), seed=0)
    datalist = write_datalist(build_datalist(root / "data", TASK, folds=3, check="none"), root / "dl.json")
    return root / "data", datalist


def _stacked(path: Path) -> Path:
    """A tiny 4D NIfTI (four modalities on the last axis, MSD style) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 4), dtype=np.float32), np.eye(4)), str(path))
    return path


def _datalist(path: Path, training: list[dict], **extra: object) -> Path:
    path.write_text(json.dumps({"task": TASK, "training": training, **extra}))
    return path


def _summary(cases: list[dict]) -> dict[str, tuple[list[str], str | None]]:
    return {c["case_id"]: (image_files(c), c.get("label")) for c in cases}


# ------------------------------------------------------------------ datalist and folder agree
def test_a_datalist_and_its_folder_give_the_same_cases(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    data, datalist = cohort
    from_folder = read_cases(data, TASK)
    from_datalist = read_cases(datalist, TASK)
    assert _summary(from_folder) == _summary(from_datalist)
    assert [c["case_id"] for c in from_folder] == [f"BraTS2021_{i:05d}" for i in range(4)]
    assert len(from_folder[0]["image"]) == 4 and "label" not in from_folder[3] and not any("problem" in c for c in from_folder)
    assert _summary(read_cases(None, TASK, datalist=datalist)) == _summary(from_datalist)  # the bundle's datalist= form
    assert len(read_cases(data, TASK, labelled=True)) == len(read_cases(datalist, TASK, labelled=True)) == 3
    assert len(read_cases(datalist, TASK, split="testing")) == 1
    assert len(read_cases(datalist, TASK, fold=0)) == 1

    inside = tmp_path / "data"  # a folder holding datalist.json: the datalist wins (its entries, its folds)
    shutil.copytree(data, inside)
    (inside / "datalist.json").write_text(json.dumps({"task": TASK, "training": json.loads(datalist.read_text())["training"]}))
    assert len(read_cases(inside, TASK)) == 3


def test_entries_without_an_id_get_the_id_their_files_give(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = cohort
    case = read_cases(data, TASK)[0]
    stacked = _stacked(tmp_path / "stacked" / "one.nii.gz")
    dl = _datalist(tmp_path / "dl.json", [{"image": case["image"]}, {"image": str(stacked)}])
    assert [c["case_id"] for c in read_cases(dl, TASK)] == [case["case_id"], "one"]
    # pinned before a modality subset keeps only one file (whose name alone would give another id)
    assert [c["case_id"] for c in read_cases(dl, TASK, modalities=["flair"])] == [case["case_id"], "one"]
    assert read_cases(dl, TASK, modalities=["flair"])[0]["image"] == [case["image"][3]]
    assert read_cases(stacked.parent, TASK) == [{"case_id": "one", "image": str(stacked)}]


# ------------------------------------------------------------------------------- unsafe ids
@pytest.mark.parametrize("bad", ["../x", "/abs", "a b", ".hidden"])
def test_an_unsafe_case_id_is_refused_naming_the_datalist(bad: str, cohort: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = cohort
    entry = {**read_cases(data, TASK)[0], "case_id": bad}
    dl = _datalist(tmp_path / "hostile.json", [entry])
    with pytest.raises(ValueError, match=re.escape(f"{dl}: training[0]: case id {bad!r} is not a safe file name")):
        read_cases(dl, TASK)
    with pytest.raises(ValueError, match=re.escape(f"{dl}: training[0]: case id {bad!r} is not a safe file name")):
        read_cases(None, TASK, datalist=dl)


def test_an_unsafe_id_made_from_a_file_name_is_refused_too(tmp_path: Path) -> None:
    stacked = _stacked(tmp_path / "stray" / "a b.nii.gz")
    dl = _datalist(tmp_path / "dl.json", [{"image": str(stacked)}])
    with pytest.raises(ValueError, match=re.escape(f"{dl}: training[0] (id from {stacked}): case id 'a b' is not a safe")):
        read_cases(dl, TASK)
    with pytest.raises(ValueError, match=re.escape(f"{stacked.parent}: the case of {stacked}: case id 'a b' is not a safe")):
        read_cases(stacked.parent, TASK)


def test_an_unsafe_case_folder_name_is_that_cases_problem(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(cohort[0], data)
    (data / "BraTS2021_00001").rename(data / "Case 1")
    cases = {c["case_id"]: c for c in read_cases(data, TASK)}
    assert cases["Case 1"]["problem"] == f"{data / 'Case 1'}: case id 'Case 1' is not a safe file name " \
                                         "(letters, digits and '._+-', starting with a letter or digit, at most 128 characters)"
    assert "problem" not in cases["BraTS2021_00000"]  # the others go on


# ---------------------------------------------------------------------------- duplicate ids
def test_a_duplicate_case_id_is_refused_naming_both_entries(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = cohort
    first, second = read_cases(data, TASK)[:2]
    dl = _datalist(tmp_path / "twice.json", [first, {**second, "case_id": first["case_id"]}])
    with pytest.raises(ValueError, match=re.escape(f"{dl}: case id {first['case_id']!r} appears twice "
                                                   "(training[0] and training[1])")):
        read_cases(dl, TASK)
    given_and_made = _datalist(tmp_path / "made.json", [first], testing=[{"image": first["image"]}])  # id from its folder
    with pytest.raises(ValueError, match=re.escape(f"appears twice (training[0] and testing[0] (id from {first['image'][0]}))")):
        read_cases(given_and_made, TASK)
    folder = tmp_path / "folder"  # a stacked file beside the case folder of its name
    shutil.copytree(data, folder)
    stacked = _stacked(folder / f"{first['case_id']}.nii.gz")
    with pytest.raises(ValueError, match=re.escape(f"{folder}: case id {first['case_id']!r} appears twice (the case of {stacked} "
                                                   f"and the case of {folder / first['case_id']}")):
        read_cases(folder, TASK)


# ------------------------------------------------------------------------ other refusals
def test_bad_sources_and_entries_are_refused_by_name(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    data, datalist = cohort
    with pytest.raises(FileNotFoundError, match="input folder '/nonexistent' not found"):
        read_cases("/nonexistent", TASK)
    with pytest.raises(FileNotFoundError, match="missing.json: datalist not found"):
        read_cases(tmp_path / "missing.json", TASK)
    with pytest.raises(ValueError, match="datalist of task 'brats2021', but the model is for 'lgg'"):
        read_cases(datalist, "lgg")
    with pytest.raises(ValueError, match="but the bundle is for 'lgg'"):
        read_cases(datalist, "lgg", consumer="bundle")
    with pytest.raises(ValueError, match="fold=1 needs a datalist with folds"):
        read_cases(data, TASK, fold=1)
    with pytest.raises(ValueError, match="split 'testing' needs a datalist"):
        read_cases(data, TASK, split="testing")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        read_cases(datalist, TASK, split="train")
    with pytest.raises(ValueError, match="no labelled cases found"):
        read_cases(_datalist(tmp_path / "unlabelled.json", [{"case_id": "a", "image": "a.nii.gz"}]), TASK, labelled=True)
    for image in ([], {"t1": "a.nii.gz"}, [None]):  # load_datalist names the entry
        bad = _datalist(tmp_path / "bad.json", [{"case_id": "a", "image": image}])
        with pytest.raises(ValueError, match=re.escape(f"{bad}: training[0]: 'image' must be a file or a non-empty list")):
            read_cases(bad, TASK)


# ------------------------------------------------------------------- image_files, case_id_of
def test_image_files_and_case_id_of(tmp_path: Path) -> None:
    modalities = [str(tmp_path / "c1" / f"c1_{m}.nii.gz") for m in ("t1ce", "t1", "t2", "flair")]
    assert image_files({"image": modalities}) == modalities  # one file per modality, in channel order
    assert image_files({"image": tuple(Path(f) for f in modalities)}) == modalities
    assert image_files({"image": "/d/one.nii.gz"}) == ["/d/one.nii.gz"]  # one 4D file
    assert image_files({"image": Path("/d/one.nii")}) == ["/d/one.nii"]
    for image in (None, [], {"t1": "a.nii.gz"}, [None], 3):  # a modality -> file mapping is no datalist form
        with pytest.raises(ValueError, match=r"case x: 'image' must be a file or a non-empty list of files"):
            image_files({"case_id": "x", "image": image})
    with pytest.raises(ValueError, match=r"case \?: 'image'"):
        image_files({})

    assert case_id_of({"case_id": "given", "image": modalities}) == "given"
    assert case_id_of({"image": modalities}) == "c1"  # several files: their folder
    assert case_id_of({"image": "/d/one.nii.gz"}) == case_id_of({"image": ["/d/one.nii"]}) == "one"  # one file: its name
    assert case_id_of({"case_id": "", "image": "/d/two.nii.gz"}) == "two"
    with pytest.raises(ValueError, match="'image' must be"):
        case_id_of({"image": []})


def test_the_old_names_are_the_one_reader() -> None:
    import brats_pipeline.bundle as bundle
    import brats_pipeline.bundle.cases as bundle_cases
    import brats_pipeline.inference.loading as loading

    for module in (bundle, bundle_cases, loading):
        assert module.image_files is image_files and module.case_id_of is case_id_of
    assert bundle.inference_cases is bundle_cases.inference_cases
