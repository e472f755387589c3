"""brats-preprocess (``brats_pipeline.cli.preprocess``): batch over a cohort, manifest, resuming, shards, workers,
the single-case form, and the task's scheme handed to the task-free ``preprocessing`` package."""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_pipeline.cli.preprocess import config_for_task, main
from preprocessing.batch import select_shard
from preprocessing.case import Case, output_paths
from preprocessing.sharding import parse_shard

LABELLED = ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
ALL = [*LABELLED, "BraTS2021_00003"]  # the last one has no segmentation


def _manifest(out: Path, name: str = "manifest") -> dict[str, dict]:
    rows = json.loads((out / f"{name}.json").read_text())["cases"]
    with open(out / f"{name}.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in csv_rows] == [r["case_id"] for r in rows]
    assert [r["status"] for r in csv_rows] == [r["status"] for r in rows]
    return {r["case_id"]: r for r in rows}


# ------------------------------------------------------------------------------------ shards
def test_shards_are_disjoint_covering_and_stable() -> None:
    ids = [f"case_{i:04d}" for i in range(500)]
    cases = [Case(i, {"t1": "x"}) for i in ids]
    for count in (1, 2, 3, 8):
        parts = [[c.case_id for c in select_shard(cases, (i, count))] for i in range(count)]
        flat = [c for part in parts for c in part]
        assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))  # covering and disjoint
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    shuffled = cases[:]
    random.Random(0).shuffle(shuffled)
    for i in range(4):  # independent of the input order (preprocessing.sharding: sorted by case id)
        assert [c.case_id for c in select_shard(cases, (i, 4))] == [c.case_id for c in select_shard(shuffled, (i, 4))]


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "1/0"])
def test_bad_shard_strings(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


# ------------------------------------------------------------------------------ task -> scheme
def test_a_task_becomes_plain_settings() -> None:
    config = config_for_task("brats2023", spacing=None)
    assert config.modalities == ("t1c", "t1n", "t2w", "t2f") and config.label_values == (0, 1, 2, 3)
    assert config.spacing is None and "task" not in config.to_dict()  # the package never sees the task's name
    case = Case("BraTS-GLI-00000-000", {m: "x" for m in ("t2f", "t1c", "t2w", "t1n")}, label="y")
    assert [p.name for p in output_paths(case, "out", config).values()] == [
        *(f"BraTS-GLI-00000-000-{m}.nii.gz" for m in config.modalities), "BraTS-GLI-00000-000-seg.nii.gz"
    ]
    assert config_for_task("lgg").label_suffix == "seg" and config_for_task(None).modalities is None
    with pytest.raises(ValueError, match="unknown task 'brats2019'"):
        config_for_task("brats2019")


# ------------------------------------------------------------------------------------- batch
def test_batch_manifest_datalist_and_resume(cohort: Path, tmp_path: Path, cheap_cli_args, tree_hashes) -> None:
    out = tmp_path / "out"
    before = tree_hashes(cohort)
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 0
    assert tree_hashes(cohort) == before
    rows = _manifest(out)
    assert {k: r["status"] for k, r in rows.items()} == {c: "ok" for c in ALL}
    assert all(r["duration_s"] > 0 and r["error"] == "" for r in rows.values())

    # the output datalist: same format, outputs, folds kept, readable by MONAI and as a dataset folder
    from monai.data import load_decathlon_datalist

    from brats_pipeline.data.datalist import build_datalist, load_datalist

    datalist = load_datalist(out / "datalist.json")
    assert datalist["task"] == "brats2021" and datalist["modality"] == {"0": "t1c", "1": "t1", "2": "t2", "3": "flair"}
    assert sorted(e["case_id"] for e in datalist["training"]) == LABELLED
    assert [e["case_id"] for e in datalist["testing"]] == ["BraTS2021_00003"]
    entry = datalist["training"][0]
    assert entry["image"][0].endswith(f"{entry['case_id']}/{entry['case_id']}_t1c.nii.gz")
    assert entry["label"].endswith("_seg.nii.gz") and isinstance(entry["fold"], int)
    source = {e["case_id"]: e["fold"] for e in build_datalist(cohort, "brats2021", folds=3, check="none")["training"]}
    assert {e["case_id"]: e["fold"] for e in datalist["training"]} == source
    assert len(load_decathlon_datalist(str(out / "datalist.json"), data_list_key="training")) == 3
    rediscovered = build_datalist(out, "brats2021", folds=3)  # full checks: every output is one grid, labels valid
    assert rediscovered["numTraining"] == 3 and rediscovered["numTest"] == 1 and not rediscovered["skipped"]

    # second run: everything already finished
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 0
    assert {r["status"] for r in _manifest(out).values()} == {"skipped"}
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}

    # a killed run: case 1 lost its sidecar (killed before the end), case 2 an output file
    (out / "BraTS2021_00001" / "BraTS2021_00001_preprocess.json").unlink()
    (out / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz").unlink()
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 0
    statuses = {k: r["status"] for k, r in _manifest(out).items()}
    assert statuses == {"BraTS2021_00000": "skipped", "BraTS2021_00001": "ok", "BraTS2021_00002": "ok", "BraTS2021_00003": "skipped"}

    # other settings: finished cases are redone
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args, "--crop-margin", "2"]) == 0
    assert {r["status"] for r in _manifest(out).values()} == {"ok"}
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"


