"""Hostile input of issue #15 whose fault was the message (or its absence), through the real entry points.

Each test failed before its fix:

4. a stray ``.nii.gz`` beside the case folders of the bundle's ``dataset_dir`` hid every case folder;
5. in the bundle's and the training's transforms, NaN in T1 was blamed on T1c, a missing FLAIR on
   T1c; shape, affine, 2D and 4D mismatches and a truncated file named no file;
9. ``brats-evaluate`` found an unwritable ``-o`` only after computing every metric, with a traceback;
12. a huge header dimension gave "truncated or corrupt (MemoryError: )"; a full disk named no file
    (and ITK wrote a truncated ``.nii.gz`` without an error); ``--fold 3`` meant ``--folds 3``; empty
    case folders were dropped without a word; a case id with a space: one rule, one message in
    ``brats-infer``, ``brats-preprocess`` and the bundle.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("t1ce", "t1", "t2", "flair")  # brats2021 files, in the task's channel order (t1c, t1, t2, flair)
PREPROCESS_ARGS = ["--no-n4", "--no-register", "--spacing", "2", "2", "2", "--no-progress"]


# ------------------------------------------------------------------------------------ helpers


def _file(root: Path, case: int, modality: str) -> Path:
    return root / "data" / f"BraTS2021_{case:05d}" / f"BraTS2021_{case:05d}_{modality}.nii.gz"


def _edit(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Rewrite a NIfTI file with other voxels and/or another affine."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32) if array is None else array
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), str(path))


def _huge_header(path: Path, dims: tuple[int, int, int] = (30000, 30000, 30000)) -> None:
    """Set the header's dimensions of a ``.nii.gz`` (the voxel data stay as they are)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    dim = list(struct.unpack("<8h", raw[40:56]))
    dim[1:4] = dims
    raw[40:56] = struct.pack("<8h", *dim)
    path.write_bytes(gzip.compress(bytes(raw)))




@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model") / "m.ckpt")


def _infer_args(source: Path, out: Path, ckpt: Path) -> list[str]:
    task = ["--task", "brats2021"] if source.is_dir() else []
    return ["-i", str(source), *task, "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--no-progress",
            "--loader-threads", "1", "--writer-threads", "1", "--read-threads", "1"]


def _run_bundle(bundle: Path, out: Path, **source: str) -> tuple[BaseException | None, dict[str, dict]]:
    """``monai.bundle run`` of the bundle's inference.json: (its error's root cause or None, manifest rows by case id)."""
    from monai.bundle import run

    from brats_pipeline.bundle import root_cause

    error = None
    try:
        run(config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
            output_dir=str(out), device="cpu", **source)
    except RuntimeError as exc:
        error = root_cause(exc)
    return error, {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------ 4. a stray file in dataset_dir
def test_bundle_predicts_the_case_folders_beside_stray_files(tmp_path: Path, tiny_bundle: Path, brats_cohort) -> None:
    from brats_pipeline.bundle import stack_modalities

    brats_cohort(tmp_path, n=2)
    data = tmp_path / "data"
    stray = data / "notes.nii.gz"
    shutil.copy(_file(tmp_path, 0, "t1"), stray)  # one 3D scan: no stacked input
    stack_modalities([str(_file(tmp_path, 1, m)) for m in MODALITIES], data / "stacked.nii.gz")  # a valid one
    before = _tree(data)
    error, rows = _run_bundle(tiny_bundle, tmp_path / "out", dataset_dir=str(data))
    assert {k: r["status"] for k, r in rows.items()} == {  # was: only "notes", failed; every case folder ignored
        "BraTS2021_00000": "ok", "BraTS2021_00001": "ok", "stacked": "ok", "notes": "failed"}
    assert rows["notes"]["error"].startswith(f"{stray}: expected 4 channels (t1c, t1, t2, flair)")
    assert "the header's shape is (32, 32, 32)" in rows["notes"]["error"]
    assert "1 of 4 cases failed" in str(error) and str(stray) in str(error)
    assert _tree(data) == before


# ----------------------------------------- 5. the bundle's and the training's transforms name the file
def _hostile_cases(root: Path) -> dict[str, tuple[dict, Path, str]]:
    """Copies of one phantom, each spoilt in one file: name -> (datalist entry, file at fault, expected problem)."""
    source = [_file(root, 0, m) for m in MODALITIES]
    cases = {}

    def spoil(name: str, modality: int, how) -> None:
        folder = root / "hostile" / name
        folder.mkdir(parents=True)
        files = [folder / f.name for f in source]
        for a, b in zip(source, files):
            shutil.copy(a, b)
        problem = how(files[modality])
        cases[name] = ({"case_id": name, "image": [str(f) for f in files], "label": str(_file(root, 0, "seg"))},
                       files[modality], problem)

    def volume(path: Path) -> np.ndarray:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)

    def nan(path: Path) -> str:
        data = volume(path)
        data[3, 3, 3] = np.nan
        _edit(path, data)
        return "1 voxels are NaN or Inf"

    def shape(path: Path) -> str:
        _edit(path, volume(path)[:30])
        return "t1 shape (30, 32, 32) differs from t1c shape (32, 32, 32)"

    def affine(path: Path) -> str:
        moved = nib.load(str(path)).affine.copy()
        moved[0, 3] += 5
        _edit(path, affine=moved)
        return "t1 affine differs from t1c"

    spoil("nan_t1", 1, nan)
    spoil("missing_flair", 3, lambda p: (p.unlink(), "file not found")[1])
    spoil("shape_t1", 1, shape)
    spoil("affine_t1", 1, affine)
    spoil("flat_t2", 2, lambda p: (_edit(p, volume(p)[:, :, 5]), "expected a 3D image, got shape (32, 32)")[1])
    spoil("4d_t2", 2, lambda p: (_edit(p, np.stack([volume(p)] * 2, -1)), "expected a 3D image, got shape (32, 32, 32, 2)")[1])
    spoil("truncated_flair", 3, lambda p: (p.write_bytes(p.read_bytes()[:-400]), "truncated or corrupt image data (EOFError")[1])
    spoil("short_flair", 3, lambda p: (p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-4000])),
                                       "truncated or corrupt image data (OSError: Expected")[1])
    spoil("huge_t1", 1, lambda p: (_huge_header(p), "truncated or corrupt file: the header's dimensions (30000, 30000, 30000)")[1])
    return cases


