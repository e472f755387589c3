"""``brats-train``: LightningCLI over :class:`BratsSegmentationModule` and :class:`BratsDataModule`.

``brats-train fit --config brats_pipeline/configs/tiny_cpu.yaml --data.datalist demo_data/datalist.json``
(also ``validate``, ``test``, ``predict``; ``--print_config`` shows every option). The model's
``task`` and ``in_channels`` follow the datalist; a best-Dice and a last checkpoint are always
kept (``--checkpoint.*`` configures the best one; ``last.ckpt`` is rewritten every epoch), early stopping is configurable (``--early_stopping.patience``), and a
PNG of the loss/Dice curves is written beside the logs at the end of ``fit``. Under Slurm,
``SIGUSR1`` saves an HPC checkpoint on every rank at the same step and requeues the job
(:class:`~brats_pipeline.callbacks.SlurmRequeue`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from brats_pipeline.callbacks import LastCheckpoint, SlurmRequeue, TrainingCurves
from brats_pipeline.data.datamodule import BratsDataModule
from brats_pipeline.module import BratsSegmentationModule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class BratsCLI(LightningCLI):
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

    def before_instantiate_classes(self) -> None:
        import torch

        torch.backends.cudnn.benchmark = True


def main(argv: Sequence[str] | None = None) -> None:
    BratsCLI(
        BratsSegmentationModule,
        BratsDataModule,
        trainer_defaults={"callbacks": [TrainingCurves(), LastCheckpoint(), SlurmRequeue()]},
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=list(argv) if argv is not None else None,
        parser_kwargs={"prog": "brats-train"},
    )


if __name__ == "__main__":
    main()
