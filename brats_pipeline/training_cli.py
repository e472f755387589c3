"""The LightningCLI of ``brats-train``: :class:`BratsSegmentationModule` + :class:`BratsDataModule`.

:func:`build_cli` builds (and by default runs) it; ``brats-train`` (:mod:`brats_pipeline.cli.train`)
is a thin entry point over it, and a study (:mod:`brats_pipeline.study.runner`) builds it in-process
with ``run=False``. The model's ``task``, ``in_channels`` and ``modalities`` follow the datalist and
``data.modalities`` (a subset of the task's modalities, e.g. ``--data.modalities [t2,t1c,flair]``:
:mod:`brats_pipeline.data.modalities`); a best-Dice and a last checkpoint are always kept
(``--checkpoint.*`` configures the best one; ``last.ckpt`` is rewritten every epoch), early stopping is
configurable (``--early_stopping.patience``), and a PNG of the loss/Dice curves is written beside the
logs at the end of ``fit``. Under Slurm, ``SIGUSR1`` saves an HPC checkpoint on every rank at the same
step and requeues the job (:class:`~brats_pipeline.callbacks.SlurmRequeue`).

The optimiser and learning-rate schedule are the model's arguments, one way only (Lightning's
dependency injection, ``auto_configure_optimizers=False``, so there is no top-level
``--optimizer``/``--lr_scheduler``)::

    --model.optimizer torch.optim.SGD --model.optimizer.lr 0.01 --model.optimizer.momentum 0.99
    --model.lr_scheduler brats_pipeline.schedules.ProgressLR --model.lr_scheduler.shape poly
    --model.lr_scheduler null                                   # constant learning rate

**Resuming** (``fit --ckpt_path CKPT``): when CKPT belongs to a run logged under one of the
configured loggers' ``<save_dir>/<name>/version_N`` (its ``checkpoints/`` folder, or an HPC
checkpoint that records it), every logger without an explicit ``version`` logs into
``version_N`` again: one folder per run, ``metrics.csv`` continued
(:class:`~brats_pipeline.callbacks.ResumableCSVLogger`), TensorBoard events appended, the
curves drawn for the whole run. Give ``--trainer.logger.init_args.version`` to choose another
folder. The schedule follows the run as configured now (:mod:`brats_pipeline.schedules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from brats_pipeline.callbacks import LastCheckpoint, SlurmRequeue, TrainingCurves, resume_log_version
from brats_pipeline.data.datamodule import BratsDataModule
from brats_pipeline.module import BratsSegmentationModule

#: The packaged training recipes (``tiny_cpu.yaml``, ``unet3d_brats.yaml``, ...).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class BratsCLI(LightningCLI):
    """``LightningCLI`` with the best-Dice checkpoint, early stopping and the data -> model links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/dice_mean",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "epoch{epoch:03d}-dice{val/dice_mean:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/dice_mean", "early_stopping.mode": "max", "early_stopping.patience": 50})
        parser.link_arguments("data.task_name", "model.task", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.modality_names", "model.modalities", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        import torch

        from brats_pipeline.devices import reuse_freed_memory

        torch.backends.cudnn.benchmark = True
        reuse_freed_memory()  # large CPU tensors reuse freed memory instead of page-faulting in every step
        config = self.config[self.subcommand] if self.subcommand else self.config
        _apply_precision_rule(config)
        if self.subcommand == "fit":
            _resume_into_same_version(self.config.fit)


def _apply_precision_rule(config: Any) -> None:
    """``trainer.precision``: never bf16 on a CPU without native bf16 (then fp32).

    See :func:`brats_pipeline.devices.lightning_precision_for`.
    """
    from brats_pipeline.devices import lightning_precision_for

    precision, note = lightning_precision_for(config.trainer.precision, config.trainer.accelerator)
    if note:
        config.trainer.precision = precision
        print(f"brats-train: {note}", flush=True)


def _logger_entries(config: Any) -> list[Any]:
    """The configured loggers (``class_path`` + ``init_args`` namespaces) of a ``fit`` config."""
    loggers = config.trainer.get("logger")
    entries = loggers if isinstance(loggers, list) else [loggers]
    return [e for e in entries if getattr(e, "init_args", None) is not None and e.init_args.get("save_dir") is not None]


def _resume_into_same_version(config: Any) -> None:
    """Point the loggers at the version folder of the run ``config.ckpt_path`` resumes (see the module docstring)."""
    entries = _logger_entries(config)
    if not config.get("ckpt_path") or not entries:
        return
    roots = [Path(e.init_args.save_dir) / (e.init_args.get("name") or "") for e in entries]
    version = resume_log_version(config.ckpt_path, roots)
    if version is None:
        return
    for entry in entries:
        if entry.init_args.get("version") is None:
            entry.init_args.version = version


def build_cli(argv: Sequence[str] | None = None, run: bool = True) -> BratsCLI:
    """Parse ``argv`` (``None``: the command line) and run the subcommand; returns the CLI (``.trainer``, ``.model``).

    Args:
        argv: the arguments; with ``run=False`` no subcommand (``--config ... --data.fold 0``).
        run: run the subcommand; ``False`` only builds the trainer, model and data module.
    """
    return BratsCLI(
        BratsSegmentationModule,
        BratsDataModule,
        trainer_defaults={"callbacks": [TrainingCurves(), LastCheckpoint(), SlurmRequeue()]},
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # one way to set them: --model.optimizer / --model.lr_scheduler
        args=list(argv) if argv is not None else None,
        parser_kwargs={"prog": "brats-train", "allow_abbrev": False},  # --trainer.max_epoch is no --trainer.max_epochs
        run=run,
    )
