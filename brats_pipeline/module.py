"""The one LightningModule: any network, any loss, sliding-window validation with per-region Dice.

A new architecture is a new file in :mod:`brats_pipeline.networks`, never a new module here:
:class:`BratsSegmentationModule` receives objects — the network (an ``nn.Module`` built
elsewhere, e.g. by a MONAI bundle config, or a registry name + options), the loss (an
``nn.Module`` such as MONAI's ``DiceCELoss``, or a name), the optimiser and learning-rate
schedule (callables, as LightningCLI's ``OptimizerCallable`` and ``LRSchedulerCallable``:
``--model.optimizer torch.optim.SGD --model.optimizer.lr 0.01``) and the whole-volume inferer
(a MONAI ``Inferer``, or its parameters). Names and parameters are conveniences for configs
and the command line; an object given is used as it is.

Batches: ``image`` (B, C, X, Y, Z) float; ``label`` (B, R, X, Y, Z) region channels (0/1
float). Outputs are region logits; probabilities are ``sigmoid(logits)``. With
``output_mode="softmax"`` the network outputs one logit per class of the task's label scheme
(background included), ``label`` is class indices (B, 1, X, Y, Z) and probabilities are
``softmax(logits)`` over the channels. The dimensionality
comes from the network: a 2D network trains on slices ``(B, C·(2k+1), H, W)`` (``k = context``
neighbours each side as channels for 2.5D) and validates on whole volumes slice by slice.

Validation runs sliding-window inference on whole volumes and logs ``val/dice_<region>``
and ``val/dice_mean`` (BraTS convention: empty truth and empty prediction count as 1, empty
truth with a prediction as 0); on the last epoch, and in ``test``, also ``val/hd95_<region>``
in mm: :func:`brats_pipeline.metrics.brats_hd95`, the BraTS HD95 that ``brats-evaluate`` reports
(both empty 0, exactly one empty 373.13 mm), mean over cases. Per-case sums are reduced across
DDP ranks, so each case counts exactly once.
``val/loss`` is the training loss on the validation volumes' sliding-window logits (mean over
cases), so that training and validation loss can be compared. In softmax mode the region Dice
(and HD95) is that of the argmax label map's regions, so ``val/dice_mean`` (checkpointing,
early stopping) means the same in both modes, and validation also logs
``val/dice_label_<key>`` per label of the scheme (``task.label_keys``: NCR, ED, ET) and
``val/accuracy`` (:func:`brats_pipeline.metrics.voxel_accuracy` of the label maps). The sums
behind these metrics are :class:`brats_pipeline.validation.ValidationSums`.

Checkpoints say which network they hold: ``checkpoint["network"]`` is
:func:`brats_pipeline.networks.network_config` of the network (registry name, channels,
dimensionality, options) whether it was named here or built elsewhere with
:func:`~brats_pipeline.networks.build_network` (a bundle's ``network_def``), and the
hyper-parameters ``network``/``network_kwargs`` name it too; a network built some other way is
recorded by its class path (``{"class_path": ..., "init_args": None}``: its options are unknown).
The optimiser and schedule are not hyper-parameters (they belong to the run, see
:mod:`brats_pipeline.schedules` for resuming); their state is in the checkpoint as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from brats_pipeline.constants import check_output_mode, get_task
from brats_pipeline.schedules import ProgressLR
from brats_pipeline.validation import ValidationSums


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The module's optimiser when none is given: AdamW, lr 1e-3, weight decay 1e-5."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-5)


def default_lr_scheduler(optimizer: torch.optim.Optimizer) -> ProgressLR:
    """The module's schedule when none is given: one warm-up epoch, then cosine to 0 over the run."""
    return ProgressLR(optimizer, "cosine", warmup_epochs=1)