def test_bundle_inference_names_the_file_at_fault(tmp_path: Path, tiny_bundle: Path, brats_cohort) -> None:
    dl_path, datalist = brats_cohort(tmp_path, n=1)
    cases = _hostile_cases(tmp_path)
    entries = [datalist["training"][0], *(entry for entry, _, _ in cases.values())]
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps({**datalist, "training": entries}))
    error, rows = _run_bundle(tiny_bundle, tmp_path / "out", datalist=str(hostile))
    assert rows["BraTS2021_00000"]["status"] == "ok"  # the batch went on
    assert f"{len(cases)} of {len(entries)} cases failed" in str(error)
    for name, (_, culprit, problem) in cases.items():
        assert rows[name]["status"] == "failed", name
        assert f"{culprit}: " in rows[name]["error"] and problem in rows[name]["error"], (name, rows[name]["error"])
        others = [f for f in cases[name][0]["image"] if f != str(culprit)]
        assert not any(f"{f}:" in rows[name]["error"] for f in others), (name, rows[name]["error"])  # was: T1c blamed


def test_bundle_reports_a_case_folder_without_flair_by_the_flair_file(tmp_path: Path, tiny_bundle: Path, brats_cohort) -> None:
    brats_cohort(tmp_path, n=2)
    flair = _file(tmp_path, 1, "flair")
    flair.unlink()
    error, rows = _run_bundle(tiny_bundle, tmp_path / "out", dataset_dir=str(tmp_path / "data"))
    assert rows["BraTS2021_00000"]["status"] == "ok"
    assert rows["BraTS2021_00001"]["status"] == "failed"
    assert rows["BraTS2021_00001"]["error"].startswith(f"{flair}: missing modality flair")  # was: the T1c file
    assert "1 of 2 cases failed" in str(error)


