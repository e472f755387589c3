"""EncoderFreeze: a frozen encoder does not change in real Lightning runs; after unfreezing it trains."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from brats_pipeline.module import BratsSegmentationModule
from brats_pipeline.networks.finetune import EncoderFreeze

TINY = {"decoder_channels": [8, 8, 8, 8, 8]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Slices(Dataset):
    """Four 3-channel 32x32 slices, a bright square labelled 1 on noise (LGG: one region)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.image = torch.randn(4, 3, 32, 32, generator=g)
        self.label = torch.zeros(4, 1, 32, 32)
        self.image[:, :, 8:20, 10:22] += 2.0
        self.label[:, :, 8:20, 10:22] = 1.0

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "label": self.label[i]}


class Recorder(pl.Callback):
    """Per epoch: the encoder's state and the decoder's parameters; per step: flags and learning rates."""

    def __init__(self) -> None:
        self.encoder: list[dict[str, torch.Tensor]] = []
        self.decoder: list[list[torch.Tensor]] = []
        self.steps: list[dict] = []

    @staticmethod
    def _encoder_state(pl_module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in pl_module.network.encoder.state_dict().items()}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.encoder.append(self._encoder_state(pl_module))
        self.decoder.append([p.detach().clone() for p in pl_module.network.decoder.parameters()])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.encoder.append(self._encoder_state(pl_module))
        self.decoder.append([p.detach().clone() for p in pl_module.network.decoder.parameters()])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        encoder = pl_module.network.encoder
        enc_ids = {id(p) for p in encoder.parameters()}
        self.steps.append({
            "epoch": trainer.current_epoch,
            "bn_training": {m.training for m in encoder.modules() if isinstance(m, _BatchNorm)},
            "requires_grad": {p.requires_grad for p in encoder.parameters()},
            "encoder_grads": any(p.grad is not None for p in encoder.parameters()),
            "lrs": [g["lr"] for g in optimizer.param_groups],
            "groups": [{id(p) in enc_ids for p in g["params"]} for g in optimizer.param_groups],
        })


def _fit(callbacks, max_epochs: int, ckpt_path=None, module=None, batches: int = 2) -> tuple[BratsSegmentationModule, pl.Trainer]:
    torch.manual_seed(0)
    module = module or BratsSegmentationModule("mobilenet_unet", TINY, task="lgg", roi_size=(32, 32))
    trainer = pl.Trainer(
        max_epochs=max_epochs, limit_train_batches=batches, limit_val_batches=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(module, DataLoader(Slices(), batch_size=2), ckpt_path=ckpt_path)
    return module, trainer


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _changed_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], module) -> bool:
    names = {n for n, _ in module.network.encoder.named_parameters()}
    return any(not torch.equal(a[k], b[k]) for k in names)


def _check_frozen_then_trained(rec: Recorder, module, unfreeze_at: int) -> None:
    for epoch in range(1, unfreeze_at + 1):  # after epochs 0 .. unfreeze_at - 1: weights, BN statistics, counters
        assert _same(rec.encoder[epoch], rec.encoder[0]), epoch
    assert any(not torch.equal(a, b) for a, b in zip(rec.decoder[1], rec.decoder[0]))  # the decoder trains
    after = rec.encoder[unfreeze_at + 1]
    assert _changed_params(after, rec.encoder[unfreeze_at], module)
    running = [k for k in after if k.endswith("running_mean")]
    assert any(not torch.equal(after[k], rec.encoder[0][k]) for k in running)  # BN statistics move again
    frozen = [s for s in rec.steps if s["epoch"] < unfreeze_at]
    trained = [s for s in rec.steps if s["epoch"] >= unfreeze_at]
    assert frozen and trained
    assert all(s["bn_training"] == {False} and not s["encoder_grads"] for s in frozen)
    assert all(s["bn_training"] == {True} and s["encoder_grads"] and s["requires_grad"] == {True} for s in trained)


def test_encoder_is_frozen_until_the_epoch_then_trains_in_the_same_group() -> None:
    rec = Recorder()
    module, trainer = _fit([EncoderFreeze(unfreeze_at_epoch=2), rec], max_epochs=3)
    _check_frozen_then_trained(rec, module, unfreeze_at=2)
    assert all(s["requires_grad"] == {False} for s in rec.steps if s["epoch"] < 2)  # requires_grad on one process
    assert all(len(s["lrs"]) == 1 for s in rec.steps)  # the module's optimiser held the encoder all along
    assert all(p.requires_grad for p in module.network.parameters())


def test_frozen_for_the_whole_run_and_left_trainable_afterwards() -> None:
    rec = Recorder()
    module, _ = _fit([EncoderFreeze(unfreeze_at_epoch=None), rec], max_epochs=2)
    assert _same(rec.encoder[-1], rec.encoder[0])
    assert all(p.requires_grad for p in module.network.encoder.parameters())  # teardown undid the freeze
    assert all(m.training and m.track_running_stats for m in module.network.encoder.modules() if isinstance(m, _BatchNorm))


