"""Training: augmentation keeps image and label aligned, the module learns, fit/resume/kill/DDP work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brats_pipeline.cli.train import CONFIG_DIR
from brats_pipeline.cli.train import main as train_main
from brats_pipeline.data.augment import BatchAugment
from brats_pipeline.data.augmentation_config import AugmentationConfig
from brats_pipeline.data.datalist import build_datalist, write_datalist
from brats_pipeline.data.synthetic import write_cohort
from brats_pipeline.data.transforms import cpu_augmentation
from brats_pipeline.module import BratsSegmentationModule

THRESHOLD = 0.2


def _smooth_volume(seed: int, shape=(40, 40, 32), batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 6, 6, 5, generator=g)
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)


def _agreement_away_from_boundary(image: torch.Tensor, label: torch.Tensor, margin: float = 0.15) -> float:
    """Share of voxels where label == (image > THRESHOLD), ignoring voxels near the threshold and padding."""
    clear = ((image - THRESHOLD).abs() > margin) & (image != 0)
    return float(((image > THRESHOLD).float() == label)[clear].float().mean())


def test_batch_augment_identity_when_everything_is_off() -> None:
    image = _smooth_volume(0)
    label = (image > THRESHOLD).float()
    out, lab = BatchAugment(AugmentationConfig.none())(image, label)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    assert torch.equal(lab, label)


def test_batch_augment_flip_is_an_exact_flip() -> None:
    image = _smooth_volume(1)
    cfg = AugmentationConfig.none()
    cfg.flip_prob = 1.0
    out, _ = BatchAugment(cfg)(image)
    torch.testing.assert_close(out, image.flip(2, 3, 4), atol=1e-5, rtol=0)


def test_batch_augment_keeps_label_aligned_with_image() -> None:
    torch.manual_seed(0)
    image = _smooth_volume(2, batch=4)
    label = (image > THRESHOLD).float()  # the label is a function of the image
    cfg = AugmentationConfig(
        spatial_prob=1.0,
        elastic_prob=1.0,
        elastic_magnitude=3.0,
        intensity_prob=0,
        gamma_prob=0,
        noise_prob=0,
        smooth_prob=0,
    )
    out, lab = BatchAugment(cfg, out_size=(32, 32, 24))(image, label)
    assert out.shape == (4, 1, 32, 32, 24) and lab.shape == (4, 1, 32, 32, 24)
    assert set(lab.unique().tolist()) <= {0.0, 1.0}
    assert (out - image[:, :, 4:36, 4:36, 4:28]).abs().mean() > 0.05  # it did move things
    assert _agreement_away_from_boundary(out, lab) > 0.995


def test_batch_augment_intensity_changes_image_not_label() -> None:
    torch.manual_seed(0)
    image = _smooth_volume(3)
    label = (image > THRESHOLD).float()
    cfg = AugmentationConfig(
        flip_prob=0,
        spatial_prob=0,
        elastic_prob=0,
        intensity_prob=1,
        gamma_prob=1,
        noise_prob=1,
        smooth_prob=1,
    )
    out, lab = BatchAugment(cfg)(image, label)
    assert torch.equal(lab, label)
    assert torch.isfinite(out).all() and not torch.allclose(out, image)


def test_cpu_augmentation_keeps_label_aligned_with_image() -> None:
    from monai.transforms import Compose
    from monai.utils import set_determinism

    set_determinism(0)
    cfg = AugmentationConfig(
        flip_prob=0.5,
        spatial_prob=1.0,
        elastic_prob=1.0,
        intensity_prob=0,
        gamma_prob=0,
        noise_prob=0,
        smooth_prob=0,
    )
    transform = Compose(cpu_augmentation(cfg))
    for seed in range(3):
        image = _smooth_volume(seed, batch=1)[0]
        label = (image > THRESHOLD).float()
        out = transform({"image": image.clone(), "label": label.clone()})
        img, lab = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert not torch.allclose(img, image)
        assert _agreement_away_from_boundary(img, lab) > 0.99
    set_determinism(None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_augment_on_gpu_matches_label_alignment() -> None:
    image = _smooth_volume(4, batch=4).cuda()
    label = (image > THRESHOLD).float()
    out, lab = BatchAugment(AugmentationConfig(intensity_prob=0, gamma_prob=0, noise_prob=0, smooth_prob=0))(
        image, label
    )
    assert out.is_cuda and _agreement_away_from_boundary(out.cpu(), lab.cpu()) > 0.995


def test_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = BratsSegmentationModule(
        "unet3d", network_kwargs={"features": [4, 4, 8, 16, 32, 4]}, task="brats2021"
    )
    image = _smooth_volume(5, shape=(32, 32, 32)).repeat(1, 4, 1, 1, 1)
    label = torch.cat([(image[:, :1] > t).float() for t in (0.3, 0.0, 0.6)], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = model.loss_fn(model(image), label)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0]


def test_a_step_with_a_nan_loss_leaves_the_weights_finite(tmp_path: Path) -> None:
    """A real Trainer; the loss is NaN on the second of four steps: that step's gradients are zeroed, with a warning."""
    import pytorch_lightning as pl

    torch.manual_seed(0)
    model = BratsSegmentationModule("unet3d", network_kwargs={"features": [4, 4, 8, 16, 32, 4]}, task="brats2021",
                                    roi_size=(32, 32, 32), lr_scheduler=None)
    real_loss, calls = model.loss_fn, []

    class NanOnSecondCall(torch.nn.Module):
        def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            loss = real_loss(logits, label)
            return loss * float("nan") if len(calls) == 2 else loss

    model.loss_fn = NanOnSecondCall()
    image = _smooth_volume(5, shape=(32, 32, 32)).repeat(1, 4, 1, 1, 1)
    label = torch.cat([(image[:, :1] > t).float() for t in (0.3, 0.0, 0.6)], dim=1)
    batches = [{"image": image, "label": label}] * 4
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="step 1: non-finite gradients"):
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == 4 and len(calls) == 4
    assert model.nonfinite_steps == 1
    assert all(torch.isfinite(v).all() for v in model.network.state_dict().values())


