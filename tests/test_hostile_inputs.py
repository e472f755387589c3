"""Hostile input to ``brats-infer`` and ``brats-preprocess`` (issue #15), through their real entry points.

Each test is one defect a tester found acting as a new user; it failed before the fix:

1. a ``case_id`` with ``../``, ``/``, an absolute path, a space or a leading dot: clear
   usage error naming the datalist and the id, nothing written outside ``-o`` (the
   bundle's label writer and case reader refuse them too);
2. two entries with one ``case_id``: a usage error naming both entries, in both tools;
3. stale outputs: a replaced input file, or another model, redoes the case (the resume
   key is the inputs' content and the model's, not their paths);
4. the temporary file of a killed writer is removed by the next run in that folder (but
   never the temporary file of a writer that is still running);
5. ``-o`` that is a file, or under a file, or not writable: exit 2 with one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from brats_pipeline.cli.infer import main as infer_main
from preprocessing.cli import main as preprocess_main

PREPROCESS_ARGS = ["--no-n4", "--no-register", "--spacing", "2", "2", "2", "--no-progress"]


# ------------------------------------------------------------------------------------ fixtures
def _cohort(root: Path, n: int = 2) -> tuple[Path, dict]:
    """``n`` labelled brats2021 phantoms (32^3) under ``root/data`` and their datalist ``root/dl.json``."""
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(root / "data", "brats2021", n, (32, 32, 32), seed=0)
    datalist = build_datalist(root / "data", "brats2021", folds=n, check="none")
    write_datalist(datalist, root / "dl.json")
    return root / "dl.json", datalist


def _write_datalist(path: Path, datalist: dict, **edits: object) -> Path:
    """``datalist`` with ``edits`` (``training`` ...) written as JSON to ``path``."""
    path.write_text(json.dumps({**datalist, **edits}))
    return path


def _checkpoint(path: Path, seed: int = 0) -> Path:
    """A Lightning-format checkpoint of a tiny unet3d, written without training."""
    import pytorch_lightning as pl
    import torch

    from brats_pipeline.module import BratsSegmentationModule

    torch.manual_seed(seed)
    module = BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 8, 16, 4]}, task="brats2021", roi_size=(32, 32, 32),
                                     sw_batch_size=2, overlap=0.25, lr_scheduler=None)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__,
                "datamodule_hyper_parameters": {"spacing": None, "orientation": "RAS", "crop_foreground": True}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("model") / "m.ckpt")


def _infer(datalist: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return infer_main(["-i", str(datalist), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu",
                       "--no-progress", "--loader-threads", "1", "--writer-threads", "1", "--read-threads", "1", *extra])


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(manifest: Path) -> dict[str, str]:
    return {r["case_id"]: r["status"] for r in json.loads(manifest.read_text())["cases"]}


# ------------------------------------------------------------------- 1. unsafe case ids
def _bad_ids(tmp_path: Path, datalist: dict) -> list[str]:
    first_input = Path(datalist["training"][0]["image"][0])
    return [
        os.path.relpath(first_input, tmp_path / "out").removesuffix(".nii.gz"),  # --overwrite replaced this MRI
        "../escaped",
        "sub/case",
        str(tmp_path / "absolute"),
        "Case 1",  # defect 12: passed brats-infer, failed brats-preprocess
        ".hidden",
    ]


def test_infer_refuses_case_ids_that_are_not_safe_file_names(tmp_path: Path, ckpt: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    dl_path, datalist = _cohort(tmp_path)
    before = _tree(tmp_path / "data")
    for bad in _bad_ids(tmp_path, datalist):
        entry = {**datalist["training"][0], "case_id": bad}
        hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=[entry, datalist["training"][1]])
        assert _infer(hostile, tmp_path / "out", ckpt, "--overwrite") == 2, bad
        err = capsys.readouterr().err
        assert str(hostile) in err and repr(bad) in err and "safe file name" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not list((tmp_path / "out").rglob("*.nii.gz")) if (tmp_path / "out").exists() else True
    assert _tree(tmp_path / "data") == before  # no input replaced by a label map
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "dl.json", "hostile.json", "out"}  # nothing escaped


def test_bundle_case_reader_and_label_writer_refuse_unsafe_ids(tmp_path: Path) -> None:
    from brats_pipeline.bundle.inference import LabelWriter, inference_cases

    _, datalist = _cohort(tmp_path, n=1)
    entry = {**datalist["training"][0], "case_id": "../../escaped"}
    hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=[entry])
    with pytest.raises(ValueError, match=r"hostile\.json.*'\.\./\.\./escaped'.*safe file name"):
        inference_cases(datalist=hostile, task="brats2021")
    with pytest.raises(ValueError, match="safe file name"):
        LabelWriter(tmp_path / "out").path_for(entry)
    stray = tmp_path / "stray"
    stray.mkdir()
    for name in ("a b.nii.gz", "ok.nii.gz"):
        shutil.copy(datalist["training"][0]["image"][0], stray / name)
    with pytest.raises(ValueError, match=r"'a b'.*safe file name"):
        inference_cases(dataset_dir=stray, task="brats2021")


def test_preprocess_refuses_case_ids_that_are_not_safe_file_names(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, datalist = _cohort(tmp_path, n=1)
    before = _tree(tmp_path / "data")
    for bad in _bad_ids(tmp_path, datalist):
        hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=[{**datalist["training"][0], "case_id": bad}])
        assert preprocess_main(["-i", str(hostile), "-o", str(tmp_path / "out"), *PREPROCESS_ARGS]) == 2, bad
        err = capsys.readouterr().err
        assert str(hostile) in err and repr(bad) in err and "safe file name" in err, err
    assert _tree(tmp_path / "data") == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.nii.gz"))


def test_a_dataset_folder_with_an_unsafe_case_folder_name_reports_that_case(tmp_path: Path, ckpt: Path) -> None:
    _cohort(tmp_path, n=2)
    (tmp_path / "data" / "BraTS2021_00001").rename(tmp_path / "data" / "BraTS2021 00001")
    out = tmp_path / "out"
    assert infer_main(["-i", str(tmp_path / "data"), "--task", "brats2021", "-o", str(out), "--checkpoint", str(ckpt),
                       "--device", "cpu", "--no-progress"]) == 1
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}
    assert rows["BraTS2021_00000"]["status"] == "ok"
    assert rows["BraTS2021 00001"]["status"] == "failed" and "safe file name" in rows["BraTS2021 00001"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["BraTS2021_00000.nii.gz", "manifest.json"]


# ---------------------------------------------------------------------- 2. duplicate ids
@pytest.mark.parametrize("tool", ["preprocess", "infer"])
def test_duplicate_case_ids_are_a_usage_error_naming_both_entries(tool: str, tmp_path: Path, ckpt: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, datalist = _cohort(tmp_path)
    first, second = datalist["training"]
    hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=[first, {**second, "case_id": first["case_id"]}])
    out = tmp_path / "out"
    if tool == "preprocess":
        code = preprocess_main(["-i", str(hostile), "-o", str(out), *PREPROCESS_ARGS])
    else:
        code = _infer(hostile, out, ckpt)
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(hostile) in err and repr(first["case_id"]) in err and "training[0]" in err and "training[1]" in err, err
    assert "Traceback" not in err
    assert not out.exists() or not list(out.rglob("*.nii.gz"))


def test_infer_duplicate_ids_derived_from_file_names_are_a_usage_error(tmp_path: Path, ckpt: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, datalist = _cohort(tmp_path, n=1)
    image = datalist["training"][0]["image"]
    hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=[{"image": image}, {"image": image}])
    assert _infer(hostile, tmp_path / "out", ckpt) == 2
    err = capsys.readouterr().err
    assert "'BraTS2021_00000'" in err and "twice" in err and "Traceback" not in err, err


# --------------------------------------------------------------------- 3. stale outputs
def _replace_keeping_mtime(victim: Path, source: Path) -> None:
    """Overwrite ``victim`` with ``source``'s bytes and give it back its own timestamps."""
    stat = victim.stat()
    victim.write_bytes(source.read_bytes())
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_infer_redoes_cases_whose_inputs_or_model_changed(tmp_path: Path, ckpt: Path) -> None:
    dl_path, datalist = _cohort(tmp_path)
    (a, b), out = (e["case_id"] for e in datalist["training"]), tmp_path / "out"
    manifest = out / "manifest.json"
    assert _infer(dl_path, out, ckpt) == 0
    assert _rows(manifest) == {a: "ok", b: "ok"}
    assert _infer(dl_path, out, ckpt) == 0
    assert _rows(manifest) == {a: "skipped", b: "skipped"}

    # another case's T2 copied over case a's (its path and timestamps unchanged): a is redone, b is not
    _replace_keeping_mtime(Path(datalist["training"][0]["image"][2]), Path(datalist["training"][1]["image"][2]))
    assert _infer(dl_path, out, ckpt) == 0
    assert _rows(manifest) == {a: "ok", b: "skipped"}

    # another model: every case is redone, and the manifest names the model that made the outputs
    other = _checkpoint(tmp_path / "other.ckpt", seed=1)
    assert _infer(dl_path, out, other) == 0
    assert _rows(manifest) == {a: "ok", b: "ok"}
    settings = json.loads(manifest.read_text())["settings"]
    assert settings["models"] == [str(other)]
    assert settings["model_sha256"] == [hashlib.sha256(other.read_bytes()).hexdigest()]

    # the same model file under another name is the same model: nothing to redo
    shutil.copy(other, tmp_path / "renamed.ckpt")
    assert _infer(dl_path, out, tmp_path / "renamed.ckpt") == 0
    assert _rows(manifest) == {a: "skipped", b: "skipped"}


