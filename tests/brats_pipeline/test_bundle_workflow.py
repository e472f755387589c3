"""Every bundle end to end on tiny synthetic cohorts: ``monai.bundle run`` trains 1 epoch, predicts, evaluates.

Bundles are copied to ``tmp_path`` with a tiny network (``network_def`` overridden) and a
32³ roi (64² slices for the 2.5D LGG bundle, whose U-Net runs at half resolution), so each run
takes seconds on a CPU. One bundle is also driven through the real
command line and through MONAI Label's trainer overrides; DDP with 2 CPU processes is slow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import brats_pipeline.bundle as bb
from brats_pipeline.constants import get_task
from brats_pipeline.data.datalist import build_datalist, write_datalist
from brats_pipeline.data.synthetic import write_cohort

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "brats_unet3d_segmentation": {"features": [4, 4, 8, 16, 32, 4]},
    "brats_attention_unet_segmentation": {"channels": [4, 8, 16, 32, 64]},
    "brats_spatial_attention_unet_segmentation": {"features": [4, 8, 16, 32, 64]},
    "lgg_flair_segmentation": {"channels": [4, 8, 16, 32, 64]},  # unet2d, 2.5D (9 channels)
}
EVALUATED = ("brats_unet3d_segmentation", "lgg_flair_segmentation")
FAST = {"train#datamodule#num_workers": 0, "train#trainer#enable_progress_bar": False,
        "train#trainer#logger": False, "val_interval": 1, "device": "cpu"}


def tiny_bundle(name: str, dest: Path) -> Path:
    """Copy ``bundles/<name>`` (without shipped weights) to ``dest`` with a tiny network and a 32³ (2D: 64²) roi."""
    bundle = dest / name
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("model.pt"))
    for config in ("train.json", "inference.json"):
        path = bundle / "configs" / config
        cfg = json.loads(path.read_text())
        if "in_channels" in cfg["network_def"]:  # where the network is defined (inference.json may build train.json's)
            cfg["network_def"].update(TINY[name])
        cfg["roi_size"] = [32, 32, 32] if len(cfg["roi_size"]) == 3 else [64, 64]
        path.write_text(json.dumps(cfg, indent=4))
    return bundle


def bundle_task(bundle: Path) -> str:
    """The task of a bundle (its ``task`` id)."""
    return json.loads((bundle / "configs" / "inference.json").read_text())["task"]


def saved_weights(bundle: Path) -> str:
    """What ``train.json``'s ``SaveBestNetwork`` writes to ``models/model.pt``: ``best`` or ``final``."""
    def find(node: object) -> dict | None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).endswith("SaveBestNetwork"):
                return node
            node = list(node.values())
        for item in node if isinstance(node, list) else []:
            if (found := find(item)) is not None:
                return found
        return None

    callback = find(json.loads((bundle / "configs" / "train.json").read_text()))
    assert callback is not None, f"{bundle}: train.json has no SaveBestNetwork"
    return callback.get("weights", "best")


