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
5. ``-o`` that is a file, or under a file, or not writable: exit 2 with one line naming it;
6. ``kill -9`` of ``brats-preprocess --workers 2``: its workers die with it (they ran on, writing);
7. ``brats-infer --task`` other than the checkpoint's or bundle's task (or a datalist of another
   task): exit 2 with one line naming the model and both tasks (it wrote the other task's labels);
8. an empty (constant) modality, or NaN in one: that case fails naming the file, in ``brats-infer``
   and in the bundle's inference (it was predicted; the bundle blamed the first modality's file);
11. a misspelt bundle override: ``brats-bundle run`` (``monai.bundle run`` with the overrides
   checked) exits 2 naming the closest key; a truncated ``model.pt`` is named by its full path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from brats_pipeline.cli.infer import main as infer_main
from brats_pipeline.cli.preprocess import main as preprocess_main

PREPROCESS_ARGS = ["--no-n4", "--no-register", "--spacing", "2", "2", "2", "--no-progress"]


# ------------------------------------------------------------------------------------ fixtures


def _write_datalist(path: Path, datalist: dict, **edits: object) -> Path:
    """``datalist`` with ``edits`` (``training`` ...) written as JSON to ``path``."""
    path.write_text(json.dumps({**datalist, **edits}))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "m.ckpt")


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
                                                             capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    dl_path, datalist = brats_cohort(tmp_path)
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


def test_bundle_case_reader_and_label_writer_refuse_unsafe_ids(tmp_path: Path, brats_cohort) -> None:
    from brats_pipeline.bundle.cases import inference_cases
    from brats_pipeline.bundle.runner import LabelWriter

    _, datalist = brats_cohort(tmp_path, n=1)
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
                                                                 capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    _, datalist = brats_cohort(tmp_path, n=1)
    before = _tree(tmp_path / "data")
    for bad in _bad_ids(tmp_path, datalist):
        hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=[{**datalist["training"][0], "case_id": bad}])
        assert preprocess_main(["-i", str(hostile), "-o", str(tmp_path / "out"), *PREPROCESS_ARGS]) == 2, bad
        err = capsys.readouterr().err
        assert str(hostile) in err and repr(bad) in err and "safe file name" in err, err
    assert _tree(tmp_path / "data") == before
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.nii.gz"))


def test_a_dataset_folder_with_an_unsafe_case_folder_name_reports_that_case(tmp_path: Path, ckpt: Path, brats_cohort) -> None:
    brats_cohort(tmp_path, n=2)
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
                                                                  capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    _, datalist = brats_cohort(tmp_path)
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
                                                                       capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    _, datalist = brats_cohort(tmp_path, n=1)
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


def test_infer_redoes_cases_whose_inputs_or_model_changed(tmp_path: Path, ckpt: Path, brats_cohort,
                                                           make_tiny_checkpoint) -> None:
    dl_path, datalist = brats_cohort(tmp_path)
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
    other = make_tiny_checkpoint(tmp_path / "other.ckpt", seed=1)
    assert _infer(dl_path, out, other) == 0
    assert _rows(manifest) == {a: "ok", b: "ok"}
    settings = json.loads(manifest.read_text())["settings"]
    assert settings["models"] == [str(other)]
    assert settings["model_sha256"] == [hashlib.sha256(other.read_bytes()).hexdigest()]

    # the same model file under another name is the same model: nothing to redo
    shutil.copy(other, tmp_path / "renamed.ckpt")
    assert _infer(dl_path, out, tmp_path / "renamed.ckpt") == 0
    assert _rows(manifest) == {a: "skipped", b: "skipped"}


def test_preprocess_redoes_a_case_whose_input_file_was_replaced(tmp_path: Path, brats_cohort) -> None:
    dl_path, datalist = brats_cohort(tmp_path)
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


def test_infer_removes_the_temporary_file_of_a_killed_run(tmp_path: Path, ckpt: Path, brats_cohort) -> None:
    dl_path, datalist = brats_cohort(tmp_path)
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


def test_preprocess_removes_the_temporary_file_of_a_killed_run(tmp_path: Path, brats_cohort) -> None:
    dl_path, datalist = brats_cohort(tmp_path, n=1)
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
                                                                  capsys: pytest.CaptureFixture[str], brats_cohort,
                                                                  unusable_output) -> None:
    dl_path, _ = brats_cohort(tmp_path, n=1)
    out = unusable_output(tmp_path, where, "preds", "/sys")
    if tool == "infer":
        code = _infer(dl_path, out, ckpt)
    else:
        code = preprocess_main(["-i", str(dl_path), "-o", str(out), *PREPROCESS_ARGS])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2 and len(errors) == 1 and str(out) in errors[0] and "Traceback" not in err, err


# ------------------------------------------------------------ 7. a --task other than the model's
REPO = Path(__file__).resolve().parents[1]
TINY_UNET3D = {"features": [4, 4, 8, 16, 32, 4]}