def test_training_transforms_name_the_file_at_fault(tmp_path: Path, brats_cohort) -> None:
    """What the training's data module (``BratsDataModule`` through ``deterministic_transforms``) reads."""
    from monai.transforms import RandomizableTrait, Transform

    from brats_pipeline.bundle import root_cause
    from brats_pipeline.data.datamodule import BratsDataModule
    from brats_pipeline.data.transforms import deterministic_transforms

    _, datalist = brats_cohort(tmp_path, n=1)
    cases = _hostile_cases(tmp_path)
    transforms = deterministic_transforms("brats2021", spacing=None)
    assert all(isinstance(t, Transform) and not isinstance(t, RandomizableTrait) for t in transforms.transforms)  # cached
    good = transforms(datalist["training"][0])
    assert set(good) >= {"image", "label"} and not any(k.endswith("_files") for k in good)  # nothing left to collate
    for name, (entry, culprit, problem) in cases.items():
        with pytest.raises(RuntimeError) as failed:
            transforms(entry)
        message = str(root_cause(failed.value))
        assert message.startswith(f"{culprit}: ") and problem in message, (name, message)

    entry, culprit, problem = cases["nan_t1"]  # through the data module, as brats-train and the bundle's train.json
    split = tmp_path / "split.json"
    split.write_text(json.dumps({**datalist, "num_folds": 2, "training": [
        {**datalist["training"][0], "fold": 0}, {**entry, "fold": 1, "patient_id": "nan_t1"}]}))
    module = BratsDataModule(str(split), fold=1, patch_size=(32, 32, 32), batch_size=1, num_workers=0, cache="memory")
    with pytest.raises(RuntimeError) as failed:
        module.setup("fit")  # CacheDataset reads the cases (every deterministic step is cached)
    assert str(root_cause(failed.value)) == f"{culprit}: {problem}"  # was: the T1c file


# ---------------------------------------------- 9. brats-evaluate checks -o before any metric
@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_evaluate_refuses_an_unusable_output_folder_up_front(where: str, tmp_path: Path, ckpt: Path,
                                                            capsys: pytest.CaptureFixture[str], brats_cohort,
                                                            unusable_output) -> None:
    from brats_pipeline.cli.evaluate import main as evaluate_main
    from brats_pipeline.cli.infer import main as infer_main

    dl_path, _ = brats_cohort(tmp_path, n=1)
    assert infer_main(_infer_args(dl_path, tmp_path / "preds", ckpt)) == 0
    out = unusable_output(tmp_path, where, "eval", "/sys/brats-evaluate-out")
    capsys.readouterr()
    code = evaluate_main(["--pred", str(tmp_path / "preds"), "--truth", str(dl_path), "-o", str(out), "--no-progress"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1 and str(out) in errors[0], captured  # was: a traceback after every metric
    assert errors[0].startswith("brats-evaluate: error: ") and "Traceback" not in captured.err
    assert "case(s)" not in captured.out  # no summary: nothing was computed


# ------------------------------------------------------------ 12. a huge header dimension
def test_a_huge_header_dimension_is_named_with_the_size_it_implies(tmp_path: Path, ckpt: Path, brats_cohort) -> None:
    from brats_pipeline.cli.infer import main as infer_main
    from preprocessing.io import ImageFileError, read_array

    brats_cohort(tmp_path, n=2)
    t2 = _file(tmp_path, 1, "t2")
    _huge_header(t2)
    out = tmp_path / "out"
    assert infer_main(_infer_args(tmp_path / "data", out, ckpt)) == 1
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}
    assert rows["BraTS2021_00000"]["status"] == "ok"
    error = rows["BraTS2021_00001"]["error"]  # was: "...: truncated or corrupt image data (MemoryError: )"
    assert error.startswith(f"{t2}: truncated or corrupt file: the header's dimensions (30000, 30000, 30000) of ")
    assert "TiB of voxel data, but the file (" in error and "MiB once decompressed" in error and "MemoryError" not in error

    plain = tmp_path / "plain.nii"  # uncompressed: the file's own size is the bound
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(plain))
    plain.write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(ImageFileError, match=r"plain\.nii: truncated or corrupt file: the header's dimensions \(8, 8, 8\) "
                                             r"of float32 imply 2 KiB of voxel data, but the file \(2\.25 KiB\) holds 1\.9 KiB "):
        read_array(plain)


# ---------------------------------------------------------------------- 12. a full disk
def test_a_write_that_fails_names_the_file_being_written(tmp_path: Path) -> None:
    """A real write into ``/dev/full`` (ENOSPC), through the temporary file of :func:`atomic_path`."""
    from preprocessing.outputs import atomic_path

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    target = tmp_path / "out" / "case.nii.gz"
    with pytest.raises(OSError) as failed:
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.symlink_to("/dev/full")  # the writer's bytes go to a device that is always full
            nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp))
    assert failed.value.errno == errno.ENOSPC  # was: "[Errno 28] No space left on device", no file
    assert str(failed.value) == f"[Errno 28] No space left on device while writing: '{target}'"
    assert list(target.parent.iterdir()) == []  # no output, no temporary file