def run_bundle(bundle: Path, configs: list[str], **overrides: object) -> None:
    """``python -m monai.bundle run`` in-process (no logging.conf, so pytest's logging is left alone)."""
    from monai.bundle import run

    files = [str(bundle / "configs" / c) for c in configs]
    run(config_file=files if len(files) > 1 else files[0], logging_file=False, bundle_root=str(bundle), **overrides)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-case cohort per task, 48×48×32, with a 2-fold datalist.json inside the dataset folder."""
    out = {}
    for task in ("brats2021", "lgg"):
        root = tmp_path_factory.mktemp(task) / "data"
        write_cohort(root, task, n_cases=4, shape=(48, 48, 32), seed=1)
        write_datalist(build_datalist(root, task, folds=2, seed=0), root / "datalist.json")
        out[task] = root
    return out


@pytest.mark.parametrize("name", list(TINY))
def test_bundle_trains_predicts_and_evaluates(name: str, cohorts: dict[str, Path], tmp_path: Path) -> None:
    bundle = tiny_bundle(name, tmp_path)
    task = get_task(bundle_task(bundle))
    data = cohorts[bundle_task(bundle)]

    run_bundle(bundle, ["train.json"], dataset_dir=str(data), epochs=1, **FAST)
    weights = bundle / "models" / "model.pt"
    best = next((bundle / "runs" / "checkpoints").glob("best-*.ckpt"))
    saved = best if saved_weights(bundle) == "best" else bundle / "runs" / "checkpoints" / "last.ckpt"
    state = torch.load(weights, weights_only=True)
    expected = bb.network_state_dict(torch.load(saved, weights_only=False))
    assert state.keys() == expected.keys()
    assert all(torch.isfinite(v).all() for v in state.values()), "training produced non-finite weights"
    differ = [k for k in state if not torch.equal(state[k], expected[k])]
    assert not differ, f"model.pt differs from {saved.name} in {differ[:5]}"

    run_bundle(bundle, ["inference.json"], dataset_dir=str(data), output_dir=str(tmp_path / "pred"), device="cpu")
    manifest = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert manifest["counts"]["ok"] == 4 and manifest["counts"]["failed"] == 0
    for case in bb.inference_cases(data, task=task):
        written = nib.load(tmp_path / "pred" / f"{case['case_id']}_seg.nii.gz")
        source = nib.load(case["image"][0])
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= set(task.label_values)

    if name in EVALUATED:  # the same evaluation code for every network: once per task
        run_bundle(bundle, ["inference.json", "evaluate.json"], dataset_dir=str(data), fold=0,
                   output_dir=str(tmp_path / "eval"), device="cpu")
        summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
        assert summary["cases"] == 2 and set(summary["regions"]) == set(task.region_names)
        assert 0.0 <= summary["regions"][task.region_names[0]]["dice"]["mean"] <= 1.0

    if name == "brats_unet3d_segmentation":  # brats-bundle export with a validation run on fold 0
        metrics = bb.export_checkpoint(best, bundle, datalist=data / "datalist.json", fold=0)
        assert metrics["val_cases"] == 2 and set(metrics) >= {"best_val_dice_mean", "val_mean_dice", "val_dice_ET"}
        assert json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"] == metrics
        exported = torch.load(weights, weights_only=True)
        assert all(torch.equal(exported[k], expected[k]) for k in expected)

    checks = bb.verify_bundle(bundle, schema=bundle / "docs" / "meta_schema_20240725.json", require_weights=True)
    failed = [c for c in checks if c.status != "PASS"]  # the bundle's own schema copy: offline
    assert not failed, failed
    assert "TorchScript - eager| = " in next(c.detail for c in checks if c.name == "torchscript")


@pytest.mark.parametrize("name", EVALUATED)
def test_bundle_runner_predicts_with_the_predictor_voxel_for_voxel(name: str, cohorts: dict[str, Path], tmp_path: Path) -> None:
    """One engine: the evaluator's per-case prediction is a Predictor given the bundle's network and ``inferer``
    object, and ``monai.bundle run`` writes what ``Predictor.from_bundle(...).predict_case`` (brats-infer --bundle) does."""
    from brats_pipeline.inference import Predictor

    bundle = tiny_bundle(name, tmp_path)
    data = cohorts[bundle_task(bundle)]
    network = bb.bundle_parser(bundle).get_parsed_content("network_def")
    torch.manual_seed(3)
    with torch.no_grad():  # large random weights: logits of both signs, so the label maps are not uniform
        for weight in network.parameters():
            weight.normal_(0.0, 0.5)
    bb.save_state_dict(network.state_dict(), bundle / "models" / "model.pt")
    parser = bb.bundle_parser(bundle)
    parser.update({"dataset_dir": str(data), "output_dir": str(tmp_path / "pred"), "device": "cpu"})
    runner = parser.get_parsed_content("evaluator")
    assert isinstance(runner.predictor, Predictor) and runner.predictor.inferer is parser.get_parsed_content("inferer")

    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert predictor.describe()["inferer_settings"] == runner.predictor.describe()["inferer_settings"]
    cases = runner.dataset.data[:2]
    for i, case in enumerate(cases):
        expected = predictor.predict_case(case).label
        assert len(np.unique(expected)) > 1, "an all-background prediction would compare nothing"
        assert np.array_equal(runner.predict(runner.dataset[i]), expected)
    run_bundle(bundle, ["inference.json"], dataset_dir=str(data), output_dir=str(tmp_path / "pred"), device="cpu")
    for case in cases:
        written = np.asarray(nib.load(tmp_path / "pred" / f"{case['case_id']}_seg.nii.gz").dataobj)
        assert np.array_equal(written, predictor.predict_case(case).label)


def test_overrides_reach_the_trainer(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """``--epochs``, ``--dataset_dir`` and the more specific ``--train#trainer#max_epochs`` (parsed, not run)."""
    from monai.bundle import ConfigWorkflow

    config = REPO / "bundles" / "brats_unet3d_segmentation" / "configs" / "train.json"
    for overrides, epochs in (({"epochs": 1}, 1), ({"epochs": 1, "train#trainer#max_epochs": 2}, 2)):
        workflow = ConfigWorkflow(str(config), logging_file=False, workflow_type="train", device="cpu",
                                  bundle_root=str(tmp_path),
                                  dataset_dir=str(cohorts["brats2021"]), **{"train#trainer#logger": False}, **overrides)
        workflow.initialize()
        assert workflow.parser.get_parsed_content("train#trainer").max_epochs == epochs
        assert workflow.check_properties() == []  # MONAI's own check, instantiating every property
        assert len(workflow.parser.get_parsed_content("train#dataset#data")) == 2  # fold 0 of 2 is validation


