"""The one LightningModule: any network, any loss, sliding-window validation with per-region Dice.

A new architecture is a new file in :mod:`brats_pipeline.networks`, never a new module here:
:class:`BratsSegmentationModule` receives the network (a registry name + options, or an
``nn.Module`` built elsewhere, e.g. by a MONAI bundle config), the loss (by name), the
optimiser and scheduler (by name) and the sliding-window inferer parameters.

Batches: ``image`` (B, C, X, Y, Z) float; ``label`` (B, R, X, Y, Z) region channels (0/1
float). Outputs are region logits; probabilities are ``sigmoid(logits)``.

Validation runs sliding-window inference on whole volumes and logs ``val/dice_<region>``
and ``val/dice_mean`` (BraTS convention: empty truth and empty prediction count as 1, empty
truth with a prediction as 0); on the last epoch, and in ``test``, also ``val/hd95_<region>``
in mm. Per-case sums are reduced across DDP ranks, so each case counts exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from brats_pipeline.constants import get_task

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "plateau", "poly")


class BratsSegmentationModule(pl.LightningModule):
    """Train and validate a segmentation network on region channels.

    Args:
        network: registry name (``unet3d``, ``attention_unet``, ...) or an ``nn.Module``.
        network_kwargs: options for :func:`brats_pipeline.networks.build_network`.
        task: task name; decides region names (and the label scheme used downstream).
        in_channels: input channels; default: the task's number of modalities.
        loss: loss name for :func:`brats_pipeline.losses.build_loss` (sigmoid mode).
        loss_kwargs: options for the loss.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (Nesterov, momentum 0.99 as in nnU-Net).
        lr: initial learning rate.
        weight_decay: L2 / decoupled weight decay.
        scheduler: ``none``, ``cosine`` (with linear warm-up), ``plateau`` (ReduceLROnPlateau on
            ``val/dice_mean``) or ``poly`` (power 0.9).
        warmup_epochs: linear warm-up epochs for ``cosine``.
        roi_size: sliding-window size (x, y, z) for validation/prediction.
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap fraction.
        blend_mode: ``gaussian`` or ``constant``.
        hd95_every_n_epochs: also compute HD95 every n epochs (0: only the last epoch and test).
    """

    def __init__(
        self,
        network: str | nn.Module = "unet3d",
        network_kwargs: dict[str, Any] | None = None,
        task: str = "brats2021",
        in_channels: int | None = None,
        loss: str = "dice_ce",
        loss_kwargs: dict[str, Any] | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        scheduler: str = "cosine",
        warmup_epochs: int = 1,
        roi_size: Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 2,
        overlap: float = 0.5,
        blend_mode: str = "gaussian",
        hd95_every_n_epochs: int = 0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.task = get_task(task)
        self.region_names = self.task.region_names
        in_channels = len(self.task.modalities) if in_channels is None else int(in_channels)
        if isinstance(network, nn.Module):
            self.save_hyperparameters(ignore=["network"])
            self.network = network
        else:
            self.save_hyperparameters()
            from brats_pipeline.networks import build_network

            self.network = build_network(network, in_channels, len(self.region_names), spatial_dims=3, **(network_kwargs or {}))
        from brats_pipeline.losses import build_loss

        self.loss_fn = build_loss(loss, mode="sigmoid", **(loss_kwargs or {}))
        self._val_sums: torch.Tensor | None = None
        self._hd_sums: torch.Tensor | None = None

    # ------------------------------------------------------------------ model
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    def inferer(self) -> Any:
        from monai.inferers import SlidingWindowInferer

        return SlidingWindowInferer(
            roi_size=tuple(self.hparams.roi_size), sw_batch_size=self.hparams.sw_batch_size,
            overlap=self.hparams.overlap, mode=self.hparams.blend_mode,
        )

    def sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        """Region logits for whole volumes (B, C, X, Y, Z) by sliding-window inference."""
        return self.inferer()(image, self.network)

    # --------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        logits = self.network(image)
        loss = self.loss_fn(logits, label)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=image.shape[0], sync_dist=True)
        return loss

    # ------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._start_accumulating()

    def on_test_epoch_start(self) -> None:
        self._start_accumulating()

    def _start_accumulating(self) -> None:
        n = len(self.region_names)
        self._val_sums = torch.zeros(n + 1, device=self.device, dtype=torch.float64)  # dice per region + count
        self._hd_sums = torch.zeros(2 * n, device=self.device, dtype=torch.float64)  # hd sum + finite count

    def _want_hd95(self) -> bool:
        if self.trainer.testing:
            return True
        every = self.hparams.hd95_every_n_epochs
        last = self.trainer.max_epochs is not None and self.current_epoch == self.trainer.max_epochs - 1
        return last or (every > 0 and (self.current_epoch + 1) % every == 0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch)

    def _evaluate(self, batch: dict[str, Any]) -> None:
        from monai.metrics import compute_dice, compute_hausdorff_distance

        image, label = batch["image"], batch["label"]
        pred = (torch.sigmoid(self.sliding_window(image)) > 0.5).float()
        truth = (label > 0.5).float()
        dice = compute_dice(pred, truth, include_background=True, ignore_empty=False)  # (B, R)
        # 0 for the copy a DDP rank without a case of its own evaluates (BratsDataModule.EvalShardSampler)
        weight = batch.get("eval_weight")
        weight = torch.ones(dice.shape[0]) if weight is None else torch.as_tensor(weight).reshape(-1)
        weight = weight.to(dice.device, torch.float64)
        self._val_sums[:-1] += (dice.double() * weight[:, None]).sum(0)
        self._val_sums[-1] += weight.sum()
        if self._want_hd95():
            spacing = _spacing_of(image)
            for b in range(pred.shape[0]):
                if weight[b] == 0:
                    continue
                hd = compute_hausdorff_distance(
                    pred[b : b + 1], truth[b : b + 1], include_background=True, percentile=95, spacing=spacing
                )[0]
                finite = torch.isfinite(hd)
                n = len(self.region_names)
                self._hd_sums[:n] += torch.where(finite, hd, torch.zeros_like(hd)).double()
                self._hd_sums[n:] += finite.double()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, prefix: str) -> None:
        sums, hd = self._val_sums, self._hd_sums
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(hd)
        count = sums[-1].clamp_min(1)
        dice = sums[:-1] / count
        for name, value in zip(self.region_names, dice):
            self.log(f"{prefix}/dice_{name}", value.float(), sync_dist=False)
        self.log(f"{prefix}/dice_mean", dice.mean().float(), prog_bar=True, sync_dist=False)
        self.log(f"{prefix}/cases", sums[-1].float(), sync_dist=False)
        n = len(self.region_names)
        if hd[n:].sum() > 0:
            for i, name in enumerate(self.region_names):
                if hd[n + i] > 0:
                    self.log(f"{prefix}/hd95_{name}", (hd[i] / hd[n + i]).float(), sync_dist=False)

    # ---------------------------------------------------------------- predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Region probabilities (B, R, X, Y, Z) in the preprocessed grid."""
        return torch.sigmoid(self.sliding_window(batch["image"]))

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.network.parameters()
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.99, nesterov=True, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=10)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/dice_mean", "interval": "epoch"}}
        total = max(1, int(self.trainer.max_epochs or 1))
        warmup = max(0, int(hp.warmup_epochs)) if hp.scheduler == "cosine" else 0

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = min(1.0, (epoch - warmup) / max(1, total - warmup))
            if hp.scheduler == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            return (1 - progress) ** 0.9

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _spacing_of(image: Any) -> list[float] | None:
    """Voxel size (x, y, z) in mm of a MetaTensor batch, or ``None``."""
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    affine = torch.as_tensor(affine)
    if affine.ndim == 3:
        affine = affine[0]
    return [float(v) for v in torch.linalg.norm(affine[:3, :3].double(), dim=0)]