@pytest.mark.parametrize("model", ["checkpoint", "bundle"])
def test_infer_refuses_a_task_other_than_the_models(model: str, tmp_path: Path, ckpt: Path, tiny_bundle: Path,
                                                    capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    dl_path, _ = brats_cohort(tmp_path, n=1)
    out = tmp_path / "out"
    source = ["--checkpoint", str(ckpt)] if model == "checkpoint" else ["--bundle", str(tiny_bundle)]
    common = ["-i", str(dl_path), "-o", str(out), *source, "--device", "cpu", "--no-progress"]
    assert infer_main([*common, "--task", "brats2023"]) == 2  # was: exit 0 and 2023 label values written
    err = capsys.readouterr().err
    named = str(ckpt) if model == "checkpoint" else str(tiny_bundle)
    assert named in err and "'brats2021'" in err and "'brats2023'" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not list(out.rglob("*.nii.gz"))
    assert infer_main([*common, "--task", "brats2020"]) == 0  # another name of the model's own task


def test_infer_refuses_a_datalist_of_another_task(tmp_path: Path, ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "data", "brats2023", 1, (32, 32, 32), seed=0)
    write_datalist(build_datalist(tmp_path / "data", "brats2023", folds=1, check="none"), tmp_path / "dl.json")
    assert _infer(tmp_path / "dl.json", tmp_path / "out", ckpt) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "dl.json") in err and "'brats2023'" in err and "'brats2021'" in err, err