def test_train_bn_keeps_batch_norm_training_while_the_rest_is_frozen() -> None:
    rec = Recorder()
    module, _ = _fit([EncoderFreeze(unfreeze_at_epoch=None, train_bn=True), rec], max_epochs=1)
    before, after = rec.encoder
    bn = {n for n, m in module.network.encoder.named_modules() if isinstance(m, _BatchNorm)}
    changed = {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= bn  # only BatchNorm weights / statistics moved
    assert all(s["bn_training"] == {True} for s in rec.steps)


def test_lr_factor_scales_the_encoders_steps_exactly(tmp_path) -> None:
    """Two runs alike but for lr_factor: the (one) step after unfreezing differs by exactly that factor."""
    runs = {}
    for factor in (1.0, 0.1):
        rec = Recorder()
        module, trainer = _fit([EncoderFreeze(unfreeze_at_epoch=1, lr_factor=factor), rec], max_epochs=2, batches=1)
        _check_frozen_then_trained(rec, module, unfreeze_at=1)
        assert all(len(s["lrs"]) == 1 for s in rec.steps)  # no parameter group added: the schedule is untouched
        runs[factor] = (rec, module, trainer)
    (full, _, _), (tenth, module, trainer) = runs[1.0], runs[0.1]
    assert [s["lrs"] for s in full.steps] == [s["lrs"] for s in tenth.steps]
    assert _same(full.encoder[1], tenth.encoder[1])  # identical up to the unfreezing (deterministic CPU run)
    for name, _ in module.network.encoder.named_parameters():  # one AdamW step (with weight decay)
        start, step_full, step_tenth = full.encoder[1][name], full.encoder[2][name] - full.encoder[1][name], \
            tenth.encoder[2][name] - tenth.encoder[1][name]
        torch.testing.assert_close(step_tenth, 0.1 * step_full, rtol=1e-3, atol=1e-6 * float(start.abs().max().clamp_min(1)))

    ckpt = tmp_path / "last.ckpt"  # resuming after the unfreezing: the encoder trains on, at the same factor
    trainer.save_checkpoint(ckpt)
    resumed = Recorder()
    fresh = BratsSegmentationModule("mobilenet_unet", TINY, task="lgg", roi_size=(32, 32))
    module2, _ = _fit([EncoderFreeze(unfreeze_at_epoch=1, lr_factor=0.1), resumed], max_epochs=3, ckpt_path=ckpt,
                      module=fresh, batches=1)
    assert [s["epoch"] for s in resumed.steps] == [2]
    assert all(s["requires_grad"] == {True} and s["encoder_grads"] for s in resumed.steps)
    assert _changed_params(resumed.encoder[-1], resumed.encoder[0], module2)


def test_under_ddp_gradients_are_dropped_instead_of_switching_requires_grad(monkeypatch) -> None:
    monkeypatch.setattr(EncoderFreeze, "_distributed", staticmethod(lambda trainer: True))
    rec = Recorder()
    module, _ = _fit([EncoderFreeze(unfreeze_at_epoch=1), rec], max_epochs=2)
    _check_frozen_then_trained(rec, module, unfreeze_at=1)
    assert all(s["requires_grad"] == {True} for s in rec.steps)  # DDP's reducer keeps every parameter


def test_usable_from_a_lightning_cli_yaml() -> None:
    from pytorch_lightning.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_lightning_class_args(pl.Trainer, "trainer")
    config = parser.parse_string(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: brats_pipeline.networks.finetune.EncoderFreeze\n"
        "      init_args: {unfreeze_at_epoch: 5, lr_factor: 0.1}\n"
    )
    (callback,) = parser.instantiate_classes(config).trainer.callbacks
    assert isinstance(callback, EncoderFreeze)
    assert (callback.unfreeze_at_epoch, callback.lr_factor, callback.train_bn, callback.submodule) == (5, 0.1, False, "network.encoder")


def test_bad_unfreeze_epoch_rejected() -> None:
    with pytest.raises(ValueError, match="unfreeze_at_epoch must be None or an int >= 0, got -1"):
        EncoderFreeze(unfreeze_at_epoch=-1)


def test_bad_lr_factor_rejected() -> None:
    with pytest.raises(ValueError, match="lr_factor must be a finite number > 0, got 0"):
        EncoderFreeze(unfreeze_at_epoch=1, lr_factor=0)


def test_network_without_the_submodule_is_named() -> None:
    module = BratsSegmentationModule("unet2d", {"channels": [4, 8], "strides": [2]}, task="lgg", roi_size=(32, 32))
    with pytest.raises(ValueError, match="BratsSegmentationModule has no submodule 'network.encoder'.*UNet"):
        _fit([EncoderFreeze(unfreeze_at_epoch=1)], max_epochs=1, module=module)