def _tiny_filesystem_available(tmp_path: Path) -> bool:
    """Whether ``unshare`` can mount a tmpfs in a user namespace here (no root needed where the kernel allows it)."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=4k none '{probe}'"], capture_output=True)
    probe.rmdir()
    return done.returncode == 0


def _on_a_tiny_filesystem(mount: Path, size_kib: int, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with a ``size_kib`` tmpfs mounted on ``mount`` (seen by it alone: a mount namespace)."""
    mount.mkdir()
    script = 'mount -t tmpfs -o size="$1"k none "$2" && shift 2 && exec "$@"'
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(size_kib), str(mount), *command],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def test_a_full_disk_is_named_by_infer_and_preprocess(tmp_path: Path, ckpt: Path, brats_cohort) -> None:
    if not _tiny_filesystem_available(tmp_path):
        pytest.skip("cannot mount a tiny tmpfs without root here (unshare -rm)")
    dl_path, _ = brats_cohort(tmp_path, n=2)
    mount = tmp_path / "tiny"

    done = _on_a_tiny_filesystem(mount, 4, [sys.executable, "-m", "brats_pipeline.cli.infer",
                                            *_infer_args(tmp_path / "data", mount / "out", ckpt)])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"FAILED BraTS2021_00000: [Errno 28] No space left on device while writing: '{mount}/out/BraTS2021_00000.nii.gz'" \
        in done.stdout, done.stdout  # was: "[Errno 28] No space left on device", then a traceback
    assert f"brats-infer: error: [Errno 28] No space left on device while writing: '{mount}/out/manifest.json'" in done.stderr

    shutil.rmtree(mount)
    done = _on_a_tiny_filesystem(mount, 20, [sys.executable, "-m", "brats_pipeline.cli.preprocess", "-i", str(dl_path),
                                             "-o", str(mount / "pp"), *PREPROCESS_ARGS])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for case in ("BraTS2021_00000", "BraTS2021_00001"):  # was: ITK wrote a truncated .nii.gz without an error
        assert re.search(rf"{case} failed: OSError: \[Errno 28\] No space left on device while writing \(.* free\): "
                         rf"'{re.escape(str(mount))}/pp/{case}/{case}_\w+\.nii\.gz'", done.stderr), done.stderr[-3000:]
    assert not list(mount.iterdir())  # the tmpfs was the command's alone


# -------------------------------------------------------------- 12. abbreviated options
@pytest.mark.parametrize("tool, argv, abbreviated", [
    ("brats_pipeline.cli.datalist", ["data", "--task", "brats2021", "-o", "dl.json", "--fold", "3"], "--fold"),  # meant --folds 3
    ("brats_pipeline.cli.preprocess", ["-i", "data", "-o", "out", "--fold", "3"], "--fold"),
    ("brats_pipeline.cli.infer", ["-i", "dl.json", "-o", "out", "--checkpoint", "m.ckpt", "--over"], "--over"),
    ("brats_pipeline.cli.evaluate", ["--pred", "p", "--truth", "dl.json", "-o", "out", "--empty", "1"], "--empty"),
    ("brats_pipeline.cli.bundle", ["export", "--checkpoint", "m.ckpt", "--bundle", "b", "--data", "dl.json"], "--data"),
    ("brats_pipeline.cli.synth", ["out", "--case", "1"], "--case"),
    ("brats_pipeline.cli.models", ["--spatial", "2"], "--spatial"),
    ("brats_pipeline.cli.radiogenomics", ["--labels", "x", "--clinical", "c.csv", "-o", "out", "--tru", "y"], "--tru"),
    ("preprocessing.sharding", ["merge", "a.json", "-o", "m.json", "--data", "dl.json"], "--data"),
    ("brats_pipeline.cli.train", ["fit", "--trainer.max_epoch", "1"], "--trainer.max_epoch"),
])
def test_abbreviated_options_are_refused(tool: str, argv: list[str], abbreviated: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(tool).main(argv)  # the entry point of each console script (pyproject.toml)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "unrecognized arguments" in err and abbreviated in err, err
    assert list(tmp_path.iterdir()) == []  # nothing ran


# --------------------------------------------------------------- 12. empty case folders
def test_empty_case_folders_are_named_in_a_warning(tmp_path: Path, ckpt: Path, tiny_bundle: Path,
                                                   caplog: pytest.LogCaptureFixture, brats_cohort) -> None:
    from brats_pipeline.cli.datalist import main as datalist_main
    from brats_pipeline.cli.infer import main as infer_main
    from brats_pipeline.cli.preprocess import main as preprocess_main

    brats_cohort(tmp_path, n=1)
    data = tmp_path / "data"
    runs = {
        "brats-datalist": lambda: datalist_main([str(data), "--task", "brats2021", "-o", str(tmp_path / "dl1.json"),
                                                 "--folds", "1"]) == 0,
        "brats-infer": lambda: infer_main(_infer_args(data, tmp_path / "inf", ckpt)) == 0,
        "brats-preprocess": lambda: preprocess_main(["-i", str(data), "--task", "brats2021", "-o", str(tmp_path / "pp"),
                                                     *PREPROCESS_ARGS]) == 0,
        "bundle": lambda: _run_bundle(tiny_bundle, tmp_path / "bundle", dataset_dir=str(data))[0] is None,
    }
    for i, (tool, run) in enumerate(runs.items()):  # each warns once per process and folder: a new empty folder each
        (data / f"BraTS2021_0009{i}").mkdir()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="brats_pipeline.data.discovery"):
            assert run(), tool
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ignoring" in r.getMessage()]
        assert len(warnings) == 1, (tool, warnings)  # was: dropped without a word
        assert "folder(s) without .nii/.nii.gz files (not cases): " in warnings[0] and f"BraTS2021_0009{i}" in warnings[0]


