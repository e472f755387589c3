"""2D and 2.5D: slabs, the slice dataset, the inferers, module + data module + Trainer, predictor geometry, brats-train."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from torch import nn

from brats_pipeline.cli.train import CONFIG_DIR
from brats_pipeline.cli.train import main as train_main
from brats_pipeline.data.datalist import build_datalist, write_datalist
from brats_pipeline.data.datamodule import BratsDataModule
from brats_pipeline.data.loaders import ThreadedAugmentLoader, make_loader
from brats_pipeline.data.slices import SliceDataset, slab, stack_context
from brats_pipeline.data.synthetic import write_cohort
from brats_pipeline.inference import Predictor, run_batch
from brats_pipeline.inference.inferers import ContextSliceInferer, build_inferer
from brats_pipeline.module import BratsSegmentationModule
from brats_pipeline.networks import input_channels_of
from preprocessing.io import write_nifti

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------ slabs
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("context", [0, 1, 2])
def test_slab_and_stack_context_build_the_same_channels(axis: int, context: int) -> None:
    torch.manual_seed(0)
    volume = torch.randn(2, 5, 6, 7)
    stacked = stack_context(volume[None], axis, context)[0]
    assert stacked.shape == (2 * (2 * context + 1), 5, 6, 7)
    for i in range(volume.shape[axis + 1]):
        torch.testing.assert_close(slab(volume, i, axis, context), stacked.select(axis + 1, i), rtol=0, atol=0)


def test_slab_channels_are_modality_major_with_the_edge_slice_repeated() -> None:
    volume = torch.arange(2 * 4, dtype=torch.float32).view(2, 1, 1, 4).expand(2, 3, 3, 4).clone()  # value = c*4 + z
    first = slab(volume, 0, 2, context=1)[:, 0, 0]
    last = slab(volume, 3, 2, context=1)[:, 0, 0]
    assert first.tolist() == [0, 0, 1, 4, 4, 5]  # modality 0: z = 0 (repeated), 0, 1; modality 1: the same
    assert last.tolist() == [2, 3, 3, 6, 7, 7]


def _volume(n_slices: int = 10, tumour: tuple[int, int] = (3, 6)) -> dict[str, torch.Tensor]:
    image = torch.arange(n_slices, dtype=torch.float32).view(1, 1, 1, -1).expand(3, 12, 10, -1).clone()
    label = torch.zeros(1, 12, 10, n_slices)
    label[0, 4:8, 3:6, tumour[0] : tumour[1]] = 1
    return {"image": image, "label": label}


def test_slice_dataset_has_every_tumour_slice_and_a_ratio_of_empty_ones() -> None:
    ds = SliceDataset([_volume()], slice_axis=2, empty_slice_ratio=1.0, patch_size=(12, 10))
    assert len(ds) == 6  # 3 tumour slices + 1.0 x 3 empty draws
    items = [ds[i] for i in range(len(ds))]
    assert [int(it["image"][0, 0, 0]) for it in items[:3]] == [3, 4, 5]  # image value = slice index
    assert all(it["label"].sum() == 12 for it in items[:3])
    assert all(it["label"].sum() == 0 and int(it["image"][0, 0, 0]) not in (3, 4, 5) for it in items[3:])
    assert items[0]["image"].shape == (3, 12, 10) and items[0]["label"].shape == (1, 12, 10)
    draws = {int(ds[5]["image"][0, 0, 0]) for _ in range(60)}
    assert len(draws) > 3 and draws <= {0, 1, 2, 6, 7, 8, 9}  # a fresh random empty slice per read
    assert len(SliceDataset([_volume()], empty_slice_ratio=0)) == 3
    assert len(SliceDataset([_volume()], empty_slice_ratio=2.0)) == 9
    assert len(SliceDataset([_volume()], empty_slice_ratio=None)) == 10


def test_slice_dataset_stacks_context_and_crops_or_pads_in_plane() -> None:
    ds = SliceDataset([_volume()], slice_axis=2, context=2, empty_slice_ratio=0, patch_size=(8, 16))
    item = ds[0]  # slice 3
    assert item["image"].shape == (15, 8, 16) and item["label"].shape == (1, 8, 16)
    assert item["image"][:5, 4, 8].tolist() == [1, 2, 3, 4, 5]  # modality 0, slices 1..5
    assert item["image"][:, :, :3].abs().sum() == 0 and item["image"][:, :, 13:].abs().sum() == 0  # 10 -> 16: padded 3 + 3
    whole = SliceDataset([_volume()], empty_slice_ratio=0, patch_size=None)
    assert whole.patch_size == (32, 32) and whole[0]["image"].shape == (3, 32, 32)  # 12 x 10 padded to a multiple of 32
    across_x = SliceDataset([_volume()], slice_axis=0, empty_slice_ratio=None, patch_size=(10, 10))
    assert len(across_x) == 12 and across_x[0]["image"].shape == (3, 10, 10)


def test_slice_dataset_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="slice_axis must be 0"):
        SliceDataset([_volume()], slice_axis=3)
    with pytest.raises(ValueError, match="context must be a non-negative int"):
        SliceDataset([_volume()], context=-1)
    with pytest.raises(ValueError, match="empty_slice_ratio must be"):
        SliceDataset([_volume()], empty_slice_ratio=-0.5)
    with pytest.raises(ValueError, match="no slice of the training volumes holds tumour"):
        SliceDataset([_volume(tumour=(0, 0))])


# ---------------------------------------------------------------------------------- inferers
class PerPixel2D(nn.Module):
    """A 2D network whose logits are a pointwise function of channel 0 (a 1x1 convolution)."""

    def __init__(self, in_channels: int = 3, channel: int = 0, threshold: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, channel] = 20.0
            self.conv.bias.fill_(-20.0 * threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, "a 2D network gets slices"
        return self.conv(x)


class NeighbourDifference(nn.Module):
    """2.5D with context 1 on 1 modality: logits = next slice - previous slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 3
        return x[:, 2:3] - x[:, 0:1]