class BratsSegmentationModule(pl.LightningModule):
    """Train and validate a segmentation network on region channels.

    Args:
        network: registry name (``unet3d``, ``attention_unet``, ...) or an ``nn.Module``.
        network_kwargs: options for :func:`brats_pipeline.networks.build_network`.
        task: task name; decides region names (and the label scheme used downstream).
        in_channels: image channels (modalities); default: the number of ``modalities``. A
            2.5D network (``context > 0``) takes ``in_channels * (2 * context + 1)``.
        modalities: the modalities the network reads, a subset of the task's (names or aliases;
            channels in the task's order, :mod:`brats_pipeline.data.modalities`); default: all of
            them. Recorded in the hyper-parameters (and so in checkpoints, for the predictor);
            ``brats-train`` links it to ``data.modalities``.
        loss: the loss, ``(logits, target) -> scalar``: an ``nn.Module`` (e.g. MONAI
            ``DiceCELoss(sigmoid=True)``; it must fit ``output_mode``: region channels with
            sigmoid, class indices with softmax), or a name for
            :func:`brats_pipeline.losses.build_loss`, built in ``output_mode`` (softmax: ``ce``,
            ``dice``, ``dice_ce``, ``dice_focal``, ... with class-index targets).
        loss_kwargs: options for a loss given by name.
        optimizer: ``params -> Optimizer`` (LightningCLI ``OptimizerCallable``), e.g.
            ``functools.partial(torch.optim.SGD, lr=0.01, momentum=0.99, nesterov=True)``;
            default :func:`default_optimizer` (AdamW 1e-3, weight decay 1e-5).
        lr_scheduler: ``optimizer -> scheduler`` (``LRSchedulerCallable``) or ``None`` (constant
            rate). A :class:`~brats_pipeline.schedules.ProgressLR` is bound to the trainer's run
            length and stepped every optimiser step; ``ReduceLROnPlateau`` is stepped every
            epoch on ``val/dice_mean`` (give it ``mode="max"``); any other scheduler every epoch.
            Default :func:`default_lr_scheduler` (one warm-up epoch, then cosine).
        inferer: the whole-volume inferer of validation/test/predict, ``(volumes, network) ->
            logits`` (a MONAI ``SlidingWindowInferer``, ``SliceInferer``, or
            :func:`brats_pipeline.inference.inferers.build_inferer`'s); ``None`` builds one from
            ``roi_size``, ``sw_batch_size``, ``overlap``, ``blend_mode``, ``slice_axis``, ``context``.
        roi_size: sliding-window size (x, y, z) for validation/prediction; for a 2D network the
            two in-plane sizes (or x, y, z, the slice axis' entry ignored).
        sw_batch_size: windows (2D: slices) per forward pass.
        overlap: sliding-window overlap fraction.
        blend_mode: ``gaussian`` or ``constant``.
        slice_axis: 2D networks: the volume axis slices are taken across (0 = x, 1 = y, 2 = z).
        context: 2D networks: neighbouring slices on each side stacked as channels (2.5D); the
            network then takes ``in_channels * (2 * context + 1)`` channels.
        hd95_every_n_epochs: also compute HD95 every n epochs (0: only the last epoch and test).
        output_mode: ``sigmoid`` (one output channel per region, the default) or ``softmax`` (one
            per class of the task's label scheme, background included: BraTS 2021 {0, 1, 2, 4} ->
            4 classes; targets are class indices). Recorded in the hyper-parameters (checkpoints).
    """

    def __init__(
        self,
        network: str | nn.Module = "unet3d",
        network_kwargs: dict[str, Any] | None = None,
        task: str = "brats2021",
        in_channels: int | None = None,
        modalities: Sequence[str] | None = None,
        loss: str | nn.Module = "dice_ce",
        loss_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = default_lr_scheduler,
        inferer: Callable[..., Any] | None = None,
        roi_size: Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 2,
        overlap: float = 0.5,
        blend_mode: str = "gaussian",
        slice_axis: int = 2,
        context: int = 0,
        hd95_every_n_epochs: int = 0,
        output_mode: str = "sigmoid",
    ) -> None:
        super().__init__()
        if not callable(optimizer):
            raise ValueError(f"optimizer must be a callable (parameters -> optimizer), e.g. "
                             f"functools.partial(torch.optim.AdamW, lr=1e-3), got {optimizer!r}")
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise ValueError(f"lr_scheduler must be None or a callable (optimizer -> scheduler), e.g. "
                             f"functools.partial(brats_pipeline.schedules.ProgressLR, shape='poly'), got {lr_scheduler!r}")
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        from brats_pipeline.data.modalities import select_modalities

        self.task = select_modalities(get_task(task), modalities, "model.modalities")
        self.region_names = self.task.region_names
        self.output_mode = check_output_mode(output_mode)
        in_channels = len(self.task.modalities) if in_channels is None else int(in_channels)
        if modalities is not None and in_channels != len(self.task.modalities):
            raise ValueError(f"in_channels={in_channels}, but modalities {list(self.task.modality_names)} give "
                             f"{len(self.task.modalities)}; set one of them")
        from brats_pipeline.data.slices import check_context, check_slice_axis
        from brats_pipeline.networks import build_network, spatial_dims_of

        check_slice_axis(slice_axis)
        network_in = in_channels * (2 * check_context(context) + 1)  # 2.5D: neighbours as channels
        if inferer is not None and not callable(inferer):
            raise ValueError(f"inferer must be a MONAI inferer or a callable (inputs, network) -> logits, got {inferer!r}")
        objects = ["optimizer", "lr_scheduler", "inferer"]  # objects received are not hyper-parameters
        objects += [name for name, value in (("network", network), ("loss", loss)) if isinstance(value, nn.Module)]
        self.save_hyperparameters(ignore=objects)
        if isinstance(network, nn.Module):
            self.network = network
        else:
            self.network = build_network(network, network_in, self.task.output_channels(output_mode), **(network_kwargs or {}))
        self._inferer = inferer
        # the modalities read, in channel order (None: in_channels set alone to another count; unknown)
        self.hparams["modalities"] = list(self.task.modality_names) if in_channels == len(self.task.modalities) else None
        self.network_config = self._record_network(network_in)
        #: 2 (slices; 2.5D with ``context``) or 3 (volumes): what the data module and inferer follow
        self.spatial_dims = spatial_dims_of(self.network, default=3)
        if context and self.spatial_dims != 2:
            raise ValueError(f"context={context} (2.5D) needs a 2D network; {type(self.network).__name__} is {self.spatial_dims}D")
        if inferer is not None:
            self._record_inferer(inferer)
        self.inferer()  # validates roi_size, overlap, blend_mode for this dimensionality
        self.loss_fn = self._build_loss(loss, loss_kwargs, output_mode)
        self._scores: ValidationSums | None = None  # the epoch's per-case sums (validation, test)
        #: optimiser steps whose gradients were not finite (zeroed; see :meth:`on_before_optimizer_step`)
        self.nonfinite_steps = 0

    # ------------------------------------------------------------------ model
    @property
    def modality_names(self) -> tuple[str, ...] | None:
        """The modalities the network reads, in channel order (``None``: not recorded)."""
        names = self.hparams.get("modalities")
        return None if names is None else tuple(names)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    @staticmethod
    def _build_loss(loss: str | nn.Module, loss_kwargs: dict[str, Any] | None, output_mode: str) -> nn.Module:
        if isinstance(loss, nn.Module):
            if loss_kwargs:
                raise ValueError(f"loss_kwargs {loss_kwargs} go with a loss given by name; {type(loss).__name__} was given "
                                 "as an object: set its options where it is built")
            return loss
        if not isinstance(loss, str):
            raise ValueError(f"loss must be a loss name or an nn.Module (logits, target) -> scalar, got {loss!r}")
        from brats_pipeline.losses import build_loss

        if "mode" in (loss_kwargs or {}):
            raise ValueError(f"loss_kwargs {{'mode': {loss_kwargs['mode']!r}}}: the loss mode is the module's output_mode; "
                             "set --model.output_mode softmax (or sigmoid) instead")
        return build_loss(loss, mode=output_mode, **(loss_kwargs or {}))

    def _record_inferer(self, inferer: Any) -> None:
        """Write a received inferer's window settings into the hyper-parameters (checkpoints: the ``Predictor`` reads them).

        Raises:
            ValueError: its slice axis or 2.5D context differs from ``slice_axis``/``context``
                (the data module draws the training slices with those).
        """
        from brats_pipeline.inference.inferers import inferer_settings

        hp, window = self.hparams, inferer_settings(inferer)
        # a slice inferer says its slice axis (MONAI's spatial_dim) and 2.5D context (a plain SliceInferer: 0)
        theirs = {"slice_axis": window.get("spatial_dim"), "context": window.get("context", 0 if "spatial_dim" in window else None)}
        for name, value in theirs.items():
            if value is not None and int(value) != int(hp[name]):
                raise ValueError(f"the inferer's {name} is {value}, the module's {name} {hp[name]}; set {name}={value}")
        for name, field in (("roi_size", "roi_size"), ("sw_batch_size", "sw_batch_size"), ("overlap", "overlap"), ("blend_mode", "mode")):
            if window.get(field) is not None:
                hp[name] = window[field]

    def inferer(self) -> Any:
        """The MONAI inferer for whole volumes: the one received, else :func:`~brats_pipeline.inference.inferers.build_inferer`'s."""
        if self._inferer is not None:
            return self._inferer
        from brats_pipeline.inference.inferers import build_inferer

        hp = self.hparams
        return build_inferer(
            self.spatial_dims, roi_size=tuple(hp.roi_size), sw_batch_size=hp.sw_batch_size, overlap=hp.overlap,
            mode=hp.blend_mode, slice_axis=hp.get("slice_axis", 2), context=hp.get("context", 0),
        )

    def sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        """Region logits for whole volumes (B, C, X, Y, Z): sliding windows (3D) or slice by slice (2D, 2.5D)."""
        return self.inferer()(image, self.network)

    # --------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        logits = self.network(image)
        loss = self.loss_fn(logits, label)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=image.shape[0], sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the gradients of a step whose gradients are not all finite (e.g. a NaN loss), with a warning.

        One bad batch (a bf16 overflow, a degenerate crop) would otherwise write NaN into every
        weight for the rest of the run. Here the optimiser steps with zero gradients (AdamW then
        moves only by its momentum and weight decay), the weights stay finite, and the count of
        such steps is logged as ``train/nonfinite_steps``. Under DDP the gradients are already
        all-reduced here, so every rank takes the same decision.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            return
        for g in grads:
            g.zero_()
        self.nonfinite_steps += 1
        if self.trainer.is_global_zero:
            import warnings

            warnings.warn(f"step {self.global_step}: non-finite gradients (loss or overflow); the step's gradients "
                          f"were zeroed ({self.nonfinite_steps} such steps so far)", RuntimeWarning, stacklevel=1)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False, sync_dist=False)

    # ------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._start_accumulating()

    def on_test_epoch_start(self) -> None:
        self._start_accumulating()

    def _start_accumulating(self) -> None:
        self._scores = ValidationSums(self.task, self.output_mode, self.device)

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
        image = batch["image"]
        logits = self.sliding_window(image)
        self._scores.add(logits, batch["label"], image, self.loss_fn, batch.get("eval_weight"), self._want_hd95())

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _log_epoch_metrics(self, prefix: str) -> None:
        for name, value in self._scores.metrics(prefix).items():
            self.log(name, value, prog_bar=name == f"{prefix}/dice_mean", sync_dist=False)

    # ---------------------------------------------------------------- predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Probabilities in the preprocessed grid: regions (B, R, X, Y, Z) (sigmoid) or classes (B, C, X, Y, Z) (softmax)."""
        logits = self.sliding_window(batch["image"])
        return torch.softmax(logits, 1) if self.output_mode == "softmax" else torch.sigmoid(logits)

    # -------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        """The optimiser of :attr:`network`'s parameters and its schedule (see ``lr_scheduler``).

        Raises:
            ValueError: a :class:`~brats_pipeline.schedules.ProgressLR` for a run without a
                finite length (``max_epochs=-1`` and no ``max_steps``).
        """
        opt = self.optimizer_factory(self.network.parameters())
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(opt)
        if isinstance(sched, ProgressLR):
            trainer = self.trainer
            total = trainer.estimated_stepping_batches  # also sets up the training data
            per_epoch = None
            if math.isfinite(float(trainer.num_training_batches)):
                per_epoch = math.ceil(trainer.num_training_batches / max(1, trainer.accumulate_grad_batches))
            sched.bind(total, per_epoch)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/dice_mean", "interval": "epoch"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------- checkpoint
    def _record_network(self, network_in: int) -> dict[str, Any]:
        """What :attr:`network` is (saved in checkpoints); names it in the hyper-parameters when it can.

        Args:
            network_in: the input channels the data gives the network.

        Raises:
            ValueError: a registry-built network whose input or output channels do not fit the
                task (and 2.5D context).
        """
        from brats_pipeline.networks import default_spatial_dims, network_config

        config = network_config(self.network)
        if config is None:
            cls = type(self.network)
            return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": None}
        for what, built, wanted in (("input", config["in_channels"], network_in),
                                    ("output", config["out_channels"], self.task.output_channels(self.output_mode))):
            if built != wanted:
                raise ValueError(f"network {config['name']!r} was built with {built} {what} channels, but task "
                                 f"{self.task.name} (in_channels={self.hparams.in_channels}, context="
                                 f"{self.hparams.get('context', 0)}, output_mode={self.output_mode}) needs {wanted}")
        kwargs = dict(config["kwargs"])
        if config["spatial_dims"] != default_spatial_dims(config["name"]):
            kwargs["spatial_dims"] = config["spatial_dims"]  # build_network's keyword, passed with the options
        self.hparams["network"], self.hparams["network_kwargs"] = config["name"], kwargs
        return config

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which network the checkpoint holds (``checkpoint["network"]``, see :attr:`network_config`)."""
        import copy

        checkpoint["network"] = copy.deepcopy(self.network_config)
