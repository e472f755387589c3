"""Lightning callbacks (and a logger) shared by ``brats-train`` and the MONAI bundles' ``train.json``.

* :class:`TrainingCurves` — ``training_curves.png`` (training and validation loss, Dice per
  region, per finished epoch) beside the logs; its history is saved in checkpoints, so a
  resumed run draws the whole run.
* :class:`LastCheckpoint` — ``last.ckpt`` at the end of every training epoch.
* :class:`SlurmRequeue` — on Slurm's warning signal, every rank saves one HPC checkpoint at the
  same training step and the job is requeued; the restarted job resumes from it.
* :class:`ResumableCSVLogger` and :func:`resume_log_version` — a resumed run logs into the
  folder of the run it resumes (``version_N``), continuing its ``metrics.csv``.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

__all__ = ["LastCheckpoint", "ResumableCSVLogger", "SlurmRequeue", "TrainingCurves", "resume_log_version"]


class TrainingCurves(Callback):
    """Write ``training_curves.png`` beside the logs at the end of ``fit``: loss and Dice of every finished epoch.

    One row of :attr:`history` per finished training epoch, taken when the epoch ends (after
    that epoch's validation has logged): ``train/loss_epoch`` (the epoch's mean training loss)
    and, if validation ran in that epoch, its ``val/loss`` and ``val/dice_*``. The values are
    those the loggers write for the epoch (``metrics.csv``). :attr:`history` is the callback's
    state, saved in every checkpoint, so a resumed run (``fit(ckpt_path=...)``) continues it and
    draws the whole run. After drawing, :attr:`plotted` holds what the figure shows
    (:func:`brats_pipeline.viz.figure_lines`).

    Safe under DDP: ``trainer.log_dir`` is a collective (a broadcast), so every rank asks for
    it before rank 0 plots.

    Args:
        filename: PNG name in ``trainer.log_dir``.
    """

    #: the metrics kept per epoch (prefixes)
    KEYS = ("train/loss_epoch", "val/loss", "val/dice_")

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename
        self.history: list[dict[str, float]] = []
        self.plotted: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        self._validated: tuple[int, dict[str, float]] | None = None

    def _metrics(self, trainer: Trainer, prefixes: Iterable[str]) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith(tuple(prefixes)) and getattr(v, "numel", lambda: 1)() == 1}

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        # after the module's on_validation_epoch_end logged this validation's metrics
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not a separate trainer.validate()
            return
        self._validated = (trainer.current_epoch, self._metrics(trainer, ("val/loss", "val/dice_")))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        row: dict[str, float] = {"epoch": epoch, "step": trainer.global_step, **self._metrics(trainer, ("train/loss_epoch",))}
        if self._validated is not None and self._validated[0] == epoch:
            row.update(self._validated[1])
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]

    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        out_dir = trainer.log_dir or trainer.default_root_dir  # every rank: a broadcast under DDP
        if trainer.is_global_zero and self.history:
            from brats_pipeline.viz import figure_lines, save_figure, training_curves_figure

            fig = training_curves_figure(self.history)
            self.plotted = figure_lines(fig)
            save_figure(fig, Path(out_dir) / self.filename)


class LastCheckpoint(ModelCheckpoint):
    """Write ``last.ckpt`` at the end of *every* epoch, for resuming after a kill or preemption.

    Lightning's ``save_last=True`` refreshes ``last.ckpt`` only when the monitored checkpoint
    improves, so a preempted job would resume from its best epoch and redo the rest.
    """

    def __init__(self) -> None:
        super().__init__(
            filename="last", monitor=None, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
        )


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that appends to the ``metrics.csv`` of its folder if there is one.

    Lightning's own deletes it when a run logs into an existing ``version_N`` folder. With
    :func:`resume_log_version` a resumed run logs into the folder of the run it resumes, so
    ``metrics.csv`` holds the whole run. Rows that a killed run had already written for steps
    after its last checkpoint stay (the resumed run writes those steps again); the epoch-level
    rows of the checkpointed epochs are there once. Arguments are ``CSVLogger``'s.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


_VERSION = re.compile(r"version_(\d+)")


def resume_log_version(ckpt_path: str | os.PathLike | None, log_roots: Iterable[str | os.PathLike] | None = None) -> int | None:
    """The logger version (``N`` of ``version_N``) of the run that wrote ``ckpt_path``, to resume into its folder.

    A checkpoint of that run lies in ``<save_dir>/<name>/version_N/checkpoints/`` (``last.ckpt``,
    the best ones), or records that folder as a ``ModelCheckpoint``'s ``dirpath`` in its
    callback states (an HPC checkpoint saved in ``default_root_dir``).

    Args:
        ckpt_path: the checkpoint a run resumes from (``None``: a new run).
        log_roots: the loggers' ``<save_dir>/<name>`` folders; the version is only returned if
            the run's folder is under one of them (``None``: any).

    Returns:
        ``N``, or ``None`` (a new run, a checkpoint from elsewhere, or an unreadable file):
        loggers then pick the next free version as usual.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    roots = None if log_roots is None else {Path(r).resolve() for r in log_roots}

    def version_of(checkpoint_dir: Path) -> int | None:
        match = _VERSION.fullmatch(checkpoint_dir.parent.name) if checkpoint_dir.name == "checkpoints" else None
        if match is None or (roots is not None and checkpoint_dir.parent.parent.resolve() not in roots):
            return None
        return int(match.group(1))

    path = Path(ckpt_path)
    found = version_of(path.parent)
    if found is not None:
        return found
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours to judge here: fit() reports a bad checkpoint
        return None
    states = ckpt.get("callbacks") if isinstance(ckpt, Mapping) else None
    for state in (states or {}).values():
        dirpath = state.get("dirpath") if isinstance(state, Mapping) else None
        if dirpath and (found := version_of(Path(dirpath))) is not None:
            return found
    return None


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
