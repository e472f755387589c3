"""The LGG bundle: the 2.5D LGG CPU recipe in bundle form, shipping trained weights.

* ``train.json`` trains exactly ``brats_pipeline/configs/lgg_cpu.yaml`` (network, optimiser,
  schedule, data, augmentation, trainer, precision rule);
* ``network_def`` is one definition (the same in ``train.json`` and ``inference.json``) and the
  ``inferer`` of ``inference.json`` is 2.5D (each axial slice with one neighbour each side);
* ``metadata.json`` describes the 9-channel slice input;
* a checkpoint of a real ``brats-train`` run of the recipe goes into the bundle with the
  documented ``brats-bundle export`` command, strictly, and predicts as the checkpoint does;
* the shipped ``models/model.pt`` loads strictly; ``monai.bundle run`` on a real patient writes
  its label map in the input's geometry with Dice >= 0.7, and ``brats-infer --bundle`` writes
  the same labels voxel for voxel (skipped, saying why, without the weights or the data);
* every bundle's network exports to TorchScript with ``python -m monai.bundle ckpt_export``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import brats_pipeline.bundle as bb
from brats_pipeline.cli.bundle import main as bundle_main

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "lgg_flair_segmentation"
WEIGHTS = BUNDLE / "models" / "model.pt"
RECIPE = REPO / "brats_pipeline" / "configs" / "lgg_cpu.yaml"
#: The real patient predicted below: one of the 50 the shipped weights were trained on (a smoke
#: check of the shipped model and of the inference paths, not an evaluation; 38 axial slices).
PATIENT = "TCGA_DU_A5TP_19970614"
NO_WEIGHTS = (f"{WEIGHTS} absent: the trained weights are added with "
              "'brats-bundle export --checkpoint CKPT --bundle bundles/lgg_flair_segmentation' (docs/README.md)")


def _configs() -> tuple[dict, dict]:
    read = lambda name: json.loads((BUNDLE / "configs" / name).read_text())  # noqa: E731
    return read("train.json"), read("inference.json")


def _defaults(cls: type) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


# ------------------------------------------------------------------------ recipe and configs
def test_train_json_is_the_lgg_cpu_recipe() -> None:
    """Every setting of lgg_cpu.yaml, and the library default for each one the yaml leaves out."""
    from brats_pipeline.data.datamodule import BratsDataModule
    from brats_pipeline.devices import lightning_precision_for
    from brats_pipeline.module import BratsSegmentationModule

    recipe = yaml.safe_load(RECIPE.read_text())
    model, data, trainer = recipe["model"], recipe["data"], recipe["trainer"]
    train, _ = _configs()
    net = train["network_def"]
    assert (net["name"], {k: net[k] for k in model["network_kwargs"]}) == (model["network"], model["network_kwargs"])
    assert set(net) == {"_target_", "name", "in_channels", "out_channels", "spatial_dims", *model["network_kwargs"]}
    assert (net["in_channels"], net["out_channels"], net["spatial_dims"]) == (3 * (2 * model["context"] + 1), 1, 2)
    assert train["roi_size"] == model["roi_size"] == data["patch_size"]
    assert (train["slice_axis"], train["context"]) == (model["slice_axis"], model["context"])
    inferer = train["train"]["inferer"]
    assert (inferer["sw_batch_size"], inferer["overlap"]) == (model["sw_batch_size"], model["overlap"])
    assert inferer["mode"] == model.get("blend_mode", _defaults(BratsSegmentationModule)["blend_mode"])

    module, objects = train["train"]["module"], train["train"]
    assert {k: module[k] for k in ("loss", "optimizer", "lr_scheduler", "inferer")} == {
        k: f"@train#{k}" for k in ("loss", "optimizer", "lr_scheduler", "inferer")}  # the module receives them
    assert objects["loss"] == {"_target_": "brats_pipeline.losses.build_loss", "name": model["loss"], "mode": "sigmoid"}
    for ours, theirs in ((objects["optimizer"], model["optimizer"]), (objects["lr_scheduler"], model["lr_scheduler"])):
        assert ours == {"_target_": theirs["class_path"], "_mode_": "callable", **theirs["init_args"]}

    datamodule, dataset = train["train"]["datamodule"], train["train"]["dataset"]
    defaults = _defaults(BratsDataModule)
    for key, value in datamodule.items():
        if key in ("_target_", "train", "validate", "task", "datalist_path"):
            continue
        assert value == data.get(key, defaults[key]), key
    # the data settings the datasets hold: slices of the recipe's size and empty-slice ratio, read without
    # reorienting (no Orientationd), cached in memory (SliceDataset holds the volumes; validation a CacheDataset)
    assert dataset["_target_"].endswith("SliceDataset") and dataset["patch_size"] == "@roi_size"
    assert dataset["empty_slice_ratio"] == data["empty_slice_ratio"] and data["orientation"] is None
    assert not any(t["_target_"] == "Orientationd" for t in train["train"]["preprocessing"])
    assert data["cache"] == "memory" and train["validate"]["dataset"]["_target_"] == "CacheDataset"
    assert set(data) - set(datamodule) == {"datalist", "fold", "patch_size", "empty_slice_ratio", "cache", "orientation"}

    steps = train["train"]["trainer"]
    assert (train["epochs"], train["max_steps"], train["val_interval"]) == (
        trainer["max_epochs"], trainer["max_steps"], trainer["check_val_every_n_epoch"])
    assert (steps["max_epochs"], steps["max_steps"]) == ("@epochs", "@max_steps")
    for key in ("num_sanity_val_steps", "log_every_n_steps"):
        assert steps[key] == trainer[key], key
    stop = next(c for c in train["train"]["callbacks"] if c["_target_"].endswith("EarlyStopping"))
    assert stop["patience"] == recipe["early_stopping"]["patience"]
    assert train["initialize"][0]["seed"] == recipe["seed_everything"]
    # bf16-mixed, kept where the device runs it natively: the same rule as brats-train
    assert bb.precision_of("cpu", amp=train["amp"]) == lightning_precision_for(trainer["precision"], "cpu")[0]
    assert bb.precision_of("cuda", amp=train["amp"]) == trainer["precision"]


def test_train_json_builds_the_recipe_module() -> None:
    """``train#module`` as MONAI instantiates it: the recipe's optimiser and schedule, 2.5D validation."""
    from brats_pipeline.inference.inferers import ContextSliceInferer
    from brats_pipeline.schedules import ProgressLR

    model = yaml.safe_load(RECIPE.read_text())["model"]
    parser = bb.bundle_parser(BUNDLE, "train.json")
    module = parser.get_parsed_content("train#module")
    optimizer = module.optimizer_factory(module.parameters())
    assert isinstance(optimizer, torch.optim.AdamW) and model["optimizer"]["class_path"] == "torch.optim.AdamW"
    for key, value in model["optimizer"]["init_args"].items():
        assert optimizer.defaults[key] == value, key
    schedule = module.lr_scheduler_factory(optimizer)
    assert isinstance(schedule, ProgressLR) and model["lr_scheduler"]["class_path"].endswith("ProgressLR")
    for key, value in model["lr_scheduler"]["init_args"].items():
        assert getattr(schedule, key) == value, key
    assert module.spatial_dims == 2 and isinstance(module.inferer(), ContextSliceInferer)
    callbacks = parser.get_parsed_content("train#callbacks")
    assert next(c for c in callbacks if isinstance(c, bb.SaveBestNetwork)).weights == "final"  # fixed, annealed run


