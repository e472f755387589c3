"""``SlurmRequeue`` with a real Lightning Trainer: a signal during training -> one checkpoint at a step boundary."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from brats_pipeline.callbacks import SlurmRequeue, slurm_job_id


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