# ---------------------------------------------------------------- 8. an empty (constant) modality
def _blank(path: Path, value: float = 0.0) -> None:
    """Overwrite a modality file with a constant volume on the same grid (an empty scan)."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.full(image.shape, value, dtype=np.float32), image.affine), str(path))


def _poison(path: Path) -> None:
    """Put one NaN voxel into a modality file."""
    import nibabel as nib
    import numpy as np

    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def test_infer_fails_a_case_with_an_empty_modality_naming_the_file(tmp_path: Path, ckpt: Path, brats_cohort) -> None:
    from brats_pipeline.bundle import stack_modalities

    dl_path, datalist = brats_cohort(tmp_path, n=3)
    first, second, third = datalist["training"]
    flair = Path(first["image"][3])
    _blank(flair)
    stacked = stack_modalities(third["image"], tmp_path / "stacked.nii.gz")  # MSD style: one 4D file
    _blank(Path(third["image"][1]), 7.0)
    stacked_t1 = stack_modalities(third["image"], tmp_path / "stacked_t1.nii.gz")
    entries = [first, second, {"case_id": "stacked", "image": str(stacked)}, {"case_id": "stacked_t1", "image": str(stacked_t1)}]
    hostile = _write_datalist(tmp_path / "hostile.json", datalist, training=entries)
    out = tmp_path / "out"
    assert _infer(hostile, out, ckpt) == 1  # was: 0, every case "predicted"
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}
    assert rows[first["case_id"]]["status"] == "failed"
    assert str(flair) in rows[first["case_id"]]["error"] and "constant" in rows[first["case_id"]]["error"]
    assert rows[second["case_id"]]["status"] == rows["stacked"]["status"] == "ok"  # the batch went on
    assert rows["stacked_t1"]["status"] == "failed"
    assert str(stacked_t1) in rows["stacked_t1"]["error"] and "channel 1 (t1)" in rows["stacked_t1"]["error"]
    assert not (out / f"{first['case_id']}.nii.gz").exists()


def test_bundle_fails_a_case_with_an_empty_modality_naming_the_file(tmp_path: Path, tiny_bundle: Path, brats_cohort) -> None:
    from monai.bundle import run

    from brats_pipeline.bundle import root_cause

    _, datalist = brats_cohort(tmp_path, n=3)
    empty, nan, good = datalist["training"]
    flair, t1 = Path(empty["image"][3]), Path(nan["image"][1])
    _blank(flair)
    _poison(t1)  # NaN in T1 (the second file): blamed on T1c, the first, before
    out = tmp_path / "out"
    with pytest.raises(RuntimeError) as failed:  # monai.bundle run exits 1 (was: 0)
        run(config_file=str(tiny_bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(tiny_bundle),
            dataset_dir=str(tmp_path / "data"), output_dir=str(out), device="cpu")
    assert "2 of 3 cases failed" in str(root_cause(failed.value))
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}
    assert rows[empty["case_id"]]["status"] == "failed" and rows[good["case_id"]]["status"] == "ok"
    assert f"{flair}: constant image" in rows[empty["case_id"]]["error"]
    assert f"{t1}: 1 voxels are NaN or Inf" in rows[nan["case_id"]]["error"]


# -------------------------------------------------- 6. workers of a killed brats-preprocess
def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` (from /proc) -> their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):  # gone meanwhile
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers in /proc (Linux)")
def test_kill_9_of_preprocess_takes_its_workers_with_it(tmp_path: Path, brats_cohort) -> None:
    import time

    dl_path, _ = brats_cohort(tmp_path, n=4)
    out = tmp_path / "out"
    script = "import sys; from brats_pipeline.cli.preprocess import main; sys.exit(main(sys.argv[1:]))"
    slow_n4 = ["--no-register", "--spacing", "1", "1", "1", "--n4-shrink", "1", "--n4-iterations", "50", "50", "50"]
    parent = subprocess.Popen([sys.executable, "-c", script, "-i", str(dl_path), "-o", str(out), "--workers", "2",
                               "--threads", "1", *slow_n4, "--no-progress"],  # about 10 s per case
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and parent.poll() is None and time.monotonic() < deadline:
            workers = {pid: cmd for pid, cmd in _children(parent.pid).items() if "spawn_main" in cmd}
            time.sleep(0.02)
        assert len(workers) == 2, f"brats-preprocess --workers 2 started no 2 workers (exit {parent.poll()})"
        time.sleep(3.0)  # the workers are inside N4 now (an ITK filter, which holds the GIL)
        assert parent.poll() is None and all(map(_alive, workers))
        parent.send_signal(signal.SIGKILL)  # kill -9
        parent.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their killed parent"  # was: running on
        written = _tree(out)
        time.sleep(1.0)
        assert _tree(out) == written  # and nothing writes into the output any more
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # before the fix: do not leave them running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_die_with_parent_arms_the_parent_death_signal_or_a_watcher() -> None:
    from preprocessing.workers import die_with_parent

    code = ("import os, sys; from preprocessing.workers import die_with_parent; "
            "print(die_with_parent(os.getppid()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == ("prctl" if sys.platform.startswith("linux") else "poll")
    with pytest.raises(ValueError, match="poll_s"):
        die_with_parent(os.getppid(), poll_s=0)


# ------------------------------------------- 11. misspelt bundle overrides, a corrupt model.pt
def test_bundle_run_refuses_an_override_that_names_no_key(tmp_path: Path, tiny_bundle: Path,
                                                         capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    from brats_pipeline.cli.bundle import main as bundle_main

    brats_cohort(tmp_path, n=1)
    config = str(tiny_bundle / "configs" / "inference.json")
    common = ["run", "--config_file", config, "--bundle_root", str(tiny_bundle), "--dataset_dir", str(tmp_path / "data"),
              "--device", "cpu", "--logging_file", "False"]
    for typo, meant in (("--ouput_dir", "--output_dir"), ("--network_df#features", "--network_def")):
        assert bundle_main([*common, typo, str(tmp_path / "out")]) == 2  # was: ignored, exit 0, written into eval/
        err = capsys.readouterr().err
        assert f"{typo}: no key" in err and config in err and f"did you mean {meant}?" in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tiny_bundle / "eval").exists()

    assert bundle_main([*common, "--output_dir", str(tmp_path / "out")]) == 0  # the same run, spelt right
    assert (tmp_path / "out" / "BraTS2021_00000_seg.nii.gz").is_file()


def test_check_overrides_follows_nested_ids_and_merged_configs(tiny_bundle: Path) -> None:
    from brats_pipeline.bundle.overrides import OverrideError, check_overrides

    configs = [str(tiny_bundle / "configs" / name) for name in ("train.json", "multi_gpu_train.json")]
    check_overrides(configs, {"epochs": 1, "train#trainer#max_epochs": 2, "train#trainer#logger": False})
    with pytest.raises(OverrideError, match=r"--epoch: no key 'epoch' .*multi_gpu_train\.json; did you mean --epochs\?"):
        check_overrides(configs, {"epoch": 1})
    with pytest.raises(OverrideError, match=r"'train#trainerr'|no key 'trainerr' under 'train'"):
        check_overrides(configs, {"train#trainerr#max_epochs": 1})
    with pytest.raises(OverrideError, match="is a list of"):
        check_overrides(str(tiny_bundle / "configs" / "inference.json"), {"postprocessing#transforms#9#keys": "x"})


def test_a_corrupt_model_pt_is_named(tmp_path: Path, brats_cohort, make_tiny_bundle) -> None:
    import torch

    from brats_pipeline.bundle import load_network
    from brats_pipeline.networks import build_network

    bundle = make_tiny_bundle(tmp_path)
    model = bundle / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # an interrupted copy
    brats_cohort(tmp_path, n=1)
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                           "--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=bundle, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"{model}: not a readable plain state dict" in done.stderr, done.stderr[-3000:]  # was: "models/model.pt: ..."

    model.write_bytes(b"not a torch file")
    network = build_network("unet3d", 4, 3, spatial_dims=3, **TINY_UNET3D)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(model))}: not a readable plain state dict"):
        load_network(network, model)
    torch.save({"state_dict": network.state_dict()}, model)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(model))}: not a plain network state_dict"):
        load_network(network, model)
