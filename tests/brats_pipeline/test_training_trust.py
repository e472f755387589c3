"""Training you can trust (issue 14): true curves, schedules that survive resume, self-describing checkpoints,
one way to set the optimiser, one log folder per run.

Real runs of ``brats-train`` (the tiny CPU config) on 5 synthetic 48×48×32 cases: a 1-epoch run, then the
same run resumed from its ``last.ckpt`` with ``--trainer.max_epochs 2`` (the cosine schedule of the first
run had ended at learning rate 0).
"""

from __future__ import annotations

import csv
import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from brats_pipeline.callbacks import TrainingCurves
from brats_pipeline.cli.train import CONFIG_DIR, build_cli
from brats_pipeline.data.datalist import build_datalist, write_datalist
from brats_pipeline.data.datamodule import BratsDataModule
from brats_pipeline.data.synthetic import write_cohort
from brats_pipeline.module import BratsSegmentationModule
from brats_pipeline.schedules import ProgressLR


@pytest.fixture(scope="module")
def datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root / "data", "brats2021", n_cases=5, shape=(48, 48, 32), seed=0)
    dl = build_datalist(root / "data", "brats2021", folds=2, seed=0)  # fold 0 (validation): 3 cases
    return write_datalist(dl, root / "datalist.json")


def _args(datalist: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIG_DIR / "tiny_cpu.yaml"), "--data.datalist", str(datalist),
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.enable_progress_bar", "false", *extra]


def _curves(cli) -> TrainingCurves:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, TrainingCurves))