def test_preprocess_redoes_a_case_whose_input_file_was_replaced(tmp_path: Path) -> None:
    dl_path, datalist = _cohort(tmp_path)
    (a, b), out = (e["case_id"] for e in datalist["training"]), tmp_path / "out"
    assert preprocess_main(["-i", str(dl_path), "-o", str(out), *PREPROCESS_ARGS]) == 0
    first = (out / a / f"{a}_t1.nii.gz").read_bytes()
    assert preprocess_main(["-i", str(dl_path), "-o", str(out), *PREPROCESS_ARGS]) == 0
    assert _rows(out / "manifest.json") == {a: "skipped", b: "skipped"}

    _replace_keeping_mtime(Path(datalist["training"][0]["image"][1]), Path(datalist["training"][1]["image"][1]))
    assert preprocess_main(["-i", str(dl_path), "-o", str(out), *PREPROCESS_ARGS]) == 0
    assert _rows(out / "manifest.json") == {a: "ok", b: "skipped"}
    assert (out / a / f"{a}_t1.nii.gz").read_bytes() != first
    assert {e["case_id"] for e in json.loads((out / "datalist.json").read_text())["training"]} == {a, b}


# ------------------------------------------------------------- 4. leftovers of a killed writer
_WRITER = """
import os, signal, sys, time
from preprocessing.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a label map")
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 would, in the middle of the write
    print("writing", flush=True)
    time.sleep(120)
"""