@pytest.mark.slow
def test_documented_command_line_trains_with_overrides(cohorts: dict[str, Path], tmp_path: Path) -> None:
    """The README's command, with ``--epochs``/``--dataset_dir`` and a ``--train#trainer#max_epochs`` override."""
    bundle = tiny_bundle("brats_unet3d_segmentation", tmp_path)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json",
           "--dataset_dir", str(cohorts["brats2021"]), "--epochs", "1", "--train#trainer#max_epochs", "2",
           "--device", "cpu", "--roi_size", "[32,32,32]", "--train#datamodule#num_workers", "0",
           "--train#trainer#enable_progress_bar", "False"]
    done = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = next((bundle / "runs" / "logs").glob("version_*/checkpoints/last.ckpt"))
    assert torch.load(last, weights_only=False)["epoch"] == 1  # the more specific override won: 2 epochs
    assert (bundle / "models" / "model.pt").is_file()


@pytest.mark.parametrize("name", ["brats_unet3d_segmentation", "lgg_flair_segmentation"])
def test_monai_label_trainer_overrides(name: str, cohorts: dict[str, Path], tmp_path: Path) -> None:
    """What MONAI Label's BundleTrainTask sets: bundle_root, max_epochs, train/validate data (the LGG bundle: none to
    validate on, ``val_split`` 0, so its 2.5D SliceDataset takes the list and validation reuses the training cases),
    a torch.device, handlers."""
    bundle = tiny_bundle(name, tmp_path)
    task = bundle_task(bundle)
    studies = tmp_path / "studies"
    entries = []
    for case in bb.inference_cases(cohorts[task], task=task, labelled=True):
        stacked = bb.stack_modalities(case["image"], studies / f"{case['case_id']}.nii.gz", task=task)
        entries.append({"image": str(stacked), "label": case["label"]})
    handlers = [{"_target_": "CheckpointLoader", "load_path": "x", "load_dict": {"model": "$@network"}, "strict": False}]
    train, validate = (entries[:3], entries[3:]) if task == "brats2021" else (entries[:2], [])
    overrides = {**FAST, "device": torch.device("cpu"), "train#trainer#max_epochs": 1, "train#handlers": handlers,
                 "train#dataset#data": train, "validate#dataset#data": validate}
    if task == "lgg":
        overrides.update({"max_steps": -1, "train#trainer#max_steps": -1})
    run_bundle(bundle, ["train.json"], **overrides)
    split = json.loads((bundle / "runs" / "datalist_split.json").read_text())
    assert [e["fold"] for e in split["training"]] == ([0, 0, 0, 1] if task == "brats2021" else [0, 0, 1, 1])
    assert split["training"][0]["image"] == entries[0]["image"]  # the 4D stacked file, as MONAI Label sends it
    bb.load_network(bb.bundle_parser(bundle).get_parsed_content("network_def"), bundle / "models" / "model.pt")