def test_bad_case_does_not_stop_the_batch(cohort: Path, tmp_path: Path, cheap_cli_args, tree_hashes) -> None:
    bad = cohort / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    bad.write_bytes(gzip.compress(os.urandom(5000)))
    before = tree_hashes(cohort)
    out = tmp_path / "out"
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 1
    assert tree_hashes(cohort) == before
    rows = _manifest(out)
    assert rows["BraTS2021_00001"]["status"] == "failed"
    assert f"{bad}: unreadable, truncated or corrupt" in rows["BraTS2021_00001"]["error"]
    assert {rows[c]["status"] for c in ALL if c != "BraTS2021_00001"} == {"ok"}
    assert not (out / "BraTS2021_00001").exists()  # no partial output
    datalist = json.loads((out / "datalist.json").read_text())
    assert [s["case_id"] for s in datalist["skipped"]] == ["BraTS2021_00001"]
    assert "corrupt" in datalist["skipped"][0]["reason"]

    # fix the file: a re-run does only that case
    from brats_pipeline.data.synthetic import make_phantom

    phantom = make_phantom("brats2021", (48, 48, 40), seed=[7, 1], spacing=(3.0, 3.0, 3.0))
    nib.save(nib.Nifti1Image(phantom.images["t2"].astype(np.int16), phantom.affine), str(bad))
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 0
    rows = _manifest(out)
    assert rows["BraTS2021_00001"]["status"] == "ok"
    assert {rows[c]["status"] for c in ALL if c != "BraTS2021_00001"} == {"skipped"}


