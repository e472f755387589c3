"""A bundle's ``train.json`` is the program: the transforms, dataset, loss, optimiser and inferer the run uses are its ids.

A user adds a stock MONAI transform (``ScaleIntensityd`` to [0, 1]) to ``train#random_transforms``
and the batches the LightningModule trains on change accordingly (z-scored before, in [0, 1]
after) — for the 3D bundle (a MONAI ``CacheDataset`` of preprocessing + random transforms) and
the 2.5D LGG bundle (per drawn slice). ``train#loss``, ``train#optimizer`` and ``train#inferer``
are the very objects the module uses; ``inference.json`` builds the network ``train.json``
defines, with ``--network_def#...`` overrides.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from pytorch_lightning import Callback

from brats_pipeline.data.synthetic import write_cohort

REPO = Path(__file__).resolve().parents[2]
SCALE = {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0}
NO_BATCH_AUGMENTATION = {k: 0.0 for k in ("flip_prob", "spatial_prob", "elastic_prob", "intensity_prob", "gamma_prob",
                                          "noise_prob", "smooth_prob")}
SETUPS = {  # bundle -> (task, cohort shape, overrides for a seconds-long CPU run)
    "brats_unet3d_segmentation": ("brats2021", (40, 40, 32), {
        "roi_size": [32, 32, 32], "network_def#features": [4, 4, 8, 16, 32, 4]}),
    "lgg_flair_segmentation": ("lgg", (64, 64, 24), {
        "roi_size": [64, 64], "network_def#channels": [4, 8, 16, 32, 64], "max_steps": -1,
        "train#datamodule#batch_size": 4, "train#datamodule#augmentation": NO_BATCH_AUGMENTATION}),
}


class Batches(Callback):
    """Keeps the ``image`` of every training batch the LightningModule receives."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.images.append(torch.as_tensor(batch["image"]).detach().float().clone())


def _workflow(name: str, tmp_path: Path, **overrides: object) -> ConfigWorkflow:
    task, shape, fast = SETUPS[name]
    data = tmp_path.parent / f"{task}_cohort"
    if not data.is_dir():
        write_cohort(data, task, n_cases=3, shape=shape, seed=2)
    bundle = REPO / "bundles" / name
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="train", dataset_dir=str(data), output_dir=str(tmp_path / "runs"), ckpt_dir=str(tmp_path / "models"),
        device="cpu", epochs=1, val_interval=1, **{"train#trainer#logger": False, "train#trainer#enable_progress_bar": False,
                                                   "train#datamodule#num_workers": 0},
        **fast, **overrides)
    workflow.initialize()
    return workflow


def _train_batches(workflow: ConfigWorkflow) -> list[torch.Tensor]:
    seen = Batches()
    workflow.parser["train#trainer#callbacks"] = [seen, *workflow.parser.get_parsed_content("train#callbacks")]
    workflow.run()
    assert seen.images, "no training batch reached the module"
    return seen.images


@pytest.mark.parametrize("name", list(SETUPS))
def test_a_transform_added_in_train_json_changes_the_batches_trained_on(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = _train_batches(_workflow(name, tmp_path / "plain"))
    assert min(float(b.min()) for b in plain) < -0.5  # z-scored images (channel-wise over the head)

    workflow = _workflow(name, tmp_path / "scaled")
    random_transforms = workflow.parser.config["train"]["random_transforms"]
    workflow.parser["train#random_transforms"] = [*random_transforms, SCALE]  # what a user writes into train.json
    scaled = _train_batches(workflow)
    for batch in scaled:  # every sample scaled to [0, 1] by the added transform
        per_sample = batch.flatten(1)
        assert torch.all(per_sample.min(dim=1).values >= 0.0) and torch.all(per_sample.max(dim=1).values <= 1.0 + 1e-6)
    assert max(float(b.max()) for b in scaled) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", list(SETUPS))
def test_train_json_objects_are_the_ones_the_module_and_data_module_use(name: str, tmp_path: Path) -> None:
    workflow = _workflow(name, tmp_path)
    parser = workflow.parser
    module, datamodule = parser.get_parsed_content("train#module"), parser.get_parsed_content("train#datamodule")
    assert module.loss_fn is parser.get_parsed_content("train#loss")
    assert module.inferer() is parser.get_parsed_content("train#inferer")
    assert module.optimizer_factory is parser.get_parsed_content("train#optimizer")
    assert module.lr_scheduler_factory is parser.get_parsed_content("train#lr_scheduler")
    optimizer = module.optimizer_factory(module.network.parameters())  # what configure_optimizers builds
    assert optimizer.defaults["lr"] == parser.config["train"]["optimizer"]["lr"]
    assert datamodule.given["train"] is parser.get_parsed_content("train#dataset")
    assert datamodule.given["val"] is parser.get_parsed_content("validate#dataset")
    assert len(parser.get_parsed_content("train#dataset#data")) + len(parser.get_parsed_content("validate#dataset#data")) == 3


def test_inference_json_builds_the_network_train_json_defines_with_overrides() -> None:
    from brats_pipeline.bundle import bundle_parser

    bundle = REPO / "bundles" / "brats_unet3d_segmentation"
    trained = bundle_parser(bundle, "train.json").get_parsed_content("network_def")
    inferred = bundle_parser(bundle, "inference.json").get_parsed_content("network_def")
    assert type(inferred) is type(trained)
    assert {k: v.shape for k, v in inferred.state_dict().items()} == {k: v.shape for k, v in trained.state_dict().items()}

    parser = bundle_parser(bundle, "inference.json")
    parser["network_def#features"] = [4, 4, 8, 16, 32, 4]  # --network_def#features on monai.bundle run
    small = parser.get_parsed_content("network_def")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in trained.parameters()) / 50