def test_network_def_is_one_definition_and_inference_is_2_5d() -> None:
    from brats_pipeline.inference.inferers import ContextSliceInferer, MirrorInferer
    from brats_pipeline.networks import input_channels_of, spatial_dims_of

    train, inference = _configs()
    assert inference["network_def"] == {"_target_": "brats_pipeline.bundle.train_network",
                                        "config_file": "$@bundle_root + '/configs/train.json'"}  # train.json's, built
    for key in ("task", "roi_size", "slice_axis", "context"):
        assert train[key] == inference[key], key
    assert inference["network"]["network"] == "@network_def" and train["train"]["module"]["network"] == "@network_def"
    parser = bb.bundle_parser(BUNDLE)
    inferer = parser.get_parsed_content("inferer")  # left-right mirroring around the 2.5D slice inferer (chosen by CV)
    assert isinstance(inferer, MirrorInferer) and isinstance(inferer.inferer, ContextSliceInferer)
    assert (inferer.mirror_axes, inferer.activation) == ((0,), "sigmoid")
    assert (inferer.spatial_dim, inferer.context, tuple(inferer.roi_size), inferer.sw_batch_size) == (2, 1, (256, 256), 32)
    assert parser.get_parsed_content("postprocess") == {"keep_largest": True}
    network = parser.get_parsed_content("network_def").eval()
    assert (spatial_dims_of(network), input_channels_of(network)) == (2, 9)
    with torch.no_grad():  # whole volumes (B, 3, X, Y, Z) in, logits on the same grid out
        assert inferer(torch.rand(1, 3, 64, 48, 5), network).shape == (1, 1, 64, 48, 5)


