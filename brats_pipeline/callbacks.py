"""Lightning callbacks shared by ``brats-train`` and the MONAI bundles' ``train.json``.

* :class:`TrainingCurves` — ``training_curves.png`` (loss, Dice per region) beside the logs.
* :class:`LastCheckpoint` — ``last.ckpt`` at the end of every training epoch.
* :class:`SlurmRequeue` — on Slurm's warning signal, every rank saves one HPC checkpoint at the
  same training step and the job is requeued; the restarted job resumes from it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint", "SlurmRequeue", "TrainingCurves"]


class TrainingCurves(Callback):
    """Collect epoch metrics; write ``training_curves.png`` (loss, Dice) beside the logs at the end of ``fit``.

    Safe under DDP: ``trainer.log_dir`` is a collective (a broadcast), so every rank asks for
    it before rank 0 plots.
    """

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename
        self.history: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        self.history.append({**row, "epoch": trainer.current_epoch})

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        out_dir = trainer.log_dir or trainer.default_root_dir  # every rank: a broadcast under DDP
        if trainer.is_global_zero and self.history:
            from brats_pipeline.viz import plot_training_curves

            plot_training_curves(self.history, Path(out_dir) / self.filename)


class LastCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` at the end of *every* epoch, for resuming after a kill or preemption.

    Lightning's ``save_last=True`` refreshes ``last.ckpt`` only when the monitored checkpoint
    improves, so a preempted job would resume from its best epoch and redo the rest.
    """

    def __init__(self) -> None:
        super().__init__(
            filename="last", monitor=None, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
        )


def slurm_job_id(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes for this job (``ARRAYJOB_TASK`` for an array task), or ``None`` outside Slurm."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job_id = env.get("SLURM_JOB_ID", "")
    return job_id if re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id) else None


class SlurmRequeue(Callback):
    """Requeue a Slurm job on its warning signal, after one HPC checkpoint saved by every rank together.

    Slurm sends ``SIGUSR1`` ahead of the time limit (``#SBATCH --signal=SIGUSR1@90``) or on
    ``scancel --signal=USR1``. Lightning's own auto-requeue saves the checkpoint *inside the
    signal handler*, on each rank at whatever point it was interrupted; under DDP a rank can
    then enter the checkpoint's barrier while another is blocked in a DDP collective, and the
    job hangs until it is killed (seen with 2 gloo ranks on the one-node test cluster: py-spy
    showed rank 1 in ``save_checkpoint``'s barrier inside the handler, rank 0 in DDP's forward). Here the
    handler only sets a flag. After every training batch the ranks all-reduce the flag (one
    number; every rank runs the same training steps), so all of them see the signal at the
    same step, save ``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir`` together, rank 0
    runs ``scontrol requeue``, and training stops. The restarted job resumes from the newest
    checkpoint (``docker/slurm/train_ddp.sbatch`` passes it as ``--ckpt_path``). If the
    requeue fails, training goes on (the checkpoint is there for a manual re-submission).

    The signal is acted on at the next training step, so give Slurm's warning more time than a
    validation pass takes. Outside Slurm (no ``SLURM_JOB_ID``) the callback does nothing.

    Args:
        signum: the warning signal (default ``SIGUSR1``).
        requeue: run ``scontrol requeue`` (``False``: save and stop only).
    """

    def __init__(self, signum: int = signal.SIGUSR1, requeue: bool = True) -> None:
        self.signum = signal.Signals(signum)
        self.requeue = requeue
        self.received = False
        self._previous: Any = None
        self._installed = False

    # ------------------------------------------------------------------ signal
    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True  # nothing else in a signal handler: no I/O, no collectives

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        # after Lightning registered its handlers (fit start), so this one is the one that runs
        job_id = slurm_job_id()
        if job_id is None or not _main_thread():
            return
        self._previous = signal.signal(self.signum, self._handler)
        self._installed = True
        if trainer.is_global_zero:
            print(f"SlurmRequeue: on {self.signum.name} every rank saves one checkpoint at the same step, "
                  f"then job {job_id} is {'requeued' if self.requeue else 'stopped'}", flush=True)

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._restore()

    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._installed and _main_thread():
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    # ------------------------------------------------------------- the action
    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._installed:
            return
        flag = torch.tensor([1.0 if self.received else 0.0], device=pl_module.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() == 0:
            return
        self.received = False
        path = Path(trainer._checkpoint_connector.hpc_save_path(str(trainer.default_root_dir)))
        trainer.save_checkpoint(path)  # every rank, at the same step: the save's barrier is met
        stop = False
        if trainer.is_global_zero:
            print(f"SlurmRequeue: {self.signum.name} received at epoch {trainer.current_epoch}, step "
                  f"{trainer.global_step}; saved {path}", flush=True)
            stop = self._scontrol_requeue() if self.requeue else True
        # the same decision on every rank; if the requeue failed, train on (the checkpoint is there)
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True

    def _scontrol_requeue(self) -> bool:
        job_id = slurm_job_id()
        try:
            done = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"SlurmRequeue: scontrol requeue {job_id} failed: {exc}", flush=True)
            return False
        if done.returncode != 0:
            print(f"SlurmRequeue: scontrol requeue {job_id} failed ({done.returncode}): {done.stderr.strip()}", flush=True)
            return False
        print(f"SlurmRequeue: requeued Slurm job {job_id}", flush=True)
        return True


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