# ----------------------------------------------------- 12. case ids with spaces: one rule, one message
def test_a_case_id_with_a_space_fails_alike_in_every_tool(tmp_path: Path, ckpt: Path, tiny_bundle: Path,
                                                          capsys: pytest.CaptureFixture[str], brats_cohort) -> None:
    from brats_pipeline.cli.infer import main as infer_main
    from brats_pipeline.cli.preprocess import main as preprocess_main
    from preprocessing.identity import CASE_ID_RULE

    dl_path, datalist = brats_cohort(tmp_path, n=2)
    rule = f"case id 'Case 1' is not a safe file name ({CASE_ID_RULE})"

    hostile = tmp_path / "hostile.json"  # a datalist id: a usage error (exit 2), one line, in both tools
    hostile.write_text(json.dumps({**datalist, "training": [{**datalist["training"][0], "case_id": "Case 1"}]}))
    assert infer_main(_infer_args(hostile, tmp_path / "a", ckpt)) == 2
    infer_err = capsys.readouterr().err.strip().splitlines()[-1]
    assert preprocess_main(["-i", str(hostile), "-o", str(tmp_path / "b"), *PREPROCESS_ARGS]) == 2
    preprocess_err = capsys.readouterr().err.strip().splitlines()[-1]
    assert infer_err == f"brats-infer: error: {hostile}: training[0]: {rule}"
    assert preprocess_err == f"brats-preprocess: error: {hostile}: training[0]: {rule}"

    folder = tmp_path / "data" / "Case 1"  # a folder name: that case fails, the others go on, in all three
    (tmp_path / "data" / "BraTS2021_00001").rename(folder)
    for f in folder.iterdir():
        f.rename(folder / f.name.replace("BraTS2021_00001", "Case 1"))
    assert infer_main(_infer_args(tmp_path / "data", tmp_path / "inf", ckpt)) == 1
    assert preprocess_main(["-i", str(tmp_path / "data"), "--task", "brats2021", "-o", str(tmp_path / "pp"),
                            *PREPROCESS_ARGS]) == 1
    _, bundle_rows = _run_bundle(tiny_bundle, tmp_path / "bundle", dataset_dir=str(tmp_path / "data"))
    infer_rows = {r["case_id"]: r for r in json.loads((tmp_path / "inf" / "manifest.json").read_text())["cases"]}
    preprocess_rows = {r["case_id"]: r for r in json.loads((tmp_path / "pp" / "manifest.json").read_text())["cases"]}
    for rows in (infer_rows, preprocess_rows, bundle_rows):
        assert rows["BraTS2021_00000"]["status"] == "ok" and rows["Case 1"]["status"] == "failed"
        assert rows["Case 1"]["error"].endswith(f"{folder}: {rule}"), rows["Case 1"]["error"]
