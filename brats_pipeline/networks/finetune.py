"""Freeze a pretrained encoder for the first epochs, then fine-tune it: a Lightning callback.

The usual schedule for a U-Net on an ImageNet backbone (``resnet_unet``, ``mobilenet_unet``):
train the new decoder (and input adapter) on a frozen encoder first, so that its random
gradients do not wreck the pretrained features, then fine-tune everything, often with a
smaller learning rate for the encoder. :class:`EncoderFreeze` is built on Lightning's
:class:`~pytorch_lightning.callbacks.BaseFinetuning` (its freezing helpers and its hooks)::

    trainer:
      callbacks:
        - class_path: brats_pipeline.networks.finetune.EncoderFreeze
          init_args: {unfreeze_at_epoch: 5, lr_factor: 0.1}
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

log = logging.getLogger(__name__)


class EncoderFreeze(BaseFinetuning):
    """Keep ``pl_module.<submodule>`` (the pretrained encoder) frozen until ``unfreeze_at_epoch``.

    While frozen the encoder's weights do not change: its parameters get no update and, unless
    ``train_bn``, its BatchNorm layers are kept in eval mode, so they normalise with their
    pretrained running statistics in training as in validation and do not update them. Layers
    outside the submodule (decoder, head, the ``conv1x1`` input adapter) train from the start.
    From epoch ``unfreeze_at_epoch`` (0-based, as ``trainer.current_epoch``) on, everything trains.

    **Optimiser.** :class:`~brats_pipeline.module.BratsSegmentationModule` gives its optimiser
    all the network's parameters, frozen ones included; torch optimisers skip parameters
    without a gradient (weight decay included), so unfreezing needs no new parameter group and
    the encoder follows the one learning-rate schedule. ``lr_factor`` is applied without a
    parameter group of its own (torch >= 2.13 schedulers fail on groups added after they were
    built): after each optimiser step the encoder's parameters are moved back to
    ``old + lr_factor * (new - old)``, which is exactly the step with ``lr * lr_factor`` for
    optimisers whose step is proportional to the learning rate with state that does not depend
    on it (SGD with momentum, Adam, AdamW, RMSprop, Adagrad; not L-BFGS). It costs a copy of
    the encoder's parameters. A module whose optimiser leaves the frozen parameters out gets
    them back with BaseFinetuning's ``unfreeze_and_add_param_group`` (only without an LR scheduler on
    that optimiser).

    **How it freezes.** On one process by ``requires_grad = False`` (BaseFinetuning's way, which
    also saves the encoder's weight gradients). Under DDP (``trainer.world_size > 1``) that
    would be wrong: DDP leaves parameters that do not require a gradient out of its gradient
    all-reduce when it wraps the model, so after unfreezing every rank would train its own
    encoder (Lightning issue #20340). There ``requires_grad`` is left alone and the encoder's
    gradients are dropped before each optimiser step instead (same result, no saving).

    Args:
        unfreeze_at_epoch: first epoch in which the encoder trains; ``None``: frozen for the
            whole run (the pretrained encoder as a fixed feature extractor).
        lr_factor: the encoder's learning rate after unfreezing relative to the rest of the
            network's, > 0.
        train_bn: train the encoder's BatchNorm layers (affine parameters and running
            statistics, in train mode) even while the rest of it is frozen.
        submodule: dotted path from the LightningModule to the module to freeze; the default
            is the pretrained backbone of ``resnet_unet`` / ``mobilenet_unet``.

    Raises:
        ValueError: a negative or non-integer ``unfreeze_at_epoch``, ``lr_factor <= 0``, or (at
            ``fit``) a LightningModule without ``submodule``.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int | None,
        lr_factor: float = 1.0,
        train_bn: bool = False,
        submodule: str = "network.encoder",
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch is not None and (
            isinstance(unfreeze_at_epoch, bool) or not isinstance(unfreeze_at_epoch, int) or unfreeze_at_epoch < 0
        ):
            raise ValueError(f"unfreeze_at_epoch must be None or an int >= 0, got {unfreeze_at_epoch!r}")
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not (
            math.isfinite(lr_factor) and lr_factor > 0
        ):
            raise ValueError(f"lr_factor must be a finite number > 0, got {lr_factor!r}")
        if not isinstance(submodule, str) or not submodule:
            raise ValueError(f"submodule must be a dotted module path such as 'network.encoder', got {submodule!r}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_factor = float(lr_factor)
        self.train_bn = bool(train_bn)
        self.submodule = submodule
        self.frozen = False
        self._drop_grads = False  # DDP: drop the gradients instead of switching requires_grad
        self._dropped: list[nn.Parameter] = []  # parameters whose gradients are dropped (DDP, frozen)
        self._eval_bn: list[_BatchNorm] = []  # BatchNorm layers kept in eval mode (frozen, not train_bn)
        self._scaled: list[nn.Parameter] = []  # parameters whose steps are scaled by lr_factor (unfrozen)
        self._before_step: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ freezing
    def encoder(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module this callback freezes (``pl_module.<submodule>``)."""
        try:
            return pl_module.get_submodule(self.submodule)
        except AttributeError:
            raise ValueError(
                f"EncoderFreeze: {type(pl_module).__name__} has no submodule {self.submodule!r} to freeze "
                f"(its network is {type(getattr(pl_module, 'network', None)).__name__}); "
                "resnet_unet and mobilenet_unet have 'network.encoder'"
            ) from None

    @staticmethod
    def _distributed(trainer: pl.Trainer) -> bool:
        """Whether gradients are all-reduced across processes (then frozen by dropping gradients)."""
        return trainer.world_size > 1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._drop_grads = self._distributed(trainer)
        super().setup(trainer, pl_module, stage)  # calls freeze_before_training

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        encoder = self.encoder(pl_module)
        batch_norms = [m for m in encoder.modules() if isinstance(m, _BatchNorm)]
        self._eval_bn = [] if self.train_bn else batch_norms
        self._scaled, self._before_step = [], None
        if self._drop_grads:
            keep = {id(p) for m in batch_norms for p in m.parameters()} if self.train_bn else set()
            self._dropped = [p for p in encoder.parameters() if id(p) not in keep]
        else:
            self.freeze(encoder, train_bn=self.train_bn)
        self.frozen = True

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if not self.frozen or self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        encoder = self.encoder(pl_module)
        params = list(encoder.parameters())
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) not in held for p in params):  # a module that optimises only what requires a gradient
            if any(config.scheduler.optimizer is optimizer for config in pl_module.trainer.lr_scheduler_configs):
                raise ValueError(
                    f"EncoderFreeze: the optimiser does not hold {self.submodule}'s parameters and has an LR "
                    "scheduler, which cannot take a parameter group added during training; give the optimiser "
                    "all parameters (frozen ones get no gradient and no update), as BratsSegmentationModule does"
                )
            self.unfreeze_and_add_param_group(encoder, optimizer, lr=optimizer.param_groups[0]["lr"])
        self.make_trainable(encoder)  # requires_grad and BatchNorm running statistics back on
        for bn in self._eval_bn:
            bn.train(pl_module.training)
        self._eval_bn, self._dropped, self.frozen = [], [], False
        self._scaled = params if self.lr_factor != 1.0 else []
        log.info("EncoderFreeze: %s trains from epoch %d (lr factor %g)", self.submodule, epoch, self.lr_factor)

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        for bn in self._eval_bn:  # after any .train() (e.g. the end of validation) put them back
            bn.eval()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        for p in self._dropped:  # DDP while frozen: no gradient, so no update and no weight decay
            p.grad = None
        if self._scaled:
            self._before_step = [p.detach().clone() for p in self._scaled]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._before_step is not None:  # the optimiser has stepped: keep lr_factor of the step
            with torch.no_grad():
                for p, old in zip(self._scaled, self._before_step, strict=True):
                    p.lerp_(old, 1.0 - self.lr_factor)
            self._before_step = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Leave the module trainable, as it was, when the run ends frozen."""
        if self.frozen:
            self.make_trainable(self.encoder(pl_module))
            for bn in self._eval_bn:
                bn.train(pl_module.training)
        self._eval_bn, self._dropped, self._scaled, self._before_step, self.frozen = [], [], [], None, False
