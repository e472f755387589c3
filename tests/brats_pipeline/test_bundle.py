"""Bundles: the committed files agree with each other, metadata and ids follow MONAI, strict weights, parts of the configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import brats_pipeline.bundle as bb
from brats_pipeline.cli.bundle import main as bundle_main
from brats_pipeline.constants import get_task
from brats_pipeline.data.datalist import build_datalist, write_datalist
from brats_pipeline.data.synthetic import write_cohort

REPO = Path(__file__).resolve().parents[2]
#: Every bundle of ``bundles/``: the folders holding ``configs/metadata.json``.
BUNDLE_DIRS = sorted(p.parents[1] for p in (REPO / "bundles").glob("*/configs/metadata.json"))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


# ---------------------------------------------------------------- hand-written bundles
def test_every_bundle_folder_is_a_bundle() -> None:
    folders = sorted(p for p in (REPO / "bundles").iterdir() if p.is_dir())
    assert folders == BUNDLE_DIRS and len(BUNDLE_DIRS) == 4
    with pytest.raises(SystemExit):  # the files are the source: no generator to run
        bundle_main(["generate", "--check"])


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_committed_bundle_is_consistent_with_itself(bundle: Path) -> None:
    """Task, network and metadata channels, version and changelog agree; every config file is JSON."""
    from brats_pipeline.networks import input_channels_of, network_config

    configs = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((bundle / "configs").glob("*.json"))}
    assert {"metadata.json", "train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"} <= set(configs)
    meta, train, inference = configs["metadata.json"], configs["train.json"], configs["inference.json"]
    assert train["task"] == inference["task"]
    task = get_task(inference["task"])
    network = bb.bundle_parser(bundle, "inference.json").get_parsed_content("network_def")
    built = network_config(network)
    assert built is not None and input_channels_of(network) == built["in_channels"]
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == len(image["channel_def"]) == built["in_channels"]
    assert pred["num_channels"] == built["out_channels"]
    assert len(image["spatial_shape"]) == built["spatial_dims"]
    assert {int(k) for k in pred["channel_def"]} == set(task.label_values)  # MONAI Label's label list
    newest = max(meta["changelog"], key=_version)
    assert meta["version"] == newest == next(iter(meta["changelog"]))  # newest first, as the model zoo writes it
    assert meta["schema"] == bb.SCHEMA_URL and (bundle / bb.SCHEMA_FILE).is_file()


def test_metrics_table_of_the_readme_is_written_between_its_markers(tmp_path: Path) -> None:
    from brats_pipeline.bundle.tools import METRICS_BEGIN, METRICS_END, _write_metrics_table

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Measured metrics\n{METRICS_BEGIN}\n\nNot measured yet.\n\n{METRICS_END}\n\nHand text.\n")
    assert _write_metrics_table(readme, {"val_mean_dice": 0.81, "epoch": 3})
    text = readme.read_text()
    assert "Not measured yet" not in text and text.endswith(f"{METRICS_END}\n\nHand text.\n")
    assert f"{METRICS_BEGIN}\n\n| metric | value |\n| --- | --- |\n| val_mean_dice | 0.8100 |\n| epoch | 3 |\n\n" in text
    plain = tmp_path / "plain.md"
    plain.write_text("# y\n\n## Measured metrics\nby hand\n")
    assert not _write_metrics_table(plain, {"epoch": 3}) and plain.read_text() == "# y\n\n## Measured metrics\nby hand\n"


# ---------------------------------------------------------------------- MONAI checks
@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_metadata_verifies_offline(bundle: Path) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(bundle / bb.SCHEMA_FILE))


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_configs_have_monai_ids_and_the_network_fits_the_metadata(bundle: Path) -> None:
    from monai.bundle import verify_net_in_out

    assert bb.config_property_problems(bundle / "configs" / "train.json", "train") == ([], [])
    assert bb.config_property_problems(bundle / "configs" / "inference.json", "infer") == ([], [])
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), device="cpu", bundle_root=str(bundle))
    from brats_pipeline.networks import network_config

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    network = network_config(bb.bundle_parser(bundle).get_parsed_content("network_def"))
    task = get_task(inference["task"])
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    context = inference.get("context", 0)  # 2.5D: each modality at slices z-k .. z+k, modality-major
    slices = {0: [""], 1: [" z-1", " z", " z+1"]}[context]
    assert image["channel_def"] == {str(i): name for i, name in enumerate(m + s for m in task.modality_names for s in slices)}
    assert image["num_channels"] == network["in_channels"] == len(image["channel_def"])
    assert len(image["spatial_shape"]) == network["spatial_dims"]
    assert pred["num_channels"] == len(task.regions)
    assert [r["name"] for r in pred["regions"].values()] == list(task.region_names)
    assert {int(k) for k in pred["channel_def"]} == set(task.label_values)  # MONAI Label's label list


def test_property_check_names_missing_and_wrong_ids(tmp_path: Path) -> None:
    cfg = json.loads((BUNDLE_DIRS[0] / "configs" / "train.json").read_text())
    del cfg["train"]["inferer"]
    cfg["train"]["dataset"]["transform"] = "@not_train_preprocessing"
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    assert bb.config_property_problems(tmp_path / "train.json", "train") == (["train_inferer"], ["train_preprocessing"])


def test_verify_without_weights_skips_the_weight_checks(capsys: pytest.CaptureFixture) -> None:
    bundle = REPO / "bundles" / "brats_attention_unet_segmentation"  # ships no weights
    assert not (bundle / "models" / "model.pt").exists()
    schema = bundle / "docs" / "meta_schema_20240725.json"  # the bundle's own copy: offline
    assert bundle_main(["verify", str(bundle), "--schema", str(schema)]) == 0
    out = capsys.readouterr().out
    assert "PASS verify_metadata" in out and "SKIP strict weights" in out and "0 failed" in out
    assert bundle_main(["verify", str(bundle), "--schema", str(schema), "--require-weights"]) == 1


# ------------------------------------------------------------------- strict weights
@pytest.fixture(scope="module")
def lgg_network() -> torch.nn.Module:
    return bb.bundle_parser(REPO / "bundles" / "lgg_flair_segmentation").get_parsed_content("network_def")


def test_load_network_is_strict(lgg_network: torch.nn.Module, tmp_path: Path) -> None:
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in lgg_network.state_dict().items()}
    good = bb.save_state_dict(state, tmp_path / "good.pt")
    loaded = bb.load_network(lgg_network, good)
    last = list(state)[-1]
    assert not loaded.training and torch.equal(loaded.state_dict()[last], state[last])
    torch.save({f"network.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pt")
    with pytest.raises(ValueError, match="prefixed.pt: weights do not match the network: .* missing keys"):
        bb.load_network(lgg_network, tmp_path / "prefixed.pt")
    torch.save({"state_dict": {f"network.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "lightning.pt")
    with pytest.raises(ValueError, match="not a plain network state_dict"):
        bb.load_network(lgg_network, tmp_path / "lightning.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt: no weights"):
        bb.load_network(lgg_network, tmp_path / "absent.pt")


def _lightning_checkpoint(network: torch.nn.Module, path: Path, task: str, fold: int = 0) -> Path:
    state = {f"network.{k}": v for k, v in network.state_dict().items()}
    callbacks = {"ModelCheckpoint{'monitor': 'val/dice_mean'}": {"monitor": "val/dice_mean", "best_model_score": torch.tensor(0.75)}}
    torch.save({"state_dict": state, "epoch": 7, "global_step": 560, "hyper_parameters": {"task": task},
                "datamodule_hyper_parameters": {"fold": fold}, "callbacks": callbacks}, path)
    return path


def _bundle_copy(tmp_path: Path, eval_metrics: dict) -> Path:
    """A copy of the LGG bundle without weights, with these ``eval_metrics``."""
    bundle = tmp_path / "lgg_flair_segmentation"
    shutil.copytree(REPO / "bundles" / "lgg_flair_segmentation", bundle, ignore=shutil.ignore_patterns("model.pt"))
    meta_path = bundle / "configs" / "metadata.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "eval_metrics": eval_metrics}))
    return bundle


def test_export_writes_plain_weights_and_metrics(lgg_network: torch.nn.Module, tmp_path: Path) -> None:
    """Checkpoint figures replace an earlier export's; others (cross-validation) are kept; the README's table follows."""
    from brats_pipeline.bundle.tools import METRICS_BEGIN, METRICS_END

    bundle = _bundle_copy(tmp_path, {"cv_mean_dice": 0.81, "val_mean_dice": 0.2, "best_val_dice_mean": 0.3})
    ckpt = _lightning_checkpoint(lgg_network, tmp_path / "best.ckpt", "lgg")
    assert bundle_main(["export", "--checkpoint", str(ckpt), "--bundle", str(bundle)]) == 0
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state.keys() == lgg_network.state_dict().keys()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {"cv_mean_dice": 0.81, "best_val_dice_mean": 0.75, "epoch": 7, "global_step": 560}
    readme = (bundle / "docs" / "README.md").read_text()
    assert "| best_val_dice_mean | 0.7500 |" in readme and "| cv_mean_dice | 0.8100 |" in readme
    shipped = (REPO / "bundles" / "lgg_flair_segmentation" / "docs" / "README.md").read_text()
    outside = lambda text: (text.split(METRICS_BEGIN)[0], text.split(METRICS_END)[1])  # noqa: E731
    assert outside(readme) == outside(shipped)  # the hand-written rest of the README is left alone


def test_export_of_a_run_on_every_fold_records_no_validation_score(lgg_network: torch.nn.Module, tmp_path: Path) -> None:
    """``--data.fold -1`` validates on training cases: that score is no evaluation and is left out."""
    bundle = _bundle_copy(tmp_path, {})
    metrics = bb.export_checkpoint(_lightning_checkpoint(lgg_network, tmp_path / "all.ckpt", "lgg", fold=-1), bundle)
    assert metrics == {"epoch": 7, "global_step": 560}


def test_export_rejects_other_architectures_and_tasks(tmp_path: Path) -> None:
    from brats_pipeline.networks import build_network

    bundle = _bundle_copy(tmp_path, {})
    small = build_network("unet3d", 3, 1, features=[4, 4, 8, 16, 32, 4])
    ckpt = _lightning_checkpoint(small, tmp_path / "small.ckpt", "lgg")
    with pytest.raises(ValueError, match="small.ckpt: weights do not fit the network_def"):
        bb.export_checkpoint(ckpt, bundle)
    net_def = json.loads((bundle / "configs" / "train.json").read_text())["network_def"]
    options = {k: v for k, v in net_def.items() if k not in ("_target_", "name", "in_channels", "out_channels")}
    plain_2d = build_network(net_def["name"], 3, 1, **options)  # the same network for 2D slices, not 2.5D slabs
    plain_2d = _lightning_checkpoint(plain_2d, tmp_path / "2d.ckpt", "lgg")
    with pytest.raises(ValueError, match="2d.ckpt: weights do not fit the network_def") as excinfo:
        bb.export_checkpoint(plain_2d, bundle)
    assert "size mismatch" in str(excinfo.value) and "torch.Size([16, 3, 3, 3])" in str(excinfo.value)
    other = _lightning_checkpoint(small, tmp_path / "brats.ckpt", "brats2021")
    with pytest.raises(ValueError, match="trained for task 'brats2021'"):
        bb.export_checkpoint(other, bundle)
    assert not (bundle / "models" / "model.pt").exists()
    torch.save({"epoch": 1}, tmp_path / "notlightning.ckpt")
    assert bundle_main(["export", "--checkpoint", str(tmp_path / "notlightning.ckpt"), "--bundle", str(bundle)]) == 1


# ------------------------------------------------------------------ config components
def test_regions_to_labels_restores_the_task_labels() -> None:
    from monai.data import MetaTensor

    task = get_task("brats2021")
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[1:5, 1:4, 1:3], label[2:4, 2:3, 1:3], label[2, 2, 1] = 2, 1, 4
    regions = MetaTensor(task.labels_to_regions(label).astype(np.float32), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    out = bb.RegionsToLabelsd("pred", "brats2021")({"pred": regions})["pred"]
    assert out.shape == (1, 6, 5, 4) and out.dtype == torch.uint8 and torch.equal(out.affine, regions.affine)
    assert np.array_equal(out[0].numpy(), label)
    with pytest.raises(ValueError, match=r"expected 3 region channels \('TC', 'WT', 'ET'\)"):
        bb.RegionsToLabelsd("pred", "brats2021")({"pred": torch.zeros(1, 6, 5, 4)})


def test_device_mapping_for_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    import brats_pipeline.devices as devices

    assert (bb.accelerator_of("cpu"), bb.devices_of("cpu")) == ("cpu", 1)
    assert (bb.accelerator_of(torch.device("cuda:1")), bb.devices_of("cuda:1")) == ("gpu", [1])
    assert (bb.precision_of("cuda"), bb.precision_of("cuda", amp=False)) == ("bf16-mixed", "32-true")
    # the project's precision rule: bf16 on a CPU only where it has native bf16 (else 25-35x slower)
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert bb.precision_of("cpu") == "32-true"
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert (bb.precision_of("cpu"), bb.precision_of("cpu", amp=False)) == ("bf16-mixed", "32-true")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert bb.ddp_devices() == "auto"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert bb.ddp_devices() == 2
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        bb.accelerator_of("gpu0")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle_unit") / "data"
    write_cohort(root, "brats2021", n_cases=3, n_unlabelled=1, shape=(40, 40, 32), seed=2)
    return root


def test_inference_cases_from_folders_and_datalists(cohort: Path, tmp_path: Path) -> None:
    cases = bb.inference_cases(cohort, task="brats2021")
    assert [c["case_id"] for c in cases] == [f"BraTS2021_{i:05d}" for i in range(4)]
    assert len(cases[0]["image"]) == 4 and "label" not in cases[3]
    assert len(bb.inference_cases(cohort, task="brats2021", labelled=True)) == 3
    datalist = write_datalist(build_datalist(cohort, "brats2021", folds=3, seed=0), tmp_path / "dl.json")
    assert len(bb.inference_cases(datalist=datalist, task="brats2021")) == 4  # training + testing
    assert len(bb.inference_cases(datalist=datalist, task="brats2021", fold=0)) == 1
    stacked = tmp_path / "stacked"
    bb.stack_modalities(cases[0]["image"], stacked / "one.nii.gz")
    assert bb.inference_cases(stacked, task="brats2021") == [{"case_id": "one", "image": str(stacked / "one.nii.gz")}]
    with pytest.raises(ValueError, match="datalist of task 'brats2021', but the bundle is for 'lgg'"):
        bb.inference_cases(datalist=datalist, task="lgg")
    with pytest.raises(ValueError, match="no labelled cases found"):
        bb.inference_cases(stacked, task="brats2021", labelled=True)
    with pytest.raises(FileNotFoundError, match="input folder '/nonexistent' not found"):
        bb.inference_cases("/nonexistent", task="brats2021")
    with pytest.raises(ValueError, match="fold=1 needs a datalist"):
        bb.inference_cases(stacked, task="brats2021", fold=1)


def test_stack_writes_modalities_on_the_last_axis(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    case = cohort / "BraTS2021_00000"
    out = tmp_path / "case.nii.gz"
    assert bundle_main(["stack", "--case-dir", str(case), "--task", "brats2021", "-o", str(out)]) == 0
    assert "4 modalities stacked (BraTS2021_00000_t1ce.nii.gz, BraTS2021_00000_t1.nii.gz" in capsys.readouterr().out
    stacked = nib.load(out)
    t2 = nib.load(case / "BraTS2021_00000_t2.nii.gz")
    assert stacked.shape == (*t2.shape, 4) and np.allclose(stacked.affine, t2.affine)
    assert np.allclose(np.asarray(stacked.dataobj)[..., 2], np.asarray(t2.dataobj))
    files = bb.case_modality_files(case, "brats2021")
    with pytest.raises(ValueError, match="task brats2021 needs 4 files"):
        bb.stack_modalities(files[:3], tmp_path / "x.nii.gz", task="brats2021")
    moved = tmp_path / "moved.nii.gz"
    img = nib.load(files[1])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([1, 1, 2, 1.0])), moved)
    with pytest.raises(ValueError, match="moved.nii.gz: grid .* differs from"):
        bb.stack_modalities([files[0], moved], tmp_path / "x.nii.gz")
    assert bundle_main(["stack", str(files[0]), "--case-dir", str(case), "-o", str(out)]) == 1


def test_preprocessing_rejects_an_image_with_the_wrong_channels(cohort: Path) -> None:
    transform = bb.inference_preprocessing("brats2021")
    t1 = str(cohort / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz")
    with pytest.raises(RuntimeError) as excinfo:
        transform({"image": t1})
    assert "BraTS2021_00000_t1.nii.gz: expected 4 channels (t1c, t1, t2, flair)" in str(bb.root_cause(excinfo.value))
    out = transform({"image": bb.case_modality_files(cohort / "BraTS2021_00000", "brats2021")})
    assert out["image"].shape[0] == 4 and out["image"].applied_operations  # invertible steps recorded


def test_input_errors_become_http_422_only_inside_monai_label(cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MONAI Label runs the preprocessing steps one by one and turns any exception into a bare HTTP 500; inside its
    server (``monailabel`` and Starlette imported) a check's error is a Starlette ``HTTPException`` 422 whose
    ``detail`` is the message, and still a ``ValueError``; elsewhere the check's own error passes unchanged."""
    import sys
    import types

    from brats_pipeline.bundle.input_checks import InputError, ReportInputErrors
    from preprocessing.io import ImageFileError

    transform = bb.inference_preprocessing("brats2021")
    t1 = str(cohort / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz")

    def run_steps_as_monai_label_does() -> None:
        data = {"image": t1}
        for step in transform.transforms:  # monailabel.interfaces.utils.transform.run_transforms(use_compose=False)
            data = step(data)

    assert any(isinstance(t, ReportInputErrors) for t in transform.transforms)
    with pytest.raises(ImageFileError, match="expected 4 channels"):  # monai.bundle run, brats-infer: unchanged
        run_steps_as_monai_label_does()

    class HTTPException(Exception):  # the interface of starlette.exceptions.HTTPException
        def __init__(self, status_code: int, detail: str | None = None, headers: dict | None = None) -> None:
            self.status_code, self.detail, self.headers = status_code, detail, headers

    starlette = types.ModuleType("starlette.exceptions")
    starlette.HTTPException = HTTPException  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "starlette.exceptions", starlette)
    monkeypatch.setitem(sys.modules, "monailabel", types.ModuleType("monailabel"))
    with pytest.raises(HTTPException) as excinfo:
        run_steps_as_monai_label_does()
    error = excinfo.value
    assert error.status_code == 422 and isinstance(error, InputError) and isinstance(error, ValueError)
    assert error.detail == str(error) and f"{t1}: expected 4 channels (t1c, t1, t2, flair)" in error.detail
    assert isinstance(error.__cause__, ImageFileError)