def _killed_writer_leftover(target: Path) -> Path:
    """Run a writer of ``target`` that is killed mid-write; return the temporary file it left."""
    target.parent.mkdir(parents=True, exist_ok=True)
    before = set(target.parent.iterdir())
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITER), str(target), "kill"], timeout=120)
    assert done.returncode == -signal.SIGKILL
    (leftover,) = set(target.parent.iterdir()) - before
    assert leftover.name.startswith(f".{target.name}.") and not target.exists()
    return leftover


def test_infer_removes_the_temporary_file_of_a_killed_run(tmp_path: Path, ckpt: Path) -> None:
    dl_path, datalist = _cohort(tmp_path)
    out = tmp_path / "out"
    leftover = _killed_writer_leftover(out / f"{datalist['training'][0]['case_id']}.nii.gz")
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(out / "other.nii.gz"), "live"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "writing"
        (in_flight,) = [p for p in out.iterdir() if p.name.startswith(".other.nii.gz.")]
        assert _infer(dl_path, out, ckpt) == 0
        assert not leftover.exists()
        assert in_flight.exists()  # another job still writing into this folder (a shard) is left alone
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in out.iterdir() if p != in_flight) == sorted(
        [f"{e['case_id']}.nii.gz" for e in datalist["training"]] + ["manifest.json"])


def test_preprocess_removes_the_temporary_file_of_a_killed_run(tmp_path: Path) -> None:
    dl_path, datalist = _cohort(tmp_path, n=1)
    case_id, out = datalist["training"][0]["case_id"], tmp_path / "out"
    leftovers = [_killed_writer_leftover(out / case_id / f"{case_id}_t1.nii.gz"), _killed_writer_leftover(out / "manifest.csv")]
    assert preprocess_main(["-i", str(dl_path), "-o", str(out), *PREPROCESS_ARGS]) == 0
    assert not any(p.exists() for p in leftovers)
    assert not [p for p in out.rglob(".*")]


def test_old_style_temporary_files_are_removed_once_a_day_old(tmp_path: Path) -> None:
    from preprocessing.outputs import remove_stale_temporaries

    old, fresh = tmp_path / ".a.nii.gz.k2j4_x9q.tmp.nii.gz", tmp_path / ".b.nii.gz.abcdefgh.tmp.nii.gz"
    mine = tmp_path / ".notes.txt"  # not a temporary-file name: never touched
    for path in (old, fresh, mine):
        path.write_bytes(b"x")
    os.utime(old, (0, 0))
    os.utime(mine, (0, 0))
    assert remove_stale_temporaries(tmp_path) == [old]
    assert fresh.exists() and mine.exists()


# ----------------------------------------------------------- 5. output folder usage errors
@pytest.mark.parametrize("tool", ["infer", "preprocess"])
@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_an_output_folder_that_cannot_be_written_is_a_usage_error(tool: str, where: str, tmp_path: Path, ckpt: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dl_path, _ = _cohort(tmp_path, n=1)
    (tmp_path / "afile").write_text("not a folder")
    if where == "read-only" and os.geteuid() != 0:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
    elif where == "read-only":  # root writes into any folder of a normal file system, not into sysfs
        out = Path("/sys")
        if not (sys.platform.startswith("linux") and out.is_dir()):
            pytest.skip("no folder that root cannot write into")
    else:
        out = tmp_path / "afile" if where == "a file" else tmp_path / "afile" / "preds"
    if tool == "infer":
        code = _infer(dl_path, out, ckpt)
    else:
        code = preprocess_main(["-i", str(dl_path), "-o", str(out), *PREPROCESS_ARGS])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2 and len(errors) == 1 and str(out) in errors[0] and "Traceback" not in err, err