def test_inference_restores_input_orientation_and_goes_on_past_a_bad_case(
    cohorts: dict[str, Path], tmp_path: Path
) -> None:
    """A left-right flipped (LAS) copy of a case gives the flipped label map; a corrupt file fails alone; a re-run
    skips only the cases whose labels were made from the same input contents by the same weights."""
    bundle = tiny_bundle("brats_unet3d_segmentation", tmp_path)
    bb.save_state_dict(bb.bundle_parser(bundle).get_parsed_content("network_def").state_dict(),
                       bundle / "models" / "model.pt")
    folder = tmp_path / "stacked"
    case = bb.inference_cases(cohorts["brats2021"], task="brats2021")[0]
    ras = nib.load(bb.stack_modalities(case["image"], folder / "ras.nii.gz"))
    flip = np.array([[-1.0, 0, 0, ras.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.asarray(ras.dataobj)[::-1], ras.affine @ flip), folder / "las.nii.gz")
    (folder / "broken.nii.gz").write_bytes((folder / "ras.nii.gz").read_bytes()[:2000])
    out = tmp_path / "pred"
    with pytest.raises(RuntimeError) as failed:  # monai.bundle wraps the runner's error
        run_bundle(bundle, ["inference.json"], dataset_dir=str(folder), output_dir=str(out), device="cpu")
    assert (f"1 of 3 cases failed (broken: {folder / 'broken.nii.gz'}: truncated or corrupt image data "
            "(EOFError: Compressed file ended") in str(bb.root_cause(failed.value))
    las = np.asarray(nib.load(out / "las_seg.nii.gz").dataobj)
    assert np.array_equal(las[::-1], np.asarray(nib.load(out / "ras_seg.nii.gz").dataobj))
    assert nib.aff2axcodes(nib.load(out / "las_seg.nii.gz").affine) == ("L", "A", "S")
    manifest = json.loads((out / "manifest.json").read_text())
    assert {c["case_id"]: c["status"] for c in manifest["cases"]} == {"broken": "failed", "las": "ok", "ras": "ok"}

    (folder / "broken.nii.gz").unlink()
    run_bundle(bundle, ["inference.json"], dataset_dir=str(folder), output_dir=str(out), device="cpu")
    assert json.loads((out / "manifest.json").read_text())["counts"]["skipped"] == 2  # done cases are not redone

    # other weights (or a replaced input): the outputs are stale, so those cases are redone (was: skipped, exit 0)
    weights = bundle / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    run_bundle(bundle, ["inference.json"], dataset_dir=str(folder), output_dir=str(out), device="cpu")
    rows = json.loads((out / "manifest.json").read_text())
    assert rows["counts"] == {"ok": 2, "failed": 0, "skipped": 0}
    shutil.copy(folder / "ras.nii.gz", folder / "las.nii.gz")  # las replaced by another image
    run_bundle(bundle, ["inference.json"], dataset_dir=str(folder), output_dir=str(out), device="cpu")
    assert {c["case_id"]: c["status"] for c in json.loads((out / "manifest.json").read_text())["cases"]} == {
        "las": "ok", "ras": "skipped"}


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_torchrun(cohorts: dict[str, Path], tmp_path: Path) -> None:
    bundle = tiny_bundle("brats_unet3d_segmentation", tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", "['configs/train.json','configs/multi_gpu_train.json']",
           "--dataset_dir", str(cohorts["brats2021"]), "--epochs", "1", "--val_interval", "1", "--device", "cpu",
           "--train#datamodule#num_workers", "0", "--train#trainer#enable_progress_bar", "False"]
    done = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr and "distributed_backend=gloo" in done.stdout + done.stderr
    assert (bundle / "models" / "model.pt").is_file()
