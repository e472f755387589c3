"""Predictor: sliding-window logic with fake networks, TTA, ensembles, geometry, labels, batch runs, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from brats_pipeline.cli.infer import main as infer_main
from brats_pipeline.inference import Predictor, run_batch
from brats_pipeline.inference.batch import select_shard
from brats_pipeline.module import BratsSegmentationModule
from preprocessing.io import write_nifti
from preprocessing.sharding import parse_shard

MODALITIES = ("t1c", "t1", "t2", "flair")


class Pointwise(nn.Module):
    """Logits = a pointwise function of the input: sliding windows must reproduce it exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] * 2 - x[:, 1], torch.sin(x[:, 2]) * 3, x[:, 3] ** 2 - 1], dim=1)


class WindowMean(nn.Module):
    """Every output voxel = the mean of its window's channel 0: shows how windows are blended."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].mean(dim=(2, 3, 4), keepdim=True).expand(-1, 3, *x.shape[2:]).clone()


class XRamp(nn.Module):
    """Not mirror-symmetric: logits rise along x inside each window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 3, x.shape[2], device=x.device).view(1, 1, -1, 1, 1)
        return ramp.expand(x.shape[0], 3, *x.shape[2:]).clone()


class Blur(nn.Module):
    """A symmetric 3x3x3 mean filter: commutes with mirroring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = torch.full((3, 4, 3, 3, 3), 1.0 / 108.0)
        return torch.nn.functional.conv3d(x, kernel, padding=1)


def test_sliding_window_reproduces_a_pointwise_network_exactly() -> None:
    torch.manual_seed(0)
    image = torch.randn(4, 37, 29, 23)
    expected = torch.sigmoid(Pointwise()(image[None]))[0]
    for overlap in (0.0, 0.5):
        for mode in ("constant", "gaussian"):
            p = Predictor(Pointwise(), "brats2021", roi_size=(16, 16, 16), overlap=overlap, blend_mode=mode, device="cpu")
            torch.testing.assert_close(p.predict_volume(image), expected, atol=1e-5, rtol=0)


def test_overlap_is_blended_and_gaussian_weighs_window_centres() -> None:
    image = torch.zeros(4, 24, 8, 8)
    image[:, 12:] = 1.0  # window [0, 16) has mean 0.25, window [8, 24) mean 0.75
    const = Predictor(WindowMean(), "brats2021", roi_size=(16, 8, 8), overlap=0.5, blend_mode="constant", device="cpu")
    gauss = Predictor(WindowMean(), "brats2021", roi_size=(16, 8, 8), overlap=0.5, blend_mode="gaussian", device="cpu")
    c = const.predict_logits(image[None])[0, 0, :, 4, 4]
    g = gauss.predict_logits(image[None])[0, 0, :, 4, 4]
    torch.testing.assert_close(c[:8], torch.full((8,), 0.25))
    torch.testing.assert_close(c[8:16], torch.full((8,), 0.5))  # equal weights in the overlap
    torch.testing.assert_close(c[16:], torch.full((8,), 0.75))
    assert g[9] < 0.45 and g[14] > 0.55  # nearer the first / second window's centre
    torch.testing.assert_close(g[:8], torch.full((8,), 0.25))


def test_tta_does_not_change_a_mirror_symmetric_network() -> None:
    torch.manual_seed(1)
    image = torch.randn(4, 24, 20, 16)
    plain = Predictor(Blur(), "brats2021", roi_size=(24, 20, 16), device="cpu").predict_volume(image)
    tta = Predictor(Blur(), "brats2021", roi_size=(24, 20, 16), device="cpu", tta_axes=(0, 1, 2)).predict_volume(image)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=0)


def test_tta_mirrors_and_averages() -> None:
    image = torch.zeros(4, 16, 8, 8)
    p = Predictor(XRamp(), "brats2021", roi_size=(16, 8, 8), device="cpu", tta_axes=(0,)).predict_volume(image)
    ramp = torch.sigmoid(torch.linspace(0, 3, 16)).view(1, -1, 1, 1)
    torch.testing.assert_close(p, ((ramp + ramp.flip(1)) / 2).expand(3, 16, 8, 8))  # ramp + mirrored ramp, averaged
    assert not torch.allclose(p[:, 0], p[:, 8])
    from brats_pipeline.inference.outputs import tta_flips

    assert len(tta_flips(Predictor(XRamp(), "brats2021", device="cpu", tta_axes=(0, 1, 2)).tta_axes)) == 8


def test_ensemble_averages_probabilities() -> None:
    class Const(nn.Module):
        def __init__(self, v: float) -> None:
            super().__init__()
            self.v = v

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3, *x.shape[2:]), self.v)

    p = Predictor([Const(2.0), Const(-1.0)], "brats2021", roi_size=(8, 8, 8), device="cpu").predict_volume(torch.zeros(4, 8, 8, 8))
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(p, torch.full_like(p, float(expected)))


def test_an_injected_inferer_is_used_as_is_and_keys_the_resume() -> None:
    from monai.inferers import SlidingWindowInferer

    from brats_pipeline.inference.batch import prediction_settings, resume_key

    image = torch.zeros(4, 24, 8, 8)
    image[:, 12:] = 1.0  # windows see different means, so window placement shows in the output
    built = Predictor(WindowMean(), "brats2021", roi_size=(16, 8, 8), overlap=0.5, blend_mode="constant", device="cpu")
    injected = SlidingWindowInferer(roi_size=(16, 8, 8), sw_batch_size=4, overlap=0.5, mode="constant")
    # roi_size and overlap do not build an inferer when one is given: the injected one is used, and described
    p = Predictor(WindowMean(), "brats2021", roi_size=(8, 8, 8), overlap=0.0, inferer=injected, device="cpu")
    assert p.inferer is injected and (p.roi_size, p.overlap, p.sw_batch_size, p.blend_mode) == ((16, 8, 8), 0.5, 4, "constant")
    assert torch.equal(p.predict_volume(image), built.predict_volume(image))  # what the equivalent built inferer predicts
    assert p.describe() == built.describe()
    assert p.describe()["inferer_settings"] == {
        "class": "monai.inferers.inferer.SlidingWindowInferer", "roi_size": [16, 8, 8], "sw_batch_size": 4, "overlap": 0.5,
        "mode": "constant", "sigma_scale": 0.125, "padding_mode": "constant", "cval": 0.0, "with_coord": False}
    other = Predictor(WindowMean(), "brats2021", device="cpu",
                      inferer=SlidingWindowInferer(roi_size=(12, 8, 8), sw_batch_size=4, overlap=0.5, mode="constant"))
    assert other.roi_size == (12, 8, 8) and not torch.allclose(other.predict_volume(image), p.predict_volume(image))
    keys = {resume_key([], [], prediction_settings(x)) for x in (p, built, other)}
    assert len(keys) == 2  # another inferer, another resume key (its cases are predicted again)
    padded = SlidingWindowInferer(roi_size=(16, 8, 8), sw_batch_size=4, overlap=0.5, mode="constant", padding_mode="reflect")
    assert Predictor(WindowMean(), "brats2021", inferer=padded, device="cpu").describe() != p.describe()
    with pytest.raises(ValueError, match="inferer must be a MONAI Inferer or a callable"):
        Predictor(WindowMean(), "brats2021", inferer="SlidingWindowInferer", device="cpu")


def test_predictor_rejects_bad_arguments() -> None:
    # the window settings are checked once, by build_inferer (an injected inferer is used as is)
    with pytest.raises(ValueError, match=r"unknown blend mode 'linear' \(blend_mode\); choose one of"):
        Predictor(Pointwise(), "brats2021", blend_mode="linear", device="cpu")
    with pytest.raises(ValueError, match=r"overlap \(of neighbouring windows\) must be in \[0, 1\), got 1.0"):
        Predictor(Pointwise(), "brats2021", overlap=1.0, device="cpu")
    with pytest.raises(ValueError, match="sw_batch_size .* must be at least 1, got 0"):
        Predictor(Pointwise(), "brats2021", sw_batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="tta_axes"):
        Predictor(Pointwise(), "brats2021", tta_axes=(3,), device="cpu")
    with pytest.raises(ValueError, match="roi_size"):
        Predictor(Pointwise(), "brats2021", roi_size=(16, 16), device="cpu")
    with pytest.raises(ValueError, match="4 \\(t1c, t1, t2, flair\\)"):
        Predictor(Pointwise(), "brats2021", device="cpu").predict_volume(torch.zeros(3, 8, 8, 8))


# ----------------------------------------------------------------------------- files and geometry
def _oblique_affine() -> np.ndarray:
    """Rotated 25 degrees about z, axes permuted and one flipped, voxels 0.9 x 1.3 x 2.2 mm."""
    th = np.deg2rad(25.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0], [0.0, 0.0, 1.0]])
    perm = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag([0.9, 1.3, 2.2])
    affine[:3, 3] = [12.0, -30.0, 7.5]
    return affine


def _write_case(folder: Path, case_id: str, affine: np.ndarray, shape=(30, 26, 20)) -> tuple[list[str], np.ndarray]:
    """A head box (1) with a three-level tumour (5 / 9 / 13) off-centre; returns files and the expected labels."""
    img = np.zeros(shape, dtype=np.float32)
    img[2:-2, 2:-2, 2:-2] = 1.0
    labels = np.zeros(shape, dtype=np.uint8)
    img[6:16, 4:14, 9:17] = 5.0
    labels[6:16, 4:14, 9:17] = 2
    img[8:14, 6:12, 11:15] = 9.0
    labels[8:14, 6:12, 11:15] = 1
    img[10:12, 8:10, 12:14] = 13.0
    labels[10:12, 8:10, 12:14] = 4
    files = [str(write_nifti(img * (1 + 0.1 * i), affine, folder / case_id / f"{case_id}_{m}.nii.gz")) for i, m in enumerate(MODALITIES)]
    return files, labels


def _intensity_predictor(**kw) -> Predictor:
    # z-score over the non-zero voxels of the case above: head (1) -0.3, WT (5) 2.5, TC (9) 5.3, ET (13) 8.1
    class Levels(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, 0]
            return torch.stack([20 * (v - 3.9), 20 * (v - 1.1), 20 * (v - 6.7)], dim=1)  # TC, WT, ET

    return Predictor(Levels(), kw.pop("task", "brats2021"), roi_size=(16, 16, 16), overlap=0.25, device="cpu", **kw)


def test_output_has_the_inputs_geometry_and_the_right_voxels(tmp_path: Path) -> None:
    affine = _oblique_affine()
    files, expected = _write_case(tmp_path / "in", "c1", affine)
    p = _intensity_predictor()
    pred = p.predict_case({"case_id": "c1", "image": files})
    assert pred.label.shape == expected.shape and pred.label.dtype == np.uint8
    np.testing.assert_allclose(pred.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(pred.label, expected)  # orientation and crop undone exactly
    rows = run_batch(p, [{"case_id": "c1", "image": files}], tmp_path / "out", progress=False)
    assert rows[0]["status"] == "ok"
    out = nib.load(str(tmp_path / "out" / "c1.nii.gz"))
    assert out.shape == expected.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)


def test_resampling_before_the_network_is_undone(tmp_path: Path) -> None:
    affine = _oblique_affine()
    files, expected = _write_case(tmp_path / "in", "c1", affine)
    pred = _intensity_predictor(spacing=(1.5, 1.5, 1.5)).predict_case({"case_id": "c1", "image": files}, return_probabilities=True)
    assert pred.label.shape == expected.shape
    assert pred.probabilities.shape == (3, *expected.shape)
    wt_pred, wt_true = pred.label > 0, expected > 0
    dice = 2 * (wt_pred & wt_true).sum() / (wt_pred.sum() + wt_true.sum())
    assert dice > 0.8


@pytest.mark.parametrize(("task", "values"), [("brats2021", {0, 1, 2, 4}), ("brats2023", {0, 1, 2, 3}), ("msd_task01", {0, 1, 2, 3})])
def test_labels_written_are_the_tasks(tmp_path: Path, task: str, values: set[int]) -> None:
    files, _ = _write_case(tmp_path / "in", "c1", np.diag([1.0, 1.0, 1.0, 1.0]))
    p = _intensity_predictor(task=task)
    run_batch(p, [{"case_id": "c1", "image": files}], tmp_path / "out", progress=False)
    data = np.asarray(nib.load(str(tmp_path / "out" / "c1.nii.gz")).dataobj)
    assert set(np.unique(data).tolist()) == values


def test_probability_maps_are_optional(tmp_path: Path) -> None:
    files, _ = _write_case(tmp_path / "in", "c1", np.eye(4))
    rows = run_batch(_intensity_predictor(), [{"case_id": "c1", "image": files}], tmp_path / "out", save_probabilities=True, progress=False)
    prob = nib.load(rows[0]["probabilities"])
    assert prob.shape == (30, 26, 20, 3) and prob.get_data_dtype() == np.float32


def _digest(paths: list[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def test_a_bad_case_is_reported_and_the_rest_complete(tmp_path: Path) -> None:
    good, _ = _write_case(tmp_path / "in", "good", np.eye(4))
    bad, _ = _write_case(tmp_path / "in", "bad", np.eye(4))
    raw = Path(bad[2]).read_bytes()
    Path(bad[2]).write_bytes(raw[: len(raw) // 2])  # truncated t2
    missing = [*good[:3], str(tmp_path / "in" / "nope.nii.gz")]
    other, _ = _write_case(tmp_path / "in", "other", np.eye(4))
    inputs = good + bad + other
    before = _digest(inputs)
    cases = [{"case_id": "good", "image": good}, {"case_id": "bad", "image": bad},
             {"case_id": "missing", "image": missing}, {"case_id": "other", "image": other}]
    out = tmp_path / "out"
    rows = run_batch(_intensity_predictor(), cases, out, progress=False)
    status = {r["case_id"]: r for r in rows}
    assert status["good"]["status"] == "ok" and status["other"]["status"] == "ok"
    assert status["bad"]["status"] == "failed" and bad[2] in status["bad"]["error"]
    assert status["missing"]["status"] == "failed" and "nope.nii.gz" in status["missing"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "manifest.json", "other.nii.gz"]  # no partial files
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 2, "failed": 2, "skipped": 0}
    assert _digest(inputs) == before  # inputs untouched


def _tiny_checkpoint(path: Path, task: str = "brats2021", seed: int = 0) -> Path:
    """A Lightning-format checkpoint of a tiny unet3d, written without training."""
    import pytorch_lightning as pl

    torch.manual_seed(seed)
    module = BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 8, 16, 4]}, task=task, roi_size=(32, 32, 32),
                                     sw_batch_size=2, overlap=0.25, lr_scheduler=None)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__,
                "datamodule_hyper_parameters": {"spacing": None, "orientation": "RAS", "crop_foreground": True}}, path)
    return path


def test_cli_batch_is_resumable_and_exits_nonzero_on_a_bad_case(tmp_path: Path) -> None:
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "data", "brats2021", 3, (32, 32, 32), seed=0)
    dl = build_datalist(tmp_path / "data", "brats2021", folds=3, check="none")
    write_datalist(dl, tmp_path / "dl.json")
    ckpt = _tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    assert infer_main(["-i", str(tmp_path / "dl.json"), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--no-progress"]) == 0
    labels = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(labels) == 3
    ref = nib.load(dl["training"][0]["image"][0])
    pred = nib.load(str(out / f"{dl['training'][0]['case_id']}.nii.gz"))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    # resume: everything is skipped; then break one case's input and redo all of them
    assert infer_main(["-i", str(tmp_path / "dl.json"), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 3
    victim = Path(dl["training"][1]["image"][3])
    victim.write_bytes(victim.read_bytes()[:100])
    code = infer_main(["-i", str(tmp_path / "dl.json"), "-o", str(out), "--checkpoint", str(ckpt), str(ckpt), "--tta-axes", "0",
                       "--device", "cpu", "--overwrite", "--no-progress"])
    assert code == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 2, "failed": 1, "skipped": 0}
    assert manifest["settings"]["ensemble_size"] == 2
    # shards write their own manifests
    assert infer_main(["-i", str(tmp_path / "dl.json"), "-o", str(tmp_path / "s"), "--checkpoint", str(ckpt), "--device", "cpu",
                       "--shard", "0/2", "--no-progress"]) == 0  # case 1, the broken one, is in shard 1
    shard = json.loads((tmp_path / "s" / "manifest.shard-0-of-2.json").read_text())
    assert [c["case_id"] for c in shard["cases"]] == [e["case_id"] for e in dl["training"][0::2]]


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = infer_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "none.ckpt")])
    assert code == 2 and "none.ckpt: checkpoint not found" in capsys.readouterr().err
    assert infer_main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", "w.pt"]) == 2


def test_from_checkpoint_reads_settings(tmp_path: Path) -> None:
    p = Predictor.from_checkpoint(_tiny_checkpoint(tmp_path / "m.ckpt", task="brats2023"), device="cpu", overlap=0.5)
    assert p.task.name == "brats2023" and p.roi_size == (32, 32, 32) and p.overlap == 0.5 and p.sw_batch_size == 2


def test_from_state_dict_loads_strictly(tmp_path: Path) -> None:
    from brats_pipeline.networks import build_network

    net = build_network("unet3d", 4, 3, features=[4, 4, 8, 8, 16, 4])
    torch.save(net.state_dict(), tmp_path / "model.pt")
    p = Predictor.from_state_dict("unet3d", tmp_path / "model.pt", "brats2021", network_kwargs={"features": [4, 4, 8, 8, 16, 4]},
                                  device="cpu", roi_size=(16, 16, 16))
    for a, b in zip(p.networks[0].state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b)
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "prefixed.pt")
    with pytest.raises(ValueError, match="prefixed.pt: weights do not match"):
        Predictor.from_state_dict("unet3d", tmp_path / "prefixed.pt", "brats2021", network_kwargs={"features": [4, 4, 8, 8, 16, 4]})


def test_from_bundle(tmp_path: Path) -> None:
    from brats_pipeline.networks import build_network

    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "models").mkdir()
    config = {  # the layout of this project's bundles/*/configs/inference.json
        "imports": ["$import torch"],
        "bundle_root": ".",
        "task": "brats2021",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "roi_size": [32, 32, 16],
        "network_def": {"_target_": "brats_pipeline.networks.build_network", "name": "unet3d", "in_channels": 4,
                        "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]},
        "preprocessing": {"_target_": "brats_pipeline.data.transforms.deterministic_transforms", "task": "@task",
                          "with_label": False, "orientation": None, "crop_foreground": False},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": 2, "overlap": 0.25},
    }
    (tmp_path / "b" / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(build_network("unet3d", 4, 3, features=[4, 4, 8, 8, 16, 4]).state_dict(), tmp_path / "b" / "models" / "model.pt")
    p = Predictor.from_bundle(tmp_path / "b", device="cpu")
    assert p.task.name == "brats2021" and p.roi_size == (32, 32, 16) and p.overlap == 0.25 and p.sw_batch_size == 2
    assert p.orientation is None and p.crop_foreground is False and p.spacing is None
    with pytest.raises(FileNotFoundError, match="model.pt"):
        Predictor.from_bundle(tmp_path / "missing")


def _bundle_with_inferer(root: Path, inferer: dict) -> Path:
    """A bundle of a tiny brats2021 unet3d (seeded weights) whose ``inferer`` is ``inferer``."""
    from brats_pipeline.networks import build_network

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {"task": "brats2021", "roi_size": [16, 16, 16], "inferer": inferer,
              "network_def": {"_target_": "brats_pipeline.networks.build_network", "name": "unet3d", "in_channels": 4,
                              "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(build_network("unet3d", 4, 3, features=[4, 4, 8, 8, 16, 4]).state_dict(), root / "models" / "model.pt")
    return root


def test_from_bundle_uses_the_bundles_inferer_object(tmp_path: Path) -> None:
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    torch.manual_seed(1)
    image = torch.randn(4, 32, 16, 16)
    # another class: the whole volume through the network at once (no window settings to read and rebuild from)
    simple = _bundle_with_inferer(tmp_path / "simple", {"_target_": "SimpleInferer"})
    whole = Predictor.from_bundle(simple, device="cpu")
    assert isinstance(whole.inferer, SimpleInferer)
    assert whole.describe()["inferer_settings"] == {"class": "monai.inferers.inferer.SimpleInferer"}
    with torch.no_grad():
        expected = torch.sigmoid(whole.networks[0](image[None]))[0]
    torch.testing.assert_close(whole.predict_volume(image), expected, atol=1e-6, rtol=0)
    # a setting a rebuild from roi_size/overlap/mode never read (padding_mode) is the bundle's
    sliding = _bundle_with_inferer(tmp_path / "sw", {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": 3,
                                                     "overlap": 0.25, "mode": "constant", "padding_mode": "reflect"})
    p = Predictor.from_bundle(sliding, device="cpu")
    assert isinstance(p.inferer, SlidingWindowInferer) and p.inferer.padding_mode == "reflect"
    assert (p.roi_size, p.overlap, p.sw_batch_size, p.blend_mode) == ((16, 16, 16), 0.25, 3, "constant")
    # brats-infer --roi/--overlap/--blend are set on the bundle's inferer config, as --inferer#overlap on MONAI's command line
    q = Predictor.from_bundle(sliding, device="cpu", roi_size=(8, 8, 8), overlap=0.5, blend_mode="gaussian")
    assert (tuple(q.inferer.roi_size), q.inferer.overlap, q.blend_mode, q.inferer.padding_mode) == ((8, 8, 8), 0.5, "gaussian", "reflect")
    assert q.describe()["inferer_settings"] != p.describe()["inferer_settings"]
    with pytest.raises(ValueError, match=r"simple/configs/inference.json: its 'inferer' could not be built with \{'roi_size'"):
        Predictor.from_bundle(simple, device="cpu", roi_size=(8, 8, 8))


def test_shards_partition_the_cases() -> None:
    cases = list(range(10))
    shards = [select_shard(cases, *parse_shard(f"{i}/3")) for i in range(3)]
    assert sorted(sum(shards, [])) == cases
    with pytest.raises(ValueError, match="I/N"):
        parse_shard("2-3")
    with pytest.raises(ValueError, match="0 <= I < N"):
        parse_shard("3/3")


def test_cli_on_a_dataset_folder_reports_a_case_with_a_missing_modality(tmp_path: Path) -> None:
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "data", "brats2021", 2, (32, 32, 32), seed=1)
    (tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    ckpt = _tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    assert infer_main(["-i", str(tmp_path / "data"), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--no-progress"]) == 1
    rows = {r["case_id"]: r for r in json.loads((out / "manifest.json").read_text())["cases"]}
    assert rows["BraTS2021_00000"]["status"] == "ok"
    assert rows["BraTS2021_00001"]["status"] == "failed" and "t2" in rows["BraTS2021_00001"]["error"]
    assert not (out / "BraTS2021_00001.nii.gz").exists()


# ----------------------------------------------------------------------------- 2D and 2.5D networks
def test_from_state_dict_builds_a_25d_network_for_the_context(tmp_path: Path) -> None:
    from brats_pipeline.networks import build_network

    kwargs = {"channels": [4, 8, 16], "strides": [2, 2]}
    torch.save(build_network("unet2d", 9, 1, **kwargs).state_dict(), tmp_path / "model.pt")  # 3 modalities x 3 slices
    p = Predictor.from_state_dict("unet2d", tmp_path / "model.pt", "lgg", network_kwargs=kwargs, device="cpu",
                                  context=1, roi_size=(16, 16), sw_batch_size=4)
    assert (p.spatial_dims, p.context, p.slice_axis) == (2, 1, 2)
    probs = p.predict_volume(torch.randn(3, 20, 16, 7))
    assert probs.shape == (1, 20, 16, 7) and bool(((probs > 0) & (probs < 1)).all())
    with pytest.raises(ValueError, match="model.pt: weights do not fit the network"):  # a 2D (3-channel) build: shapes differ
        Predictor.from_state_dict("unet2d", tmp_path / "model.pt", "lgg", network_kwargs=kwargs, device="cpu")


def test_from_bundle_with_a_2d_network_reads_its_slice_inferer(tmp_path: Path) -> None:
    from brats_pipeline.networks import build_network

    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "models").mkdir()
    kwargs = {"channels": [4, 8, 16], "strides": [2, 2]}
    config = {
        "task": "lgg",
        "network_def": {"_target_": "brats_pipeline.networks.build_network", "name": "unet2d", "in_channels": 15,
                        "out_channels": 1, **kwargs},
        "inferer": {"_target_": "brats_pipeline.inference.inferers.build_inferer", "spatial_dims": 2, "roi_size": [32, 16],
                    "sw_batch_size": 8, "overlap": 0.25, "slice_axis": 1, "context": 2},
    }
    (tmp_path / "b" / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(build_network("unet2d", 15, 1, **kwargs).state_dict(), tmp_path / "b" / "models" / "model.pt")
    p = Predictor.from_bundle(tmp_path / "b", device="cpu")
    assert (p.spatial_dims, p.slice_axis, p.context, p.roi_size, p.sw_batch_size) == (2, 1, 2, (32, 16), 8)
    assert p.predict_volume(torch.randn(3, 30, 5, 16)).shape == (1, 30, 5, 16)


def test_from_checkpoint_of_a_25d_module(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    module = BratsSegmentationModule("unet2d", {"channels": [4, 8, 16], "strides": [2, 2]}, task="lgg", roi_size=(16, 16), context=1)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    p = Predictor.from_checkpoint(tmp_path / "m.ckpt", device="cpu")
    assert (p.spatial_dims, p.context, p.roi_size) == (2, 1, (16, 16))
    torch.manual_seed(0)
    volume = torch.randn(1, 3, 16, 16, 6)
    expected = torch.sigmoid(module.eval().sliding_window(volume))  # the module's own inferer: the same slices
    torch.testing.assert_close(p.predict_volume(volume), expected, atol=1e-5, rtol=0)