def test_metadata_describes_the_slice_input() -> None:
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 9 and len(image["spatial_shape"]) == 2
    assert list(image["channel_def"].values()) == [f"{m} {s}" for m in ("t1", "flair", "t1c") for s in ("z-1", "z", "z+1")]
    assert "2.5D U-Net" in meta["name"] and "3D" not in meta["name"] + meta["description"]
    assert "9 input channels = t1, flair, t1c at slices z-1, z, z+1" in meta["description"]
    assert "UNet" in meta["references"][0]


def test_training_cases_are_the_lgg_patients() -> None:
    """``docs/training_cases.txt``: the 50 patient ids, sorted, one a line; those of ../shared/data/lgg when present."""
    ids = (BUNDLE / "docs" / "training_cases.txt").read_text().splitlines()
    assert len(ids) == 50 and ids == sorted(set(ids))
    assert all(re.fullmatch(r"TCGA_[A-Z]{2}_[A-Z0-9]{4}_\d{8}", i) for i in ids)
    assert PATIENT in ids
    lgg_dir = Path(os.environ.get("BRATS_SHARED_DATA", REPO.parent / "shared" / "data")) / "lgg"
    if lgg_dir.is_dir():
        assert ids == sorted(p.name for p in lgg_dir.iterdir() if (p / f"{p.name}_seg.nii.gz").is_file())