def test_build_inferer_picks_the_monai_inferer_for_the_dimensionality() -> None:
    assert type(build_inferer(3, (16, 16, 16))) is SlidingWindowInferer
    two_d = build_inferer(2, (32, 32, 32), slice_axis=0)
    assert type(two_d) is SliceInferer and two_d.spatial_dim == 0 and tuple(two_d.roi_size) == (32, 32)
    assert isinstance(build_inferer(2, (32, 32), context=2), ContextSliceInferer)
    with pytest.raises(ValueError, match="context=1 .*needs a 2D network"):
        build_inferer(3, (16, 16, 16), context=1)
    with pytest.raises(ValueError, match="roi_size must be three positive sizes"):
        build_inferer(3, (16, 16))
    with pytest.raises(ValueError, match="roi_size of a 2D network must be two in-plane sizes"):
        build_inferer(2, (16,))
    with pytest.raises(ValueError, match="slice_axis must be 0"):
        build_inferer(2, (16, 16), slice_axis=5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_inferer_runs_a_2d_network_on_every_slice(axis: int) -> None:
    torch.manual_seed(0)
    volume = torch.randn(2, 3, 20, 14, 9)
    roi = [s for a, s in enumerate((16, 16, 16)) if a != axis]  # tiles with overlap in-plane
    out = build_inferer(2, roi, sw_batch_size=5, overlap=0.25, slice_axis=axis)(volume, PerPixel2D())
    torch.testing.assert_close(out, 20.0 * volume[:, :1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("axis", [0, 2])
def test_context_inferer_feeds_each_slice_its_neighbours(axis: int) -> None:
    torch.manual_seed(0)
    volume = torch.randn(1, 1, 8, 7, 6)
    out = build_inferer(2, (8, 8, 8), sw_batch_size=4, slice_axis=axis, context=1)(volume, NeighbourDifference())
    n = volume.shape[axis + 2]
    nxt = volume.index_select(axis + 2, torch.arange(1, n + 1).clamp(max=n - 1))
    prev = volume.index_select(axis + 2, torch.arange(-1, n - 1).clamp(min=0))
    torch.testing.assert_close(out, nxt - prev, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ module, data module, Trainer
@pytest.fixture(scope="module")
def lgg_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lgg_cohort")
    write_cohort(root / "data", "lgg", n_cases=4, shape=(40, 40, 24), seed=0)
    return write_datalist(build_datalist(root / "data", "lgg", folds=2, seed=0), root / "datalist.json")


class BatchShapes(pl.Callback):
    def __init__(self) -> None:
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.shapes.append((tuple(batch["image"].shape), tuple(batch["label"].shape)))


@pytest.mark.parametrize(("context", "workers"), [(0, 0), (1, 0), (1, 1)])
def test_trainer_fits_a_2d_and_a_25d_network_on_slices(lgg_datalist: Path, context: int, workers: int) -> None:
    torch.manual_seed(0)
    model = BratsSegmentationModule(
        "unet2d", {"channels": [8, 16, 32], "strides": [2, 2]}, task="lgg", roi_size=(32, 32), sw_batch_size=8, context=context
    )
    assert model.spatial_dims == 2 and input_channels_of(model.network) == 3 * (2 * context + 1)
    dm = BratsDataModule(str(lgg_datalist), fold=0, patch_size=(32, 32), batch_size=4, num_workers=workers, empty_slice_ratio=0.5)
    shapes = BatchShapes()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[shapes],
    )
    before = [p.detach().clone() for p in model.network.parameters()]
    trainer.fit(model, dm)
    assert (dm.spatial_dims, dm.slice_axis, dm.context) == (2, 2, context)  # followed the model
    # slices drawn with a margin (40 x 40), augmented and cropped back by BatchAugment beside the step
    # on the CPU: in the loader worker, or without workers in a background thread (the batch arrives cropped)
    assert dm.augments_in_loader()
    assert isinstance(trainer.train_dataloader, ThreadedAugmentLoader) is (workers == 0)
    assert shapes.shapes == [((4, 3 * (2 * context + 1), 32, 32), (4, 1, 32, 32))] * 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.network.parameters()))
    metrics = trainer.callback_metrics
    assert metrics["val/cases"] == 2 and 0 <= float(metrics["val/dice_WT"]) <= 1  # whole volumes, slice by slice


def _fit_steps(lgg_datalist: Path, augment_thread: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pl.seed_everything(3)
    model = BratsSegmentationModule("unet2d", {"channels": [8, 16], "strides": [2]}, task="lgg", roi_size=(32, 32), context=1)
    dm = BratsDataModule(str(lgg_datalist), fold=0, patch_size=(32, 32), batch_size=4, num_workers=0,
                         empty_slice_ratio=0.5, augment_thread=augment_thread)
    batches = []

    class Keep(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            batches.append(batch["image"].clone())

    trainer = pl.Trainer(max_epochs=1, limit_train_batches=4, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Keep()])
    trainer.fit(model, dm)
    assert dm.augments_in_loader() is augment_thread
    return batches, [p.detach().clone() for p in model.network.parameters()]


def test_augmenting_in_a_thread_trains_on_the_same_batches_as_in_the_step(lgg_datalist: Path) -> None:
    """The background thread draws the same slices and random augmentations, in the same order."""
    in_step, weights_in_step = _fit_steps(lgg_datalist, augment_thread=False)
    threaded, weights_threaded = _fit_steps(lgg_datalist, augment_thread=True)
    assert len(in_step) == len(threaded) == 4
    assert all(torch.equal(a, b) for a, b in zip(in_step, threaded))
    assert not torch.equal(in_step[0], in_step[1])
    assert all(torch.equal(a, b) for a, b in zip(weights_in_step, weights_threaded))


def test_data_module_rejects_settings_that_contradict_the_model(lgg_datalist: Path) -> None:
    model = BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 8, 16, 4]}, task="lgg", roi_size=(32, 32, 16))
    dm = BratsDataModule(str(lgg_datalist), patch_size=(32, 32), num_workers=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="3D network trains on patches of three sizes"):
        trainer.fit(model, dm)
    with pytest.raises(ValueError, match="context=1 \\(2.5D\\) needs a 2D network"):
        BratsSegmentationModule("unet3d", task="lgg", context=1)
    with pytest.raises(ValueError, match="data context=2, but the model's is 0"):
        dm = BratsDataModule(str(lgg_datalist), patch_size=(32, 32), num_workers=0, context=2)
        two_d = BratsSegmentationModule("unet2d", {"channels": [8, 16], "strides": [2]}, task="lgg", roi_size=(32, 32))
        pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False).fit(two_d, dm)


