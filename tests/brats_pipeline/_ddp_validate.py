"""Run by test_training.py in a subprocess: validate a checkpoint with N CPU processes (gloo), print Dice as JSON."""

import json
import sys

import pytorch_lightning as pl

from brats_pipeline.data.datamodule import BratsDataModule
from brats_pipeline.module import BratsSegmentationModule

ckpt, datalist, devices, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model = BratsSegmentationModule.load_from_checkpoint(ckpt, map_location="cpu")
data = BratsDataModule(datalist, fold=0, patch_size=(32, 32, 32), num_workers=0, cache="none")
strategy = "ddp" if devices > 1 else "auto"
trainer = pl.Trainer(
    accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False
)
(metrics,) = trainer.validate(model, data, verbose=False)
if trainer.is_global_zero:
    with open(out, "w") as f:
        json.dump(metrics, f)