def test_split_cases_reads_one_side_of_the_fold(cohort: Path, tmp_path: Path) -> None:
    train = bb.split_cases(dataset_dir=str(cohort), datalist=str(cohort / "datalist.json"), task="brats2021",
                           fold=0, part="train", output_dir=str(tmp_path))
    assert len(train) == 2 and (tmp_path / "datalist.json").is_file()  # discovered, folds recorded
    validate = bb.split_cases(dataset_dir=str(cohort), fold=0, part="validate", output_dir=str(tmp_path))
    assert {e["case_id"] for e in train}.isdisjoint({e["case_id"] for e in validate}) and len(validate) == 1
    assert len(bb.split_cases(dataset_dir=str(cohort), fold=-1, part="train", output_dir=str(tmp_path))) == 3
    with pytest.raises(FileNotFoundError, match="dataset folder '/nonexistent' not found"):
        bb.split_cases(dataset_dir="/nonexistent")
    with pytest.raises(ValueError, match="unknown part 'test'"):
        bb.split_cases(dataset_dir=str(cohort), part="test")


def _preprocessing() -> Any:
    from monai.transforms import Compose

    from brats_pipeline.data.transforms import deterministic_transforms

    return Compose(deterministic_transforms("brats2021", orientation=None).transforms)


def test_bundle_datamodule_validates_on_the_training_cases_when_none_are_given(cohort: Path, tmp_path: Path) -> None:
    """MONAI Label's ``val_split`` 0: validation reuses the training case, under its own id, with the validation transform."""
    from monai.data import Dataset

    case = cohort / "BraTS2021_00000"
    explicit = [{"image": bb.case_modality_files(case, "brats2021"), "label": str(case / "BraTS2021_00000_seg.nii.gz")}]
    transform = _preprocessing()
    dm = bb.bundle_datamodule(Dataset(explicit, transform), Dataset([], transform), "brats2021", tmp_path / "split.json",
                              batch_size=1, num_workers=0)
    split = json.loads((tmp_path / "split.json").read_text())
    assert [(e["case_id"], e["fold"]) for e in split["training"]] == [("BraTS2021_00000", 0), ("BraTS2021_00000+val", 1)]
    assert [e["image"] for e in split["training"]] == [explicit[0]["image"]] * 2
    assert len(dm.datalist["training"]) == 2
    dm.setup("validate")
    assert list(dm.val_ds.data) == explicit and dm.val_ds.transform is transform
    with pytest.raises(ValueError, match="has no 'label'"):
        bb.bundle_datamodule(Dataset([{"image": "/x/a.nii.gz"}], transform), Dataset([], transform), "brats2021",
                             tmp_path / "split2.json")
