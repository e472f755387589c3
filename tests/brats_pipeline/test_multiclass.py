"""Softmax (multi-class) output mode: class <-> label maps, targets, loss, per-label metrics, training,
prediction and a softmax bundle, end to end on tiny phantoms (CPU)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_pipeline.constants import get_task
from brats_pipeline.losses import build_loss
from brats_pipeline.metrics import label_metrics, voxel_accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"features": [4, 4, 8, 16, 32, 4]}


# ------------------------------------------------------------------------- label schemes
@pytest.mark.parametrize(
    ("task", "values", "names"),
    [
        ("brats2021", (0, 1, 2, 4), ("background", "NCR", "ED", "ET")),
        ("brats2023", (0, 1, 2, 3), ("background", "NETC", "SNFH", "ET")),
        ("lgg", (0, 1), ("background", "FLAIR")),
    ],
)
def test_label_values_and_classes_round_trip(task: str, values: tuple[int, ...], names: tuple[str, ...]) -> None:
    t = get_task(task)
    assert t.n_classes == len(values) == t.output_channels("softmax")
    assert t.output_channels("sigmoid") == len(t.regions)
    assert t.class_names == names
    rng = np.random.default_rng(0)
    labels = rng.choice(values, size=(1, 5, 4, 3)).astype(np.uint8)
    classes = t.labels_to_classes(labels)
    assert classes.dtype == np.int64 and set(np.unique(classes).tolist()) <= set(range(len(values)))
    np.testing.assert_array_equal(np.asarray(values)[classes], labels)  # class i is label values[i]
    np.testing.assert_array_equal(t.classes_to_labels(classes), labels)
    as_torch = t.labels_to_classes(torch.from_numpy(labels))
    assert torch.equal(as_torch, torch.from_numpy(classes))
    assert torch.equal(t.classes_to_labels(as_torch), torch.from_numpy(labels))


def test_brats2021_label_4_is_class_3_and_bad_values_are_named() -> None:
    t = get_task("brats2021")
    np.testing.assert_array_equal(t.labels_to_classes(np.array([0, 1, 2, 4])), [0, 1, 2, 3])
    np.testing.assert_array_equal(t.classes_to_labels(np.array([3, 2, 1, 0])), [4, 2, 1, 0])
    with pytest.raises(ValueError, match=r"label values \[3\] are not in the brats2021 scheme"):
        t.labels_to_classes(np.array([0, 3]))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\].*got values in \[0, 4\]"):
        t.classes_to_labels(np.array([0, 4]))
    with pytest.raises(ValueError, match="unknown output_mode 'multiclass'"):
        t.output_channels("multiclass")


# ----------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 3.0]])
def test_ce_equals_torch_in_both_modes(weight: list[float] | None) -> None:
    """``ce``: torch's BCE-with-logits per region channel (sigmoid) and cross-entropy over classes (softmax)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, 3, generator=g)
    regions = torch.rand(2, 3, 5, 4, 3, generator=g) > 0.6
    classes = torch.randint(0, 3, (2, 1, 5, 4, 3), generator=g)
    kw = {} if weight is None else {"weight": weight}
    w = None if weight is None else torch.tensor(weight)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=None if w is None else w.view(3, 1, 1, 1))(logits, regions.float())
    torch.testing.assert_close(build_loss("ce", mode="sigmoid", **kw)(logits, regions), expected)
    expected = torch.nn.CrossEntropyLoss(weight=w)(logits, classes[:, 0])
    torch.testing.assert_close(build_loss("ce", mode="softmax", **kw)(logits, classes), expected)
    torch.testing.assert_close(build_loss("ce", mode="softmax", **kw)(logits, classes.float()), expected)