def test_module_takes_the_dimensionality_from_the_network() -> None:
    assert BratsSegmentationModule("bunet", {"spatial_dims": 2, "features": [4, 8, 16]}, task="lgg").spatial_dims == 2
    assert BratsSegmentationModule("unet2d_buda", {"features": [4, 8, 8, 8, 8, 4]}, task="lgg").spatial_dims == 2
    module = BratsSegmentationModule(nn.Sequential(nn.Conv2d(3, 1, 1)), task="lgg", roi_size=(16, 16))
    assert module.spatial_dims == 2 and isinstance(module.inferer(), SliceInferer)
    assert BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 8, 16, 4]}, task="lgg").spatial_dims == 3


# ------------------------------------------------------------------ predictor: input geometry
def _oblique_affine() -> np.ndarray:
    """Rotated 25 degrees about z, axes permuted and one flipped, voxels 0.9 x 1.3 x 2.2 mm."""
    th = np.deg2rad(25.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0], [0.0, 0.0, 1.0]])
    perm = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag([0.9, 1.3, 2.2])
    affine[:3, 3] = [12.0, -30.0, 7.5]
    return affine


def _write_lgg_case(folder: Path, affine: np.ndarray, shape=(30, 26, 20)) -> tuple[list[str], np.ndarray]:
    """A head box (intensity 1) with an off-centre lesion (intensity 5) in FLAIR; the expected labels."""
    rng = np.random.default_rng(0)
    head = np.zeros(shape, dtype=np.float32)
    head[2:-2, 2:-2, 2:-2] = 1.0
    lesion = np.zeros(shape, dtype=bool)
    lesion[6:16, 4:14, 9:17] = True
    lesion[8:12, 15:20, 3:6] = True
    flair = np.where(lesion, 5.0, head)
    files = []
    for name, img in (("t1", head * 2), ("flair", flair), ("t1c", head * rng.uniform(1, 2, shape).astype(np.float32))):
        files.append(str(write_nifti(img, affine, folder / "c1" / f"c1_{name}.nii.gz")))
    return files, lesion.astype(np.uint8)


