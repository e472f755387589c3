"""The LightningModule receives objects (issue #15): a loss module and a MONAI inferer are used as given."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.losses import DiceCELoss, DiceLoss

from brats_pipeline.inference.inferers import ContextSliceInferer
from brats_pipeline.module import BratsSegmentationModule

TINY3D = {"features": [4, 4, 8, 8, 16, 4]}


def test_a_loss_module_is_the_training_and_validation_loss() -> None:
    loss = DiceCELoss(sigmoid=True, lambda_ce=0.25)
    module = BratsSegmentationModule("unet3d", TINY3D, task="lgg", loss=loss, roi_size=(32, 32, 32))
    assert module.loss_fn is loss and "loss" not in module.hparams
    torch.manual_seed(0)
    image, label = torch.randn(2, 3, 32, 32, 32), (torch.rand(2, 1, 32, 32, 32) > 0.7).float()
    step = module.training_step({"image": image, "label": label}, 0)
    assert torch.allclose(step, loss(module.network(image), label))  # not the named dice_ce (lambda_ce 1)
    named = BratsSegmentationModule("unet3d", TINY3D, task="lgg", roi_size=(32, 32, 32))
    named.network.load_state_dict(module.network.state_dict())
    assert not torch.allclose(step, named.training_step({"image": image, "label": label}, 0))


def test_loss_options_go_with_a_loss_name_not_an_object() -> None:
    with pytest.raises(ValueError, match="loss_kwargs .* go with a loss given by name; DiceLoss was given as an object"):
        BratsSegmentationModule("unet3d", TINY3D, task="lgg", loss=DiceLoss(sigmoid=True), loss_kwargs={"smooth_nr": 0.0})
    with pytest.raises(ValueError, match="loss must be a loss name or an nn.Module"):
        BratsSegmentationModule("unet3d", TINY3D, task="lgg", loss=3)


def test_an_inferer_object_runs_validation_and_is_recorded_for_the_predictor() -> None:
    inferer = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=3, overlap=0.25, mode="constant")
    module = BratsSegmentationModule("unet3d", TINY3D, task="lgg", inferer=inferer)
    assert module.inferer() is inferer
    hp = module.hparams
    assert (list(hp.roi_size), hp.sw_batch_size, hp.overlap, hp.blend_mode) == ([32, 32, 32], 3, 0.25, "constant")
    volume = torch.randn(1, 3, 40, 36, 34)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.sliding_window(volume), inferer(volume, module.network))
    with pytest.raises(ValueError, match="inferer must be a MONAI inferer or a callable"):
        BratsSegmentationModule("unet3d", TINY3D, task="lgg", inferer="sliding_window")


def test_a_slice_inferer_must_agree_with_the_module_on_slice_axis_and_context() -> None:
    net = {"channels": [4, 8], "strides": [2]}
    two_five = ContextSliceInferer(2, 1, roi_size=(16, 16), sw_batch_size=4)
    module = BratsSegmentationModule("unet2d", net, task="lgg", context=1, inferer=two_five)
    assert module.inferer() is two_five and list(module.hparams.roi_size) == [16, 16]
    with pytest.raises(ValueError, match="the inferer's context is 1, the module's context 0"):
        BratsSegmentationModule("unet2d", net, task="lgg", inferer=two_five)
    with pytest.raises(ValueError, match="the inferer's slice_axis is 0, the module's slice_axis 2"):
        BratsSegmentationModule("unet2d", net, task="lgg", inferer=SliceInferer(spatial_dim=0, roi_size=(16, 16)))


def test_brats_train_builds_the_loss_and_inferer_objects_from_the_command_line(tmp_path) -> None:  # noqa: ANN001
    """``--model.loss <class>`` / ``--model.inferer <class>``: LightningCLI instantiates them and the module receives them."""
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort
    from brats_pipeline.training_cli import CONFIG_DIR, build_cli

    write_cohort(tmp_path / "data", "brats2021", n_cases=2, shape=(32, 32, 32), seed=0)
    datalist = write_datalist(build_datalist(tmp_path / "data", "brats2021", folds=2, seed=0), tmp_path / "datalist.json")
    cli = build_cli(["--config", str(CONFIG_DIR / "tiny_cpu.yaml"), "--data.datalist", str(datalist),
                     "--model.loss", "monai.losses.DiceFocalLoss", "--model.loss.sigmoid", "true",
                     "--model.inferer", "monai.inferers.SlidingWindowInferer", "--model.inferer.roi_size", "[32, 32, 32]",
                     "--model.inferer.overlap", "0.25", "--trainer.default_root_dir", str(tmp_path / "run"),
                     "--trainer.logger", "false"], run=False)
    from monai.losses import DiceFocalLoss

    assert isinstance(cli.model.loss_fn, DiceFocalLoss) and cli.model.loss_fn.dice.sigmoid
    assert isinstance(cli.model.inferer(), SlidingWindowInferer) and cli.model.inferer().overlap == 0.25
    assert list(cli.model.hparams.roi_size) == [32, 32, 32] and cli.model.hparams.overlap == 0.25