def test_missing_modality_is_a_failed_case(cohort: Path, tmp_path: Path, cheap_cli_args) -> None:
    (cohort / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz").unlink()
    out = tmp_path / "out"
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 1
    rows = _manifest(out)
    assert rows["BraTS2021_00002"]["status"] == "failed"
    assert "missing modality flair" in rows["BraTS2021_00002"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == 3


def test_datalist_input_with_modalities_of_another_task(cohort: Path, tmp_path: Path, cheap_cli_args, capsys) -> None:
    from brats_pipeline.data.datalist import build_datalist, write_datalist

    datalist = build_datalist(cohort, "brats2021", folds=2, check="none")
    datalist["modality"] = {"0": "t1c", "1": "t1", "2": "t2w", "3": "flair"}
    write_datalist(datalist, tmp_path / "dl.json")
    code = main(["-i", str(tmp_path / "dl.json"), "-o", str(tmp_path / "out"), *cheap_cli_args])
    assert code == 2
    assert "do not match task 'brats2021' modalities" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_datalist_input_with_a_short_entry(cohort: Path, tmp_path: Path, cheap_cli_args) -> None:
    from brats_pipeline.data.datalist import build_datalist, write_datalist

    datalist = build_datalist(cohort, "brats2021", folds=2, check="none")
    datalist["training"][0]["image"] = datalist["training"][0]["image"][:3]
    write_datalist(datalist, tmp_path / "dl.json")
    out = tmp_path / "out"
    assert main(["-i", str(tmp_path / "dl.json"), "-o", str(out), "--task", "brats2021", *cheap_cli_args]) == 1
    rows = _manifest(out)
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "3 image files for 4 modalities" in failed[0]["error"]


def test_shards_of_a_cohort_add_up(cohort: Path, tmp_path: Path, cheap_cli_args) -> None:
    out = tmp_path / "out"
    done: list[str] = []
    for index in range(2):
        assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", "--shard", f"{index}/2", *cheap_cli_args]) == 0
        rows = _manifest(out, f"manifest.shard-{index}-of-2")
        assert set(rows) == set(sorted(ALL)[index::2])
        done += [c for c, r in rows.items() if r["status"] == "ok"]
    assert sorted(done) == ALL  # disjoint and covering
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["numTraining"] + datalist["numTest"] == 4 and not datalist["skipped"]


def test_two_workers(cohort: Path, tmp_path: Path, cheap_cli_args) -> None:
    out = tmp_path / "out"
    assert main(["-i", str(cohort), "-o", str(out), "--task", "brats2021", "--workers", "2", "--threads", "1", *cheap_cli_args]) == 0
    assert {r["status"] for r in _manifest(out).values()} == {"ok"}
    assert json.loads((out / "manifest.json").read_text())["workers"] == 2


# -------------------------------------------------------------------------------- single case
def _single_args(cohort: Path, names: dict[str, str]) -> list[str]:
    folder = cohort / "BraTS2021_00000"
    return ["--case-id", "study1", "--case", *(f"{n}={folder / f'BraTS2021_00000_{s}.nii.gz'}" for n, s in names.items())]


def test_single_case_form(one_case: Path, tmp_path: Path, cheap_cli_args) -> None:
    out = tmp_path / "out"
    names = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
    label = one_case / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    args = [*_single_args(one_case, names), "--label", str(label), "-o", str(out), "--task", "brats2021", *cheap_cli_args]
    assert main(args) == 0
    files = sorted(p.name for p in (out / "study1").iterdir())
    assert files == sorted([f"study1_{m}.nii.gz" for m in names] + ["study1_seg.nii.gz", "study1_preprocess.json"])
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["training"][0]["image"][0].endswith("study1_t1c.nii.gz")  # the task's channel order

    # a second study into the same folder adds up in the datalist
    args = [*_single_args(one_case, names), "-o", str(out), "--task", "brats2021", *cheap_cli_args]
    args[1] = "study2"
    assert main(args) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert [e["case_id"] for e in datalist["training"]] == ["study1"]
    assert [e["case_id"] for e in datalist["testing"]] == ["study2"]


def test_single_case_any_names_without_task(one_case: Path, tmp_path: Path, cheap_cli_args) -> None:
    names = {"pd": "t1", "gad": "t1ce"}
    out = tmp_path / "out"
    assert main([*_single_args(one_case, names), "--reference", "gad", "-o", str(out), *cheap_cli_args]) == 0
    assert (out / "study1" / "study1_pd.nii.gz").is_file()


@pytest.mark.parametrize(
    ("names", "extra", "message"),
    [
        ({"t1": "t1", "t1c": "t1ce", "t2w": "t2", "flair": "flair"}, ["--task", "brats2021"], "unknown modalities ['t2w']"),
        ({"t1": "t1", "t1c": "t1ce", "t2": "t2"}, ["--task", "brats2021"], "missing modalities ['flair']"),
        ({"t1": "t1", "t2": "t2"}, [], "reference modality 't1c' is not among"),
    ],
    ids=["wrong-name", "missing", "no-reference"],
)
def test_single_case_names_are_checked(one_case: Path, tmp_path: Path, cheap_cli_args, capsys, names, extra, message) -> None:
    code = main([*_single_args(one_case, names), "-o", str(tmp_path / "out"), *extra, *cheap_cli_args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["-o", "OUT"],  # no input
        ["-i", "X", "--case-id", "a", "--case", "t1=x", "-o", "OUT"],  # both forms
        ["--case-id", "a", "--case", "t1", "-o", "OUT"],  # not NAME=PATH
        ["-i", "does/not/exist", "-o", "OUT"],
        ["-i", ".", "-o", "OUT", "--shard", "3/2"],
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], capsys) -> None:
    args = [str(tmp_path / a) if a in ("OUT", "X", "does/not/exist") else a for a in args]
    assert main(args) == 2
    assert "brats-preprocess: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_real_raw_study_end_to_end(raw_study_dir: Path, tmp_path: Path) -> None:
    """The issue's 'done when': the raw study becomes aligned, 1 mm, bias-corrected, normalised volumes."""
    out = tmp_path / "out"
    files = {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "fla"}
    case = [f"{m}={raw_study_dir / f'TCGA-FG-6692_{s}.nii.gz'}" for m, s in files.items()]
    assert main(["--case-id", "TCGA-FG-6692", "--case", *case, "--task", "brats2021", "-o", str(out), "--no-progress"]) == 0
    shapes = set()
    for modality in files:
        img = nib.load(str(out / "TCGA-FG-6692" / f"TCGA-FG-6692_{modality}.nii.gz"))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0), atol=1e-4)
        shapes.add(img.shape)
    assert len(shapes) == 1
    sidecar = json.loads((out / "TCGA-FG-6692" / "TCGA-FG-6692_preprocess.json").read_text())
    register = next(s for s in sidecar["steps"] if s["step"] == "register")
    assert all(m["metric_final"] < m["metric_initial"] for m in register["modalities"].values())
    from brats_pipeline.data.datalist import load_datalist

    assert load_datalist(out / "datalist.json")["testing"][0]["case_id"] == "TCGA-FG-6692"