def test_module_builds_its_loss_in_its_output_mode() -> None:
    from brats_pipeline.module import BratsSegmentationModule

    module = BratsSegmentationModule("unet3d", TINY, task="brats2021", output_mode="softmax", loss="dice_ce")
    assert module.loss_fn.mode == "softmax" and module.network_config["out_channels"] == 4
    assert module.hparams.output_mode == "softmax"
    with pytest.raises(ValueError, match="'dice_bce' supports mode sigmoid only, got mode='softmax'"):
        BratsSegmentationModule("unet3d", TINY, output_mode="softmax", loss="dice_bce")
    with pytest.raises(ValueError, match="loss mode is the module's output_mode; set --model.output_mode"):
        BratsSegmentationModule("unet3d", TINY, loss_kwargs={"mode": "softmax"})
    with pytest.raises(ValueError, match="unknown output_mode 'logits'"):
        BratsSegmentationModule("unet3d", TINY, output_mode="logits")


# -------------------------------------------------------------------------------- metrics
# One row of 10 voxels (x), by hand:      idx 0  1  2  3  4  5  6  7  8  9
TRUTH = np.array([0, 0, 1, 1, 2, 2, 2, 4, 4, 0]).reshape(10, 1, 1)
PRED = np.array([0, 1, 1, 2, 2, 2, 0, 4, 0, 0]).reshape(10, 1, 1)
EXPECTED = {
    # NCR: truth {2, 3}, pred {1, 2}: TP 1, FP 1, FN 1
    "NCR": {"dice": 2 / 4, "iou": 1 / 3, "precision": 1 / 2, "recall": 1 / 2},
    # ED: truth {4, 5, 6}, pred {3, 4, 5}: TP 2, FP 1, FN 1
    "ED": {"dice": 4 / 6, "iou": 2 / 4, "precision": 2 / 3, "recall": 2 / 3},
    # ET: truth {7, 8}, pred {7}: TP 1, FP 0, FN 1
    "ET": {"dice": 2 / 3, "iou": 1 / 2, "precision": 1.0, "recall": 1 / 2},
}
ACCURACY = 6 / 10  # right at 0, 2, 4, 5, 7, 9


def test_per_label_metrics_and_accuracy_by_hand() -> None:
    got = label_metrics(PRED, TRUTH, "brats2021")
    assert list(got) == ["NCR", "ED", "ET"]
    for key, metrics in EXPECTED.items():
        assert got[key] == pytest.approx(metrics)
    assert voxel_accuracy(PRED, TRUTH) == pytest.approx(ACCURACY)
    assert voxel_accuracy(torch.from_numpy(PRED), torch.from_numpy(TRUTH)) == pytest.approx(ACCURACY)
    # a label absent from both is a correct "nothing here" (BraTS rule); present in one only scores 0
    no_et = np.where(TRUTH == 4, 2, TRUTH)
    assert label_metrics(np.where(PRED == 4, 2, PRED), no_et, "brats2021")["ET"] == {
        "dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert label_metrics(PRED, no_et, "brats2021")["ET"] == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    # BraTS 2023 names its labels NETC, SNFH, ET (values 1, 2, 3)
    assert list(label_metrics(np.where(PRED == 4, 3, PRED), np.where(TRUTH == 4, 3, TRUTH), "brats2023")) == [
        "NETC", "SNFH", "ET"]
    with pytest.raises(ValueError, match=r"pred: label values \[3\] are not in the brats2021 scheme"):
        label_metrics(np.where(PRED == 4, 3, PRED), TRUTH, "brats2021")


def test_brats_evaluate_writes_per_label_columns_beside_the_regions(tmp_path: Path) -> None:
    from brats_pipeline.evaluation import evaluate_folder, write_evaluation

    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(PRED.astype(np.uint8), np.eye(4)), tmp_path / "pred" / "a.nii.gz")
    nib.save(nib.Nifti1Image(TRUTH.astype(np.uint8), np.eye(4)), tmp_path / "a_seg.nii.gz")
    result = evaluate_folder(tmp_path / "pred", [{"case_id": "a", "label": str(tmp_path / "a_seg.nii.gz")}], "brats2021")
    paths = write_evaluation(result, tmp_path / "eval")
    rows = list(csv.DictReader(paths["labels_csv"].open()))
    assert len(rows) == 1 and rows[0]["case_id"] == "a"
    assert float(rows[0]["accuracy"]) == pytest.approx(ACCURACY)
    for key, metrics in EXPECTED.items():
        for metric, value in metrics.items():
            assert float(rows[0][f"{metric}_{key}"]) == pytest.approx(value, abs=1e-6)
    summary = json.loads(paths["json"].read_text())
    assert summary["labels"]["values"] == {"NCR": 1, "ED": 2, "ET": 4}
    assert summary["labels"]["summary"]["ED"]["dice"]["mean"] == pytest.approx(4 / 6)
    assert summary["labels"]["accuracy"]["mean"] == pytest.approx(ACCURACY)
    assert set(summary["summary"]) == {"TC", "WT", "ET"}  # the regions, as before
    # TC = {1, 4}: truth {2, 3, 7, 8}, pred {1, 2, 7}: TP 2, FP 1, FN 2
    assert summary["summary"]["TC"]["dice"]["mean"] == pytest.approx(4 / 7)
    markdown = paths["markdown"].read_text()
    assert "| ED | 2 | 0.667 ± 0.000 | 0.500 ± 0.000 | 0.667 ± 0.000 | 0.667 ± 0.000 |" in markdown
    assert "Voxel accuracy (all labels, background included): 0.6000" in markdown