def _csv_series(metrics_csv: Path) -> dict[str, tuple[list[float], list[float]]]:
    with open(metrics_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    return {k: ([float(r["epoch"]) for r in rows if r[k]], [float(r[k]) for r in rows if r[k]])
            for k in rows[0] if k not in ("epoch", "step")}


def _assert_curves_are_the_csv(plotted: dict, metrics_csv: Path) -> None:
    """Every drawn line (read back from matplotlib) is its metrics.csv column, point for point; none is missing."""
    series = _csv_series(metrics_csv)
    key_of = {"train loss": "train/loss_epoch", "validation loss": "val/loss"}
    drawn = {label: xy for axis in plotted.values() for label, xy in axis.items()}
    assert set(drawn) == {"train loss", "validation loss", "TC", "WT", "ET", "mean"}
    for label, (xs, ys) in drawn.items():
        assert (xs, ys) == series[key_of.get(label, f"val/dice_{label}")], label


@pytest.fixture(scope="module")
def runs(datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 1-epoch run, then resumed from its last.ckpt to 2 epochs (the first schedule had reached 0)."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("run")
    first = build_cli(_args(datalist, out, "--trainer.max_epochs", "1"))
    run = out / "logs" / "version_0"
    one = {"plotted": _curves(first).plotted, "csv": (run / "metrics.csv").read_text(),
           "ckpt": torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = build_cli(_args(datalist, out, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")))
    two = {"plotted": _curves(second).plotted, "warnings": [str(w.message) for w in caught],
           "ckpt": torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)}
    return {"out": out, "run": run, "one": one, "two": two}


# ----------------------------------------------------------------------------- 1: curves
def test_one_epoch_curves_are_that_epochs_metrics(runs: dict, tmp_path: Path) -> None:
    one = runs["one"]
    (tmp_path / "metrics.csv").write_text(one["csv"])
    assert one["plotted"]["loss"]["train loss"][0] == [0.0]
    _assert_curves_are_the_csv(one["plotted"], tmp_path / "metrics.csv")


def test_val_loss_is_the_loss_on_the_validation_volumes(runs: dict) -> None:
    """Recomputed from the checkpoint of that epoch: the mean over the 3 validation cases of the training loss."""
    ckpt_path = runs["run"] / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module = BratsSegmentationModule.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    settings = {k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if not k.startswith("_")}  # CLI's own keys
    data = BratsDataModule(**{**settings, "num_workers": 0, "cache": "none"})
    data.setup("validate")
    with torch.no_grad():
        losses = [float(module.loss_fn(module.sliding_window(b["image"]), b["label"].float())) for b in data.val_dataloader()]
    logged = _csv_series(runs["run"] / "metrics.csv")["val/loss"][1]
    assert len(losses) == 3
    assert logged[-1] == pytest.approx(np.mean(losses), rel=1e-5)


# ----------------------------------------------------------------------------- 7: one log folder
def test_resumed_run_logs_into_the_same_folder_and_draws_the_whole_run(runs: dict) -> None:
    assert sorted(p.name for p in (runs["out"] / "logs").iterdir()) == ["version_0"]
    series = _csv_series(runs["run"] / "metrics.csv")
    assert series["train/loss_epoch"][0] == [0.0, 1.0]  # both runs, each epoch once
    assert runs["two"]["plotted"]["validation Dice"]["WT"][0] == [0.0, 1.0]
    _assert_curves_are_the_csv(runs["two"]["plotted"], runs["run"] / "metrics.csv")


# ----------------------------------------------------------------------------- 2: schedule on resume
def test_resuming_with_a_longer_schedule_trains_and_says_so(runs: dict) -> None:
    before, after = runs["one"]["ckpt"], runs["two"]["ckpt"]
    assert after["global_step"] == 2 * before["global_step"]
    change = max(float((after["state_dict"][k] - v).abs().max()) for k, v in before["state_dict"].items()
                 if k.startswith("network.") and v.is_floating_point())
    assert change > 1e-4  # it trained (at learning rate 0 nothing moved)
    said = [w for w in runs["two"]["warnings"] if "schedule continues on the new curve" in w]
    assert len(said) == 1 and "configured for 1 steps as a run of 2 steps" in said[0] and "0 -> 0.0015" in said[0]
    assert after["lr_schedulers"][0]["total_steps"] == 2 and after["lr_schedulers"][0]["last_epoch"] == 2


def test_a_schedule_over_an_endless_run_is_an_error(datalist: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no finite length"):  # max_time bounds the run if this ever trains
        build_cli(_args(datalist, tmp_path, "--trainer.max_epochs", "-1", "--trainer.max_time", "00:00:00:20"))


def test_progress_lr_curve_and_resume_rule() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = ProgressLR(opt, "cosine", warmup_steps=2)
    sched.bind(10)
    factors = [sched.factor(s) for s in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(factors[2:], factors[3:])) and factors[-1] > 0  # the last step still learns
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / 3)
    for _ in range(6):
        opt.step()
        sched.step()
    state = sched.state_dict()
    for total in (20, 8):  # lengthened or shortened: the new curve at the same step
        opt2 = torch.optim.SGD([param], lr=1.0)
        resumed = ProgressLR(opt2, "cosine", warmup_steps=2)
        resumed.bind(total)
        with pytest.warns(UserWarning, match=f"configured for 10 steps as a run of {total} steps"):
            resumed.load_state_dict(state)
        assert resumed.last_epoch == 6 and resumed.total_steps == total
        assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + np.cos(np.pi * 4 / (total - 2))))
    with pytest.raises(ValueError, match="no finite length"):
        ProgressLR(torch.optim.SGD([param], lr=1.0)).bind(float("inf"))
    with pytest.raises(ValueError, match="unknown schedule shape 'step'"):
        ProgressLR(opt, "step")


# ----------------------------------------------------------------------------- 5: one optimiser path
def test_top_level_optimizer_flag_does_not_exist(datalist: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        build_cli(_args(datalist, tmp_path, "--trainer.max_epochs", "1", "--optimizer", "torch.optim.Adam"))
    assert exc.value.code != 0


def test_model_optimizer_and_schedule_flags_reach_the_trainer(datalist: Path, tmp_path: Path) -> None:
    build_cli(_args(datalist, tmp_path, "--trainer.max_epochs", "1", "--model.optimizer", "torch.optim.SGD",
                    "--model.optimizer.lr", "0.05", "--model.optimizer.momentum", "0.9", "--model.lr_scheduler", "null"))
    ckpt = torch.load(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.05 and group["momentum"] == 0.9 and "betas" not in group  # SGD, not the config's AdamW
    assert ckpt["lr_schedulers"] == []


def test_print_config_shows_the_optimiser_once(datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        build_cli(_args(datalist, tmp_path, "--print_config"))
    assert exc.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert "optimizer" not in config and "lr_scheduler" not in config
    optimizer = config["model"]["optimizer"]
    assert optimizer["class_path"] == "torch.optim.AdamW"
    assert optimizer["init_args"]["lr"] == 0.003 and optimizer["init_args"]["weight_decay"] == 1e-5
    assert config["model"]["lr_scheduler"]["class_path"] == "brats_pipeline.schedules.ProgressLR"


def test_module_takes_optimiser_callables_only() -> None:
    with pytest.raises(ValueError, match="optimizer must be a callable"):
        BratsSegmentationModule("unet3d", optimizer="adamw")
    with pytest.raises(TypeError):
        BratsSegmentationModule("unet3d", lr=1e-3)  # the string options are gone, not silently ignored


# ----------------------------------------------------------------------------- 3: self-describing checkpoints
def _bundle_network():
    """The attention_unet bundle's network_def (a non-default network), tiny, built by MONAI's ConfigParser."""
    from monai.bundle import ConfigParser

    repo = Path(__file__).resolve().parents[2]
    parser = ConfigParser()
    parser.read_config(str(repo / "bundles" / "brats_attention_unet_segmentation" / "configs" / "train.json"))
    parser["network_def"]["channels"] = [4, 8, 16]
    parser["network_def"]["strides"] = [2, 2]
    return parser.get_parsed_content("network_def")


def _train_one_step(network: torch.nn.Module, datalist: Path, path: Path) -> BratsSegmentationModule:
    torch.manual_seed(0)
    module = BratsSegmentationModule(network, task="brats2021", roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.25,
                                     optimizer=functools.partial(torch.optim.Adam, lr=1e-2), lr_scheduler=None)
    data = BratsDataModule(str(datalist), fold=0, patch_size=(32, 32, 32), batch_size=1, samples_per_volume=1,
                           num_workers=0, cache="none", augmentation_device="cpu")
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    return module.eval()


def test_bundle_network_checkpoint_rebuilds_and_predicts_the_same(datalist: Path, tmp_path: Path) -> None:
    from brats_pipeline.cli.infer import main as infer_main
    from brats_pipeline.inference import Predictor

    ckpt_path = tmp_path / "bundle.ckpt"
    module = _train_one_step(_bundle_network(), datalist, ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # plain data: no pickled code
    assert ckpt["network"] == {"name": "attention_unet", "in_channels": 4, "out_channels": 3, "spatial_dims": 3,
                               "kwargs": {"channels": [4, 8, 16], "strides": [2, 2]}}
    assert ckpt["hyper_parameters"]["network"] == "attention_unet"
    assert BratsSegmentationModule.load_from_checkpoint(ckpt_path, map_location="cpu").network_config == ckpt["network"]

    predictor = Predictor.from_checkpoint(ckpt_path, device="cpu")  # strict load into a rebuilt attention_unet
    case = json.loads(datalist.read_text())["training"][0]
    image = predictor.preprocess(case)["image"]
    with torch.no_grad():
        expected = torch.sigmoid(module.sliding_window(image.as_tensor()[None].float()))[0]
    np.testing.assert_allclose(predictor.predict_volume(image).numpy(), expected.numpy(), atol=1e-5)

    out = tmp_path / "pred"
    assert infer_main(["-i", str(datalist), "-o", str(out), "--checkpoint", str(ckpt_path), "--device", "cpu",
                       "--fold", "0", "--no-progress"]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 3


def test_checkpoint_of_a_foreign_module_names_its_class_and_says_what_to_do(datalist: Path, tmp_path: Path) -> None:
    from monai.networks.nets import BasicUNet

    from brats_pipeline.inference import Predictor

    ckpt_path = tmp_path / "foreign.ckpt"
    _train_one_step(BasicUNet(3, 4, 3, features=(4, 4, 8, 16, 32, 4)), datalist, ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["network"] == {"class_path": "monai.networks.nets.basic_unet.BasicUNet", "init_args": None}
    with pytest.raises(ValueError, match="BasicUNet.*not by brats_pipeline.networks.build_network.*from_state_dict"):
        Predictor.from_checkpoint(ckpt_path, device="cpu")
