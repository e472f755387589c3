"""``SlurmRequeue`` with a real Lightning Trainer: a signal during training -> one checkpoint at a step boundary."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from brats_pipeline.callbacks import SlurmRequeue, TrainingCurves, slurm_job_id


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SignalAt(pl.Callback):
    """Send ``SIGUSR1`` to this process at the start of training batch ``step`` (as Slurm would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def _fit(tmp_path: Path, requeue: SlurmRequeue, max_steps: int = 20) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[requeue, _SignalAt(3)],
    )
    trainer.fit(_Tiny(), data)
    return trainer


def test_signal_saves_one_checkpoint_at_a_step_boundary_and_stops(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = signal.getsignal(signal.SIGUSR1)
    trainer = _fit(tmp_path, SlurmRequeue(requeue=False))
    ckpt = torch.load(tmp_path / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4  # saved after the step during which the signal came, not inside the handler
    assert trainer.global_step == 4  # and training stopped there
    assert "SlurmRequeue: SIGUSR1 received at epoch 0, step 4" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGUSR1) == before  # the previous handler is back


def test_failed_requeue_saves_and_trains_on(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    trainer = _fit(tmp_path, SlurmRequeue())
    assert (tmp_path / "hpc_ckpt_1.ckpt").is_file()
    assert trainer.global_step == 20  # not stopped: the job was not requeued
    assert "scontrol requeue 4242 failed" in capsys.readouterr().out


def test_outside_slurm_the_signal_is_left_alone(tmp_path, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: seen.append(a[0]))
    try:
        trainer = _fit(tmp_path, SlurmRequeue(requeue=False))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert seen == [signal.SIGUSR1] and trainer.global_step == 20 and not (tmp_path / "hpc_ckpt_1.ckpt").exists()


@pytest.mark.parametrize(
    "env,expected",
    [({"SLURM_JOB_ID": "17"}, "17"), ({"SLURM_JOB_ID": "18", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3"}, "10_3"),
     ({}, None), ({"SLURM_JOB_ID": "17; rm -rf /"}, None)],
)
def test_slurm_job_id(env, expected) -> None:
    assert slurm_job_id(env) == expected


# ----------------------------------------------------------------------------- TrainingCurves
def csv_series(metrics_csv: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Every logged column of ``metrics.csv`` as (epochs, values) of the rows that have it."""
    import csv

    with open(metrics_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    keys = [k for k in rows[0] if k not in ("epoch", "step")] if rows else []
    return {k: ([float(r["epoch"]) for r in rows if r[k]], [float(r[k]) for r in rows if r[k]]) for k in keys}


def assert_curves_are_the_csv(plotted: dict, metrics_csv: Path) -> None:
    """Every line of the figure is the matching column of metrics.csv, point for point; no column is left out."""
    series = csv_series(metrics_csv)
    key_of = {"train loss": "train/loss_epoch", "validation loss": "val/loss"}
    drawn = {label: xy for axis in plotted.values() for label, xy in axis.items()}
    wanted = {label for label, key in key_of.items() if key in series}
    wanted |= {k.removeprefix("val/dice_") for k in series if k.startswith("val/dice_")}
    assert set(drawn) == wanted
    for label, (xs, ys) in drawn.items():
        assert (xs, ys) == series[key_of.get(label, f"val/dice_{label}")], label


class _Scored(pl.LightningModule):
    """Logs like BratsSegmentationModule: train/loss per step and epoch, val/dice_* in on_validation_epoch_end."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def on_validation_epoch_end(self) -> None:  # after the callbacks' hook of the same name
        score = torch.sigmoid(self.layer.weight.sum())
        self.log("val/dice_WT", score)
        self.log("val/dice_mean", score / 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit_scored(root: Path, max_epochs: int, ckpt_path: Path | None = None) -> tuple[TrainingCurves, pl.Trainer]:
    from brats_pipeline.callbacks import LastCheckpoint, ResumableCSVLogger, resume_log_version

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)
    curves = TrainingCurves()
    logger = ResumableCSVLogger(str(root), name="logs", version=resume_log_version(ckpt_path, [root / "logs"]))
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=max_epochs, check_val_every_n_epoch=2, logger=logger, log_every_n_steps=1,
        callbacks=[curves, LastCheckpoint()], enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(root),
    )
    trainer.fit(_Scored(), data, data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return curves, trainer


def test_curves_are_the_metrics_of_each_finished_epoch(tmp_path) -> None:
    curves, _ = _fit_scored(tmp_path, max_epochs=3)  # validation after epoch 1 only
    run = tmp_path / "logs" / "version_0"
    assert curves.plotted["loss"]["train loss"][0] == [0.0, 1.0, 2.0]
    assert curves.plotted["validation Dice"]["WT"][0] == [1.0]  # the epoch it was measured, not the next one
    assert_curves_are_the_csv(curves.plotted, run / "metrics.csv")
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resumed_run_continues_the_log_folder_and_the_curves(tmp_path) -> None:
    _fit_scored(tmp_path, max_epochs=2)
    last = tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    curves, trainer = _fit_scored(tmp_path, max_epochs=4, ckpt_path=last)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["version_0"]
    series = csv_series(tmp_path / "logs" / "version_0" / "metrics.csv")
    assert series["train/loss_epoch"][0] == [0.0, 1.0, 2.0, 3.0]  # both runs, each epoch once
    assert series["val/dice_WT"][0] == [1.0, 3.0]
    assert_curves_are_the_csv(curves.plotted, tmp_path / "logs" / "version_0" / "metrics.csv")


def test_resume_log_version_reads_the_folder_or_the_checkpoint(tmp_path) -> None:
    from brats_pipeline.callbacks import resume_log_version

    _, trainer = _fit_scored(tmp_path, max_epochs=1)
    last = tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # where SlurmRequeue saves: outside the version folder
    trainer.save_checkpoint(hpc)
    assert resume_log_version(last) == 0
    assert resume_log_version(hpc, [tmp_path / "logs"]) == 0  # from LastCheckpoint's dirpath in the checkpoint
    assert resume_log_version(hpc, [tmp_path / "elsewhere"]) is None  # another logger's run
    assert resume_log_version(None) is None and resume_log_version(tmp_path / "missing.ckpt") is None
