"""Modality subsets (issue #17): train and infer on some of a task's modalities (``data.modalities``).

Tiny brats2021 phantoms (32³); the subset is the T2/T1ce/FLAIR setup of the README (channels in the
task's order: t1c, t2, flair). The unused T1 files are deleted before inference: the predictor must
not need them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_pipeline.constants import get_task
from brats_pipeline.data.modalities import (
    channel_indices,
    is_subset,
    select_case,
    select_datalist,
    select_modalities,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUBSET = ["t2", "t1ce", "flair"]  # as a user writes it: any order, an alias (t1ce) allowed
READ = ("t1c", "t2", "flair")  # what is read: the task's names, in its channel order


# ------------------------------------------------------------------------------------ names
def test_names_and_aliases_resolve_to_the_task_order() -> None:
    task = select_modalities("brats2021", SUBSET)
    assert task.modality_names == READ and is_subset(task) and channel_indices(task) == (0, 2, 3)
    assert task.name == "brats2021" and task.regions == get_task("brats2021").regions
    assert select_modalities("brats2023", ["T2", "flair"]).modality_names == ("t2w", "t2f")  # contrasts as aliases
    assert select_modalities("brats2021", ["flair", "t2", "t1", "t1c"]) is get_task("brats2021")  # all: the task
    assert select_modalities("lgg", None) is get_task("lgg")


@pytest.mark.parametrize(("names", "message"), [
    (["t2", "dwi"], r"modalities: unknown modality 'dwi' for task brats2021; its modalities are t1c \(also t1ce/t1gd\)"),
    (["t1c", "t1ce"], "modality t1c is named twice"),
    ([], "empty"),
    ("t2", "expected a list of modality names"),
])
def test_a_bad_modality_list_is_a_clear_error(names: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_modalities("brats2021", names)


def test_unknown_modality_in_the_data_module_and_the_module_names_the_option(brats_cohort, tmp_path: Path) -> None:
    from brats_pipeline.data.datamodule import BratsDataModule
    from brats_pipeline.module import BratsSegmentationModule

    path, _ = brats_cohort(tmp_path)
    with pytest.raises(ValueError, match=r"dl.json: data.modalities: unknown modality 't2w2'"):
        BratsDataModule(str(path), modalities=["t2w2", "flair"], num_workers=0)
    with pytest.raises(ValueError, match=r"model.modalities: unknown modality 'pd' for task lgg"):
        BratsSegmentationModule("unet3d", task="lgg", modalities=["pd"])
    with pytest.raises(ValueError, match=r"in_channels=4, but modalities \['t1c', 't2', 'flair'\] give 3"):
        BratsSegmentationModule("unet3d", task="brats2021", in_channels=4, modalities=SUBSET)


def test_select_case_keeps_the_used_files_and_names_a_missing_one(tmp_path: Path) -> None:
    task = select_modalities("brats2021", SUBSET)
    files = [tmp_path / f"c1_{m}.nii.gz" for m in ("t1ce", "t1", "t2", "flair")]
    for f in files:
        f.write_bytes(b"")
    files[1].unlink()  # the unused T1: absent, and not needed
    case = {"case_id": "c1", "image": [str(f) for f in files]}
    assert select_case(case, task)["image"] == [str(files[i]) for i in (0, 2, 3)]
    assert select_case({"image": case["image"][:1]}, task)["image"] == case["image"][:1]  # one (4D) file: kept
    files[2].unlink()  # the used T2
    with pytest.raises(FileNotFoundError, match=r"case c1: modality t2 is missing \(.*c1_t2.nii.gz not found\)"):
        select_case(case, task)
    with pytest.raises(ValueError, match=r"datalist: 1 case\(s\) lack a modality.*\n  case c1: modality t2 is missing"):
        select_datalist({"task": "brats2021", "training": [case]}, task)
    with pytest.raises(ValueError, match=r"case c1: 'image' lists 2 files; expected 4 \(t1c, t1, t2, flair\)"):
        select_case({**case, "image": case["image"][:2]}, task)


# ------------------------------------------------------------------------- 2D and 2.5D
@pytest.mark.parametrize("context", [0, 1])
def test_2d_and_25d_networks_take_subset_times_slices_channels(brats_cohort, tmp_path: Path, context: int) -> None:
    from brats_pipeline.data.datamodule import BratsDataModule
    from brats_pipeline.inference import Predictor
    from brats_pipeline.module import BratsSegmentationModule
    from brats_pipeline.networks import input_channels_of

    path, _ = brats_cohort(tmp_path)
    module = BratsSegmentationModule("unet2d", {"channels": [4, 8], "strides": [2]}, task="brats2021", modalities=SUBSET,
                                     context=context, roi_size=(32, 32))
    assert input_channels_of(module.network) == 3 * (2 * context + 1)
    assert module.hparams.modalities == list(READ) and module.hparams.in_channels == 3
    data = BratsDataModule(str(path), modalities=SUBSET, patch_size=(32, 32, 32), spatial_dims=2, context=context,
                           cache="none", num_workers=0)
    data.setup("fit")
    assert data.in_channels == 3 and data.modality_names == READ
    assert data.train_ds[0]["image"].shape[0] == 3 * (2 * context + 1)
    predictor = Predictor(module.network, "brats2021", modalities=SUBSET, roi_size=(32, 32), device="cpu")
    assert predictor.context == context and predictor.task.modality_names == READ


# ------------------------------------------------------------ train -> checkpoint -> infer
@pytest.fixture(scope="module")
def trained(brats_cohort, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One epoch of ``brats-train fit --data.modalities [t2,t1ce,flair]`` (tiny_cpu.yaml) on two phantoms; then T1 deleted."""
    from brats_pipeline.cli.train import CONFIG_DIR, build_cli

    root = tmp_path_factory.mktemp("subset")
    path, datalist = brats_cohort(root, n=3)
    cli = build_cli(["fit", "--config", str(CONFIG_DIR / "tiny_cpu.yaml"), "--data.datalist", str(path),
                     "--data.modalities", json.dumps(SUBSET), "--data.max_cases", "1",
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                     "--trainer.default_root_dir", str(root / "run"), "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    for entry in datalist["training"]:  # the unused modality is not needed from here on
        Path(entry["image"][1]).unlink()
    return {"cli": cli, "ckpt": ckpt, "datalist": path, "entries": datalist["training"], "data": root / "data"}


def test_a_subset_trains_with_a_real_trainer_and_the_checkpoint_records_it(trained: dict) -> None:
    from brats_pipeline.networks import input_channels_of

    cli = trained["cli"]
    assert cli.trainer.global_step == 1
    assert cli.datamodule.in_channels == 3 and cli.model.hparams.in_channels == 3  # linked, not set twice
    assert input_channels_of(cli.model.network) == 3
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["modalities"] == list(READ)
    assert ckpt["network"]["in_channels"] == 3
    from brats_pipeline.weights import checkpoint_settings

    assert checkpoint_settings(ckpt, "ckpt")["modalities"] == READ


def test_predictor_reads_only_the_used_modalities_into_the_input_geometry(trained: dict) -> None:
    from brats_pipeline.inference import Predictor

    predictor = Predictor.from_checkpoint(trained["ckpt"], device="cpu")
    assert predictor.task.modality_names == READ and predictor.describe()["modalities"] == list(READ)
    entry = trained["entries"][0]  # lists the deleted T1 file
    assert not Path(entry["image"][1]).exists()
    data = predictor.preprocess(entry)
    assert data["image"].shape[0] == 3
    result = predictor.predict_case(entry)
    ref = nib.load(entry["image"][0])
    assert result.label.shape == ref.shape and np.allclose(result.affine, ref.affine)
    assert set(np.unique(result.label).tolist()) <= {0, 1, 2, 4}


def test_predictor_normalises_the_selected_channels_of_a_4d_file(trained: dict, tmp_path: Path) -> None:
    """A 4D image of all four modalities (MSD style) gives the same network input as the three files."""
    from brats_pipeline.bundle import stack_modalities
    from brats_pipeline.data.transforms import deterministic_transforms
    from brats_pipeline.inference import Predictor

    entry = trained["entries"][1]
    files = list(entry["image"])
    shutil.copy(files[0], tmp_path / "t1.nii.gz")  # the deleted T1 replaced by any volume on the grid
    files[1] = str(tmp_path / "t1.nii.gz")
    stacked = stack_modalities(files, tmp_path / "case.nii.gz")
    predictor = Predictor.from_checkpoint(trained["ckpt"], device="cpu")
    from_files = predictor.preprocess(entry)["image"]
    from_4d = predictor.preprocess({"case_id": "c", "image": str(stacked)})["image"]
    assert from_4d.shape == from_files.shape and torch.allclose(from_4d, from_files)
    training = deterministic_transforms(predictor.task, with_label=False)({"image": str(stacked)})["image"]
    assert torch.allclose(torch.as_tensor(training), torch.as_tensor(from_files))


def test_brats_infer_predicts_cases_without_the_unused_modality(trained: dict, tmp_path: Path) -> None:
    from brats_pipeline.cli.infer import main as infer_main

    args = ["--checkpoint", str(trained["ckpt"]), "--device", "cpu", "--no-progress"]
    for source, out in ((trained["datalist"], tmp_path / "from_datalist"), (trained["data"], tmp_path / "from_folder")):
        assert infer_main(["-i", str(source), "-o", str(out), *args]) == 0
        for entry in trained["entries"]:
            written = nib.load(out / f"{entry['case_id']}.nii.gz")
            ref = nib.load(entry["image"][0])
            assert written.shape == ref.shape and np.allclose(written.affine, ref.affine)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["settings"]["modalities"] == list(READ)
        assert all(len(row["inputs"]) == 3 for row in manifest["cases"])
    # plain weights: --modalities says what they read; a checkpoint records its own
    from brats_pipeline.weights import network_state_dict

    weights = tmp_path / "model.pt"
    torch.save(network_state_dict(torch.load(trained["ckpt"], map_location="cpu", weights_only=False)), weights)
    kwargs = json.dumps({"features": [8, 8, 16, 32, 64, 8]})  # tiny_cpu.yaml's
    assert infer_main(["-i", str(trained["datalist"]), "-o", str(tmp_path / "w"), "--weights", str(weights),
                       "--network-kwargs", kwargs, "--task", "brats2021", "--modalities", *SUBSET, "--device", "cpu",
                       "--roi", "32", "32", "32", "--no-progress"]) == 0
    assert infer_main(["-i", str(trained["datalist"]), "-o", str(tmp_path / "x"), *args, "--modalities", "t2"]) == 2


def test_a_case_lacking_a_used_modality_fails_by_name(trained: dict, tmp_path: Path) -> None:
    from brats_pipeline.cli.infer import main as infer_main

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    bad = trained["entries"][0]["case_id"]
    (data / bad / f"{bad}_flair.nii.gz").unlink()
    out = tmp_path / "out"
    assert infer_main(["-i", str(data), "-o", str(out), "--checkpoint", str(trained["ckpt"]), "--device", "cpu",
                       "--no-progress"]) == 1
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}
    assert rows[bad]["status"] == "failed" and "missing modality flair" in rows[bad]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == len(rows) - 1
    # a datalist entry listing a used file that is gone (and the unused T1, gone too): the case and modality are named
    from brats_pipeline.inference import Predictor

    def moved(file: str) -> str:
        return str(data / Path(file).parent.name / Path(file).name)

    entries = [{**e, "image": [moved(f) for f in e["image"]], "label": moved(e["label"])} for e in trained["entries"]]
    (tmp_path / "dl.json").write_text(json.dumps({"task": "brats2021", "training": entries}))
    with pytest.raises(FileNotFoundError, match=rf"case {bad}: modality flair is missing"):
        Predictor.from_checkpoint(trained["ckpt"], device="cpu").preprocess(entries[0])
    assert infer_main(["-i", str(tmp_path / "dl.json"), "-o", str(tmp_path / "out2"), "--checkpoint",
                       str(trained["ckpt"]), "--device", "cpu", "--no-progress"]) == 1
    rows = {r["case_id"]: r for r in json.loads((tmp_path / "out2" / "manifest.json").read_text())["cases"]}
    assert f"case {bad}: modality flair is missing" in rows[bad]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == len(rows) - 1


def test_a_datalist_built_for_a_subset_trains_on_it_by_default(trained: dict, tmp_path: Path) -> None:
    """``brats-datalist --modalities``: cases without T1 are listed, and the data module reads the subset."""
    from brats_pipeline.cli.datalist import main as datalist_main
    from brats_pipeline.data.datamodule import BratsDataModule

    path = tmp_path / "dl.json"
    assert datalist_main([str(trained["data"]), "--task", "brats2021", "--modalities", *SUBSET, "-o", str(path),
                          "--folds", "3", "--check", "header"]) == 0
    written = json.loads(path.read_text())
    assert written["modality"] == {"0": "t1c", "1": "t2", "2": "flair"} and written["numTraining"] == 3
    assert all(len(e["image"]) == 3 for e in written["training"])
    data = BratsDataModule(str(path), num_workers=0)
    assert data.modality_names == READ and data.in_channels == 3
    from brats_pipeline.data.modalities import check_model_modalities
    from brats_pipeline.module import BratsSegmentationModule

    with pytest.raises(ValueError, match=r"reads modalities \['t1c', 't2', 'flair'\], but the model reads "
                                         r"\['t1c', 't1', 't2', 'flair'\]"):
        check_model_modalities(data.modality_names, BratsSegmentationModule("unet3d", task="brats2021"), str(path))


# --------------------------------------------------------------------------------- bundles
def _accepts(target: object, argument: str) -> bool:
    """A ``brats_pipeline`` component (``_target_``) that takes ``argument``."""
    import importlib
    import inspect

    if not isinstance(target, str) or not target.startswith("brats_pipeline."):
        return False
    module, _, name = target.rpartition(".")
    return argument in inspect.signature(getattr(importlib.import_module(module), name)).parameters


def _refer_to(config: object, argument: str) -> None:
    """``"<argument>": "@<argument>"`` in every component of ``config`` that takes it (in place)."""
    if isinstance(config, dict):
        if _accepts(config.get("_target_"), argument):
            config[argument] = f"@{argument}"
        config = list(config.values())
    for item in config if isinstance(config, list) else []:
        _refer_to(item, argument)


def subset_bundle(source: Path, dest: Path) -> Path:
    """What a user does for a T2/T1ce/FLAIR model: copy a brats2021 bundle and edit its JSON.

    A top-level ``modalities`` id (as a user writes it: :data:`SUBSET`) that every part loading
    files or building the input reads (``"modalities": "@modalities"``), and 3 input channels in
    ``network_def`` and in ``metadata.json`` (in the task's order: :data:`READ`).
    """
    bundle = dest / "brats_t2_t1c_flair"
    shutil.copytree(source, bundle)
    for name in ("train.json", "inference.json"):
        path = bundle / "configs" / name
        config = json.loads(path.read_text(encoding="utf-8"))
        config["modalities"] = SUBSET
        _refer_to(config, "modalities")
        if name == "train.json":  # the data module takes it through its **kwargs
            config["train"]["datamodule"]["modalities"] = "@modalities"
        if "in_channels" in config["network_def"]:  # where the network is defined (inference.json may build train.json's)
            config["network_def"]["in_channels"] = len(READ)
        path.write_text(json.dumps(config, indent=4), encoding="utf-8")
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["network_data_format"]["inputs"]["image"].update(num_channels=3, channel_def=dict(enumerate(READ)))
    meta["image_classes"] = "channel 0: T1c (T1 post-contrast), channel 1: T2, channel 2: FLAIR"
    meta["description"] = meta["description"].replace("4 co-registered MRI sequences (t1c, t1, t2, flair)",
                                                      "3 co-registered MRI sequences (t1c, t2, flair)")
    path.write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return bundle


def test_a_bundle_for_a_subset_loads_and_describes_three_channels(trained: dict, make_tiny_bundle, tmp_path: Path) -> None:
    import brats_pipeline.bundle as bb
    from brats_pipeline.inference import Predictor
    from brats_pipeline.networks import build_network, input_channels_of

    shipped = Path(bb.__file__).resolve().parents[2] / "bundles" / "brats_unet3d_segmentation"
    assert "modalities" not in json.loads((shipped / "configs" / "inference.json").read_text())  # all four
    assert input_channels_of(bb.bundle_parser(shipped).get_parsed_content("network_def")) == 4
    bundle = subset_bundle(make_tiny_bundle(tmp_path / "tiny", weights=False), tmp_path)
    parser = bb.bundle_parser(bundle)
    assert input_channels_of(parser.get_parsed_content("network_def")) == 3
    parser["modalities"] = ["dwi"]  # a typo is named
    with pytest.raises(Exception) as excinfo:
        parser.get_parsed_content("preprocessing")
    assert "unknown modality 'dwi' for task brats2021" in str(bb.root_cause(excinfo.value))

    from monai.bundle import ConfigWorkflow

    # train.json: the folder's cases (no T1) split into folds, a 3-channel module and data module
    workflow = ConfigWorkflow(str(bundle / "configs" / "train.json"), logging_file=False, workflow_type="train",
                              device="cpu", bundle_root=str(bundle), dataset_dir=str(trained["data"]))
    workflow.initialize()
    assert len(workflow.parser.get_parsed_content("train#dataset#data")) == 2  # 3 cases, 3 folds: fold 0 validates
    assert workflow.parser.get_parsed_content("train#module").hparams.in_channels == 3
    assert workflow.parser.get_parsed_content("train#datamodule").modality_names == READ
    torch.manual_seed(0)
    torch.save(build_network("unet3d", 3, 3, spatial_dims=3, features=[4, 4, 8, 16, 32, 4]).state_dict(),
               bundle / "models" / "model.pt")
    predictor = Predictor.from_bundle(bundle, device="cpu")
    assert predictor.task.modality_names == READ
    schema = shipped / bb.SCHEMA_FILE
    checks = bb.verify_bundle(bundle, schema=schema, require_weights=True)  # schema, properties, net in/out (3 channels)
    assert not [c for c in checks if c.status != "PASS"], checks
    # monai.bundle run inference.json on the folder whose cases have no T1
    from monai.bundle import run

    run(config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
        dataset_dir=str(trained["data"]), output_dir=str(tmp_path / "pred"), device="cpu")
    manifest = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert manifest["counts"]["ok"] == 3 and manifest["counts"]["failed"] == 0
    entry = trained["entries"][0]
    written = nib.load(tmp_path / "pred" / f"{entry['case_id']}_seg.nii.gz")
    assert written.shape == nib.load(entry["image"][0]).shape
    # the bundle's preprocessing takes the three files, or a 4D image of all four (MONAI Label sends one)
    prep = bb.inference_preprocessing("brats2021", modalities=list(READ))
    assert prep({"image": [entry["image"][i] for i in (0, 2, 3)]})["image"].shape[0] == 3