# --------------------------------------------------------------------- targets and augmentation
def test_softmax_targets_are_class_indices(brats_cohort, tmp_path: Path) -> None:
    from brats_pipeline.data.transforms import deterministic_transforms

    _, datalist = brats_cohort(tmp_path, n=1)
    entry = datalist["training"][0]
    raw = np.asarray(nib.load(entry["label"]).dataobj)
    classes = deterministic_transforms("brats2021", output_mode="softmax", orientation=None, crop_foreground=False)(entry)["label"]
    regions = deterministic_transforms("brats2021", orientation=None, crop_foreground=False)(entry)["label"]
    assert classes.shape == (1, *raw.shape) and regions.shape == (3, *raw.shape)
    np.testing.assert_array_equal(classes[0].numpy(), get_task("brats2021").labels_to_classes(raw))
    assert set(np.unique(classes.numpy()).tolist()) == {0, 1, 2, 3}


def test_batch_augment_keeps_class_labels_exact() -> None:
    from brats_pipeline.data.augment import BatchAugment
    from brats_pipeline.data.augmentation_config import AugmentationConfig

    torch.manual_seed(0)
    coarse = torch.randn(2, 1, 5, 5, 4)
    image = torch.nn.functional.interpolate(coarse, size=(36, 36, 28), mode="trilinear", align_corners=True)
    classes = (image > -0.3).float() + (image > 0.2).float() + (image > 0.7).float()  # nested, like NCR in ET in ED
    cfg = AugmentationConfig(spatial_prob=1.0, intensity_prob=0, gamma_prob=0, noise_prob=0, smooth_prob=0)
    out, lab = BatchAugment(cfg, out_size=(32, 32, 24), classes=4)(image, classes)
    assert lab.shape == (2, 1, 32, 32, 24) and set(lab.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert len(lab.unique()) == 4
    expected = (out > -0.3).float() + (out > 0.2).float() + (out > 0.7).float()
    clear = ((out.unsqueeze(0) - torch.tensor([-0.3, 0.2, 0.7]).view(3, 1, 1, 1, 1, 1)).abs() > 0.25).all(0) & (out != 0)
    assert float((lab == expected)[clear].float().mean()) > 0.995  # the labels moved with the image
    flips = AugmentationConfig.none()
    flips.flip_prob = 1.0
    _, flipped = BatchAugment(flips, classes=4)(image, classes)
    assert torch.equal(flipped, classes.flip(2, 3, 4))
    with pytest.raises(ValueError, match=r"expects class indices \(B, 1, \.\.\.\) in \[0, 3\]"):
        BatchAugment(cfg, classes=4)(image, classes.repeat(1, 3, 1, 1, 1))


def test_slices_keep_class_indices() -> None:
    from brats_pipeline.data.slices import SliceDataset

    label = torch.zeros(1, 8, 8, 4)
    label[0, 2:5, 2:5, 1:3] = 2
    label[0, 3, 3, 2] = 3
    ds = SliceDataset([{"image": torch.randn(4, 8, 8, 4), "label": label}], empty_slice_ratio=0, patch_size=(8, 8))
    assert sorted(torch.unique(ds[1]["label"]).tolist()) == [0.0, 2.0, 3.0] and ds[1]["label"].shape == (1, 8, 8)


# ------------------------------------------------------------------------ post-processing
def test_postprocess_classes_takes_the_argmax_and_runs_region_steps() -> None:
    from brats_pipeline.inference.postprocess import ClassesToLabelsd, postprocess_classes

    task = get_task("brats2021")
    classes = np.zeros((6, 6, 6), dtype=np.int64)
    classes[1:4, 1:4, 1:4] = 2  # ED
    classes[2, 2, 2] = 3  # ET
    classes[5, 5, 5] = 2  # a speck of ED apart from the tumour
    probs = np.eye(4, dtype=np.float32)[classes].transpose(3, 0, 1, 2) * 0.7 + 0.3 / 4
    labels = postprocess_classes(probs, task)
    np.testing.assert_array_equal(labels, task.classes_to_labels(classes))
    assert postprocess_classes(torch.from_numpy(probs), task).dtype == np.uint8
    cleaned = postprocess_classes(probs, task, {"keep_largest": True})  # on the label map's regions (WT)
    assert cleaned[5, 5, 5] == 0 and cleaned[2, 2, 2] == 4 and cleaned[1, 1, 1] == 2
    with pytest.raises(ValueError, match="threshold 0.4 is for region probabilities .* leave threshold at 0.5"):
        postprocess_classes(probs, task, {"threshold": 0.4})
    with pytest.raises(ValueError, match=r"expected 4 class channels .* got \(3, 6, 6, 6\)"):
        postprocess_classes(probs[:3], task)
    out = ClassesToLabelsd("pred", task)({"pred": torch.from_numpy(classes)[None].float()})["pred"]
    assert torch.equal(out, torch.from_numpy(task.classes_to_labels(classes))[None])


# ------------------------------------------------------------------ train, predict (end to end)
UNET25D = ("unet2d", {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}, {"context": 1})


@pytest.mark.parametrize(
    ("network", "augmentation_device"),
    [(("unet3d", TINY, {}), "cpu"), (("unet3d", TINY, {}), "batch"), (UNET25D, "batch")],
    ids=["3d-cpu-augmentation", "3d-batch-augmentation", "2.5d-slices"],
)
def test_softmax_mode_trains_and_predicts_the_schemes_labels(network: tuple, augmentation_device: str, brats_cohort,
                                                             tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from brats_pipeline.data.datamodule import BratsDataModule
    from brats_pipeline.inference import Predictor, run_batch
    from brats_pipeline.module import BratsSegmentationModule

    dl_path, datalist = brats_cohort(tmp_path, n=2)
    torch.manual_seed(0)
    name, kwargs, options = network
    size = (32, 32, 32) if name == "unet3d" else (32, 32)
    model = BratsSegmentationModule(name, kwargs, task="brats2021", roi_size=size, sw_batch_size=1, overlap=0.25,
                                    loss="dice_ce", output_mode="softmax", lr_scheduler=None, **options)
    data = BratsDataModule(str(dl_path), fold=0, patch_size=size, batch_size=2, samples_per_volume=2,
                           num_workers=0, cache="none", augmentation_device=augmentation_device,
                           empty_slice_ratio=0)  # 2D: tumour slices only
    seen: list[torch.Tensor] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(torch.as_tensor(batch["label"]).clone())

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[Record()], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 1 and data.output_mode == "softmax"  # the data follows the model
    label = seen[0]
    assert label.shape == (2, 1, *size) and set(label.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert label.max() >= 2  # classes, not 0/1 region channels, through the augmentation too
    metrics = trainer.callback_metrics
    for key in ("val/dice_TC", "val/dice_WT", "val/dice_ET", "val/dice_mean", "val/loss", "val/accuracy",
                "val/dice_label_NCR", "val/dice_label_ED", "val/dice_label_ET"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 <= float(metrics["val/accuracy"]) <= 1

    ckpt = tmp_path / "softmax.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["output_mode"] == "softmax" and saved["network"]["out_channels"] == 4
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", read_threads=1)
    assert predictor.output_mode == "softmax" and predictor.describe()["output_mode"] == "softmax"
    entry = datalist["training"][0]
    case = {"case_id": entry["case_id"], "image": entry["image"]}
    probs = predictor.predict_case(case, return_probabilities=True).probabilities
    assert probs.shape[0] == 4 and np.allclose(probs.sum(0), 1, atol=1e-4)
    run_batch(predictor, [case], tmp_path / "pred", progress=False)
    written = nib.load(tmp_path / "pred" / f"{entry['case_id']}.nii.gz")
    source = nib.load(entry["image"][0])
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_a_checkpoints_mode_must_fit_its_network(make_tiny_checkpoint, tmp_path: Path) -> None:
    from brats_pipeline.inference import Predictor

    ckpt = make_tiny_checkpoint(tmp_path / "sigmoid.ckpt")  # no "network" record: rebuilt from hparams
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved["hyper_parameters"]["output_mode"] = "softmax"
    saved["network"] = {"name": "unet3d", "in_channels": 4, "out_channels": 3, "spatial_dims": 3,
                        "kwargs": {"features": [4, 4, 8, 8, 16, 4]}}
    torch.save(saved, tmp_path / "mixed.ckpt")
    with pytest.raises(ValueError, match=r"mixed.ckpt: its network outputs 3 channels, but output_mode 'softmax' of "
                                         r"task brats2021 needs 4 \(classes \('background', 'NCR', 'ED', 'ET'\)\)"):
        Predictor.from_checkpoint(tmp_path / "mixed.ckpt", device="cpu")
    with pytest.raises(ValueError, match="threshold 0.3 is for region probabilities"):
        Predictor(torch.nn.Conv3d(4, 4, 1), "brats2021", output_mode="softmax", postprocess={"threshold": 0.3})


# -------------------------------------------------------------------------------- bundle
def _output_mode_argument(target: object) -> str | None:
    """The argument by which a ``brats_pipeline`` component (``_target_``) takes the output mode, if any:
    ``output_mode``, or a ``mode`` that defaults to ``sigmoid`` (``build_loss``)."""
    import importlib
    import inspect

    if not isinstance(target, str) or not target.startswith("brats_pipeline."):
        return None
    module, _, name = target.rpartition(".")
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    if "output_mode" in params:
        return "output_mode"
    return "mode" if "mode" in params and params["mode"].default == "sigmoid" else None


def _to_softmax(config: object) -> None:
    """In place: every component taking the output mode reads ``@output_mode``; region targets become classes."""
    if isinstance(config, dict):
        if config.get("_target_") == "brats_pipeline.data.transforms.LabelsToRegionsd":
            config["_target_"] = "brats_pipeline.data.transforms.LabelsToClassesd"
        if argument := _output_mode_argument(config.get("_target_")):
            config[argument] = "@output_mode"
        config = list(config.values())
    for item in config if isinstance(config, list) else []:
        _to_softmax(item)


def softmax_bundle(source: Path, dest: Path) -> Path:
    """What a user does for a softmax (one channel per class) model: copy a brats2021 bundle and edit its JSON.

    A top-level ``output_mode`` id that the module, loss and evaluator read, one output channel per
    class, the inference post-processing softmax -> argmax -> label values, and ``metadata.json``'s
    output described as ``labels`` with one channel per class.
    """
    task = get_task("brats2021")
    bundle = dest / "brats_unet3d_softmax"
    shutil.copytree(source, bundle)
    for name in ("train.json", "inference.json"):
        path = bundle / "configs" / name
        config = json.loads(path.read_text(encoding="utf-8"))
        config["output_mode"] = "softmax"
        _to_softmax(config)
        if "out_channels" in config["network_def"]:  # where the network is defined (inference.json may build train.json's)
            config["network_def"]["out_channels"] = task.n_classes
        if "postprocessing" in config:  # probabilities inverted to the input's grid, then argmax, then label values
            steps = config["postprocessing"]["transforms"]
            invert = next(step for step in steps if step["_target_"] == "Invertd")
            config["postprocessing"]["transforms"] = [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True}, invert,
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "brats_pipeline.bundle.ClassesToLabelsd", "keys": "pred", "task": "@task"}]
        path.write_text(json.dumps(config, indent=4), encoding="utf-8")
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    pred = meta["network_data_format"]["outputs"]["pred"]
    del pred["regions"]
    classes = list(zip(task.class_names, task.label_values))
    pred.update(format="labels", num_channels=task.n_classes,
                classes={str(i): {"name": name, "label": value} for i, (name, value) in enumerate(classes)})
    meta["pred_classes"] = ", ".join(f"channel {i}: {name} = label {value}" for i, (name, value) in enumerate(classes))
    meta["description"] = meta["description"].split("; output:")[0] + (
        f"; output: {task.n_classes} class channels ({', '.join(task.class_names)}; softmax), whose argmax gives "
        f"the {task.name} labels {list(task.label_values)}.")
    path.write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return bundle


def test_softmax_bundle_runs_monai_bundle_inference(brats_cohort, make_tiny_bundle, tmp_path: Path) -> None:
    from monai.bundle import run

    import brats_pipeline.bundle as bb
    from brats_pipeline.inference import Predictor
    from brats_pipeline.networks import build_network

    shipped = Path(bb.__file__).resolve().parents[2] / "bundles" / "brats_unet3d_segmentation"
    assert "output_mode" not in json.loads((shipped / "configs" / "inference.json").read_text())  # sigmoid
    bundle = softmax_bundle(make_tiny_bundle(tmp_path / "tiny", weights=False), tmp_path / "bundles")
    module = bb.bundle_parser(bundle, "train.json").get_parsed_content("train#module")
    assert module.hparams.output_mode == "softmax"
    torch.manual_seed(0)
    torch.save(build_network("unet3d", 4, 4, spatial_dims=3, **TINY).state_dict(), bundle / "models" / "model.pt")
    checks = bb.verify_bundle(bundle, schema=shipped / bb.SCHEMA_FILE, require_weights=True)  # 4 class channels
    assert not [c for c in checks if c.status != "PASS"], checks
    assert Predictor.from_bundle(bundle, device="cpu").output_mode == "softmax"
    _, datalist = brats_cohort(tmp_path / "cohort", n=1)
    run(config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
        dataset_dir=str(tmp_path / "cohort" / "data"), output_dir=str(tmp_path / "out"), device="cpu")
    entry = datalist["training"][0]
    written = nib.load(tmp_path / "out" / f"{entry['case_id']}_seg.nii.gz")
    source = nib.load(entry["image"][0])
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_export_refuses_a_softmax_checkpoint_for_a_sigmoid_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    import brats_pipeline.bundle as bb
    from brats_pipeline.module import BratsSegmentationModule

    module = BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 16, 32, 4]}, task="brats2021", output_mode="softmax")
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "sm.ckpt")
    with pytest.raises(ValueError, match="sm.ckpt: trained with output_mode 'softmax', the bundle "
                                         "brats_unet3d_segmentation is 'sigmoid'"):
        bb.export_checkpoint(tmp_path / "sm.ckpt", tiny_bundle)