@pytest.mark.parametrize("context", [0, 2])
def test_slice_predictions_land_in_the_inputs_oblique_geometry(tmp_path: Path, context: int) -> None:
    affine = _oblique_affine()
    files, expected = _write_lgg_case(tmp_path / "in", affine)
    flair = 1 * (2 * context + 1) + context  # modality 1, the centre slice of its slab
    net = PerPixel2D(in_channels=3 * (2 * context + 1), channel=flair, threshold=3.0)
    p = Predictor(net, "lgg", roi_size=(16, 16), overlap=0.25, normalize=False, device="cpu", tta_axes=(0, 1, 2))
    assert (p.spatial_dims, p.context, p.tta_axes) == (2, context, (0, 1))  # context from the channels; in-plane mirrors
    pred = p.predict_case({"case_id": "c1", "image": files})
    np.testing.assert_allclose(pred.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(pred.label, expected)  # reorientation and crop undone voxel for voxel
    rows = run_batch(p, [{"case_id": "c1", "image": files}], tmp_path / "out", progress=False)
    assert rows[0]["status"] == "ok"
    out = nib.load(str(tmp_path / "out" / "c1.nii.gz"))
    assert out.shape == expected.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)


def test_predictor_takes_an_injected_inferer_and_rejects_mismatched_channels() -> None:
    volume = torch.randn(3, 12, 10, 8)
    injected = SliceInferer(spatial_dim=1, roi_size=(12, 8), sw_batch_size=3)
    p = Predictor(PerPixel2D(), "lgg", inferer=injected, device="cpu")
    assert p.inferer is injected and p.describe()["inferer"] == "SliceInferer"
    torch.testing.assert_close(p.predict_volume(volume), torch.sigmoid(20 * volume[:1]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="takes 6 input channels; task lgg has 3 modalities"):
        Predictor(nn.Conv2d(6, 1, 1), "lgg", device="cpu")
    with pytest.raises(ValueError, match="context=1 feeds 9 channels .* takes 3"):
        Predictor(nn.Conv2d(3, 1, 1), "lgg", context=1, device="cpu")


# ------------------------------------------------------------------------------ brats-train
def test_brats_train_and_brats_infer_with_the_2d_example_config(lgg_datalist: Path, tmp_path: Path) -> None:
    import json

    from brats_pipeline.cli.infer import main as infer_main

    train_main([
        "fit", "--config", str(CONFIG_DIR / "unet2d_lgg_example.yaml"),
        "--data.datalist", str(lgg_datalist), "--data.patch_size", "[32, 32]", "--data.num_workers", "0",
        "--model.roi_size", "[32, 32]", "--model.network_kwargs", "{channels: [8, 16, 32], strides: [2, 2]}",
        "--model.context", "1", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    run = tmp_path / "csv" / "version_0"
    assert "val/dice_WT" in (run / "metrics.csv").read_text()
    ckpt = run / "checkpoints" / "last.ckpt"
    hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert (hp["network"], hp["context"], hp["slice_axis"]) == ("unet2d", 1, 2)
    out = tmp_path / "preds"
    assert infer_main(["-i", str(lgg_datalist), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--no-progress"]) == 0
    rows = json.loads((out / "manifest.json").read_text())["cases"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    case_id = rows[0]["case_id"]
    truth = nib.load(str(next(lgg_datalist.parent.rglob(f"{case_id}_seg.nii.gz"))))
    written = nib.load(str(out / f"{case_id}.nii.gz"))
    assert written.shape == truth.shape and np.allclose(written.affine, truth.affine)  # the input's grid


@pytest.mark.parametrize("patch", [(20, 24), (16, 16), (24, 32)])
@pytest.mark.parametrize("context", [0, 2])
def test_a_batch_fetched_at_once_equals_the_items_one_by_one(patch: tuple[int, int], context: int) -> None:
    """``__getitems__`` (what the loader calls) gives the collated items of ``__getitem__``, with the same random draws."""
    g = torch.Generator().manual_seed(0)
    volumes = [{"image": torch.randn(3, 20, 24, 4 + v, generator=g), "label": (torch.rand(1, 20, 24, 4 + v, generator=g) > 0.8).float()}
               for v in range(3)]
    ds = SliceDataset(volumes, 2, context, empty_slice_ratio=1.0, patch_size=patch)
    indices = list(range(len(ds)))[::-1]
    random.seed(5)
    batch = ds.__getitems__(indices)
    random.seed(5)
    items = [ds[i] for i in indices]
    assert torch.equal(batch["image"], torch.stack([it["image"] for it in items]))
    assert torch.equal(batch["label"], torch.stack([it["label"] for it in items])) and batch["label"].dtype == torch.float32
    assert batch["image"].shape == (len(indices), 3 * (2 * context + 1), *patch)
    loaded = next(iter(make_loader(ds, 4, 0, shuffle=False)))
    assert loaded["image"].shape == (4, 3 * (2 * context + 1), *patch)


def test_an_error_in_the_augmenting_thread_is_raised_in_the_training_loop() -> None:
    def augment(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if float(image[0, 0]) == 2:
            raise ValueError("case_2.nii.gz: NaN in t1")
        return image * 10, label

    loader = [{"image": torch.full((1, 1), float(i)), "label": torch.zeros(1, 1)} for i in range(4)]
    threaded = ThreadedAugmentLoader(loader, augment)
    assert len(threaded) == 4
    seen = []
    with pytest.raises(ValueError, match="case_2.nii.gz: NaN in t1"):
        for batch in threaded:
            seen.append(float(batch["image"][0, 0]))
    assert seen == [0.0, 10.0]
    early = iter(ThreadedAugmentLoader(loader[:2], augment))
    assert float(next(early)["image"][0, 0]) == 0.0
    early.close()  # a loop left early (max_steps) stops the thread