def test_module_rejects_bad_optimiser_and_schedule() -> None:
    with pytest.raises(ValueError, match="optimizer must be a callable .* got 'adamax'"):
        BratsSegmentationModule("unet3d", optimizer="adamax")
    with pytest.raises(ValueError, match="lr_scheduler must be None or a callable .* got 'step'"):
        BratsSegmentationModule("unet3d", lr_scheduler="step")


# ----------------------------------------------------------------------------- fit / resume
@pytest.fixture(scope="module")
def datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root / "data", "brats2021", n_cases=5, shape=(48, 48, 32), seed=0)
    dl = build_datalist(root / "data", "brats2021", folds=2, seed=0)  # fold 0: 3 cases, fold 1: 2 cases
    return write_datalist(dl, root / "datalist.json")


def _fit_args(datalist: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIG_DIR / "tiny_cpu.yaml"),
        "--data.datalist",
        str(datalist),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def _ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def test_fit_writes_checkpoints_metrics_and_curves(datalist: Path, tmp_path: Path) -> None:
    train_main(_fit_args(datalist, tmp_path, "--trainer.max_epochs", "1"))
    run = tmp_path / "logs" / "version_0"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("epoch000-dice") for n in ckpts)
    metrics = (run / "metrics.csv").read_text()
    for column in (
        "train/loss_epoch",
        "val/dice_TC",
        "val/dice_WT",
        "val/dice_ET",
        "val/dice_mean",
        "val/loss",
        "val/hd95_WT",
    ):
        assert column in metrics
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_from_saved_epoch(datalist: Path, tmp_path: Path) -> None:
    train_main(_fit_args(datalist, tmp_path / "a", "--trainer.max_epochs", "1"))
    last = tmp_path / "a" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert _ckpt_epoch(last) == 0
    first = torch.load(last, map_location="cpu", weights_only=False)
    train_main(_fit_args(datalist, tmp_path / "b", "--trainer.max_epochs", "2", "--ckpt_path", str(last)))
    resumed = torch.load(
        tmp_path / "b" / "logs" / "version_0" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * first["global_step"]  # continued, did not start over
    assert resumed["lr_schedulers"][0]["last_epoch"] == resumed["global_step"]  # stepped every optimiser step


@pytest.mark.slow
def test_killed_training_resumes_to_a_finished_run(datalist: Path, tmp_path: Path) -> None:
    args = _fit_args(datalist, tmp_path, "--trainer.max_epochs", "3", "--trainer.logger", "false")
    ckpt_dir = tmp_path / "checkpoints"  # where checkpoints go without a logger
    cmd = [sys.executable, "-m", "brats_pipeline.cli.train", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (ckpt_dir / "last.ckpt").exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended before the first checkpoint: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run, like a preempted job
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = _ckpt_epoch(ckpt_dir / "last.ckpt")
    assert saved < 2
    done = subprocess.run(
        [*cmd, "--ckpt_path", str(ckpt_dir / "last.ckpt")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _ckpt_epoch(ckpt_dir / "last.ckpt") == 2, (saved, done.stderr[-3000:])


@pytest.mark.slow
def test_ddp_two_processes_give_the_same_validation_dice(datalist: Path, tmp_path: Path) -> None:
    train_main(_fit_args(datalist, tmp_path / "fit", "--trainer.max_epochs", "1"))
    ckpt = tmp_path / "fit" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    script = Path(__file__).with_name("_ddp_validate.py")
    results = {}
    for devices in (1, 2, 4):  # 4 ranks > 3 cases: a rank without a case must not hang or count twice
        out = tmp_path / f"val{devices}.json"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        run = subprocess.run(
            [sys.executable, str(script), str(ckpt), str(datalist), str(devices), str(out)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results[devices] = json.loads(out.read_text())
    assert results[1]["val/cases"] == results[2]["val/cases"] == results[4]["val/cases"] == 3.0  # none counted twice
    for key in ("val/dice_TC", "val/dice_WT", "val/dice_ET", "val/dice_mean"):
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-5)
        assert results[4][key] == pytest.approx(results[1][key], abs=1e-5)
    assert np.isfinite(results[1]["val/dice_mean"])


@pytest.mark.slow
def test_lgg_config_trains_on_the_real_data(lgg_dir: Path, tmp_path: Path) -> None:
    dl = write_datalist(build_datalist(lgg_dir, "lgg", folds=5, seed=0), tmp_path / "lgg.json")
    train_main([
        "fit", "--config", str(CONFIG_DIR / "unet3d_lgg.yaml"), "--data.datalist", str(dl), "--data.fold", "1",
        "--data.max_cases", "1", "--data.num_workers", "0", "--data.patch_size", "[64, 64, 32]",
        "--data.batch_size", "2", "--data.samples_per_volume", "1", "--data.augmentation_device", "batch",
        "--model.network_kwargs", "{features: [8, 8, 16, 32, 64, 8]}", "--model.roi_size", "[128, 128, 32]",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_epochs", "1",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
    ])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["task"] == "lgg" and ckpt["hyper_parameters"]["in_channels"] == 3
    assert ckpt["state_dict"]["network.final_conv.weight"].shape[0] == 1  # one region: WT


@pytest.mark.parametrize("cases,ranks", [(3, 2), (3, 4), (1, 2), (5, 5)])
def test_evaluation_shards_are_disjoint_and_every_rank_gets_a_batch(cases: int, ranks: int) -> None:
    from brats_pipeline.data.loaders import EvalShardSampler, _Weighted

    dataset = _Weighted([{"case_id": f"c{i}"} for i in range(cases)])
    counted = []
    for rank in range(ranks):
        items = [dataset[i] for i in EvalShardSampler(dataset, num_replicas=ranks, rank=rank)]
        assert items, f"rank {rank} of {ranks} has no batch: Lightning would skip its loop and the others would hang"
        counted += [item["case_id"] for item in items if item["eval_weight"] == 1.0]
        assert all(item["eval_weight"] in (0.0, 1.0) for item in items)
    assert sorted(counted) == [f"c{i}" for i in range(cases)]  # every case counted exactly once