# ------------------------------------------------------------------- weights into the bundle
def test_a_recipe_checkpoint_exports_into_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``brats-train`` with lgg_cpu.yaml (2 steps, on every fold), then the documented ``brats-bundle export``."""
    from brats_pipeline.cli.train import main as train_main
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort
    from brats_pipeline.inference import Predictor

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    write_cohort(data, "lgg", n_cases=3, shape=(64, 64, 24), seed=1)
    datalist = write_datalist(build_datalist(data, "lgg", folds=3, seed=0), tmp_path / "datalist.json")
    train_main(["fit", "--config", str(RECIPE), "--data.datalist", str(datalist), "--data.fold", "-1",
                "--data.batch_size", "4", "--trainer.max_steps", "2", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bundle = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("model.pt"))

    assert bundle_main(["export", "--checkpoint", str(ckpt), "--bundle", str(bundle)]) == 0
    exported = torch.load(bundle / "models" / "model.pt", weights_only=True)  # as MONAI Label loads it
    expected = bb.network_state_dict(torch.load(ckpt, weights_only=False))
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in expected)
    bb.load_network(bb.bundle_parser(bundle).get_parsed_content("network_def"), bundle / "models" / "model.pt")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    # fold -1: no validation score on training cases; the run's epoch/step are written, other entries kept
    assert {k: meta["eval_metrics"][k] for k in ("epoch", "global_step")} == {"epoch": 0, "global_step": 2}
    assert not any(k.startswith("val") for k in meta["eval_metrics"])

    case = bb.inference_cases(data, task="lgg")[0]
    from_bundle = Predictor.from_bundle(bundle, device="cpu").predict_case(case)
    # the bundle's inference settings (mirror along x, largest component) on the checkpoint give the same labels
    from_ckpt = Predictor.from_checkpoint(ckpt, device="cpu", tta_axes=(0,), postprocess={"keep_largest": True}).predict_case(case)
    assert from_bundle.label.shape == (64, 64, 24) and np.array_equal(from_bundle.label, from_ckpt.label)


def test_shipped_weights_load_strictly() -> None:
    if not WEIGHTS.is_file():
        pytest.skip(NO_WEIGHTS)
    assert WEIGHTS.stat().st_size <= 10 * 2**20
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)  # what MONAI Label does (then non-strict)
    network = bb.bundle_parser(BUNDLE).get_parsed_content("network_def")
    assert "state_dict" not in state and state.keys() == network.state_dict().keys()
    loaded = bb.load_network(network, WEIGHTS)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_shipped_bundle_predicts_a_real_patient(lgg_dir: Path, tmp_path: Path) -> None:
    """``python -m monai.bundle run`` (inference.json) and ``brats-infer --bundle`` on ``PATIENT``.

    ``PATIENT`` was in the shipped weights' training set (all 50 patients were): Dice >= 0.7
    checks that the shipped weights and both inference paths work, not how well they generalise
    (that is the cross-validation in docs/README.md).
    """
    from brats_pipeline.cli.infer import main as infer_main

    if not WEIGHTS.is_file():
        pytest.skip(NO_WEIGHTS)
    if not (lgg_dir / PATIENT).is_dir():
        pytest.skip(f"{lgg_dir / PATIENT} absent (the real LGG data)")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / PATIENT).symlink_to(lgg_dir / PATIENT)  # the read-only data, not a copy
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "bundle_run"), "--device", "cpu"]
    done = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = nib.load(tmp_path / "bundle_run" / f"{PATIENT}_seg.nii.gz")
    source = nib.load(lgg_dir / PATIENT / f"{PATIENT}_flair.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    labels = np.asarray(written.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1}

    assert infer_main(["-i", str(inputs), "-o", str(tmp_path / "infer"), "--bundle", str(BUNDLE), "--task", "lgg",
                       "--device", "cpu", "--no-progress"]) == 0
    ours = nib.load(tmp_path / "infer" / f"{PATIENT}.nii.gz")
    assert np.allclose(ours.affine, source.affine) and np.array_equal(np.asarray(ours.dataobj), labels)

    truth = np.asarray(nib.load(lgg_dir / PATIENT / f"{PATIENT}_seg.nii.gz").dataobj)
    dice = _dice(labels, truth)
    assert dice >= 0.7, f"{PATIENT}: Dice {dice:.3f} of the shipped weights on a patient they were trained on"


# ------------------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", sorted(p.parents[1].name for p in (REPO / "bundles").glob("*/configs/metadata.json")))
def test_every_bundle_network_exports_with_ckpt_export(name: str, tmp_path: Path) -> None:
    """The README's ``python -m monai.bundle ckpt_export`` (scripted, no tracing) equals the eager network."""
    from brats_pipeline.networks import input_channels_of

    bundle = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("model.pt"))
    torch.manual_seed(0)
    network = bb.bundle_parser(bundle).get_parsed_content("network_def").eval()
    shipped = REPO / "bundles" / name / "models" / "model.pt"
    if shipped.is_file():
        shutil.copy(shipped, bundle / "models" / "model.pt")
        bb.load_network(network, shipped)
    else:
        bb.save_state_dict(network.state_dict(), bundle / "models" / "model.pt")
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", "models/model.ts",
           "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
           "--config_file", "configs/inference.json", "--bundle_root", str(bundle)]
    done = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    channels = input_channels_of(network)
    spatial = (64, 64) if name == "lgg_flair_segmentation" else (32, 32, 32)
    x = torch.rand(1, channels, *spatial, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(scripted(x), network(x), atol=1e-5)
