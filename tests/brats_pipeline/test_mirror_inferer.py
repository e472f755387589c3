"""Test-time mirroring and post-processing as bundle parts: the same numbers as the Predictor's own (issue #19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from brats_pipeline.inference.inferers import MirrorInferer, build_inferer, inferer_settings
from brats_pipeline.inference.postprocess import PostprocessConfig, RegionsToLabelsd, postprocess
from brats_pipeline.inference.predictor import Predictor


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 1, 3, padding=1)).eval()


def test_mirror_inferer_gives_the_predictors_mirrored_mean_probability() -> None:
    net = _net()
    volume = torch.randn(1, 3, 24, 20, 16)
    window = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)
    mirrored = MirrorInferer(window, mirror_axes=[0])
    with torch.no_grad():
        p = torch.sigmoid(mirrored(volume, net))
        plain = torch.sigmoid(window(volume, net))
        flipped = torch.sigmoid(window(volume.flip(2), net)).flip(2)
    torch.testing.assert_close(p, (plain + flipped) / 2, atol=1e-6, rtol=0)
    assert not torch.allclose(p, plain)
    predictor = Predictor([net], "lgg", roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25, blend_mode="constant",
                          tta_axes=(0,), device="cpu", amp=False)
    with torch.no_grad():
        torch.testing.assert_close(predictor.predict_volume(volume[0]), p[0], atol=1e-6, rtol=0)
    # the wrapped inferer's window settings are read through it, and the mirroring is in the resume description
    assert mirrored.roi_size == window.roi_size and mirrored.overlap == 0.25
    described = inferer_settings(mirrored)
    assert described["class"].endswith("MirrorInferer") and described["mirror_axes"] == [0] and described["roi_size"] == [16, 16, 16]


def test_mirror_inferer_refuses_bad_axes_and_activations() -> None:
    window = build_inferer(3, roi_size=(16, 16, 16))
    with pytest.raises(ValueError, match="mirror_axes must be distinct spatial axes"):
        MirrorInferer(window, mirror_axes=[3])
    with pytest.raises(ValueError, match="activation must be 'sigmoid' or 'softmax'"):
        MirrorInferer(window, activation="relu")


def test_regions_to_labels_runs_the_predictors_postprocessing() -> None:
    rng = np.random.default_rng(0)
    probabilities = np.zeros((1, 20, 20, 10), dtype=np.float32)
    probabilities[0, 2:8, 2:8, 2:6] = 0.9  # the large component
    probabilities[0, 14:16, 14:16, 7:9] = 0.8  # a small one, away from it
    probabilities += rng.uniform(0, 0.3, probabilities.shape).astype(np.float32)
    to_labels = RegionsToLabelsd("pred", "lgg", postprocess={"keep_largest": True})
    out = to_labels({"pred": torch.as_tensor(probabilities)})["pred"]
    expected = postprocess(probabilities, "lgg", PostprocessConfig(keep_largest=True))
    assert np.array_equal(np.asarray(out)[0], expected)
    plain = np.asarray(RegionsToLabelsd("pred", "lgg")({"pred": torch.as_tensor(probabilities)})["pred"])[0]
    assert plain[15, 15, 8] > 0 and expected[15, 15, 8] == 0 and expected[4, 4, 4] > 0


def test_bundle_inferer_overrides_reach_a_mirror_inferers_inner_inferer() -> None:
    """``brats-infer --bundle <lgg> --overlap/--roi``: set on the MirrorInferer's inner inferer (was: a MONAI error)."""
    from pathlib import Path

    from brats_pipeline.weights import read_bundle

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "lgg_flair_segmentation"
    if not (bundle / "models" / "model.pt").is_file():
        pytest.skip("the LGG bundle ships no weights here")
    _, _, task, settings = read_bundle(bundle, inferer_overrides={"overlap": 0.25, "roi_size": (128, 128)})
    inferer = settings["inferer"]
    assert task == "lgg" and isinstance(inferer, MirrorInferer) and inferer.mirror_axes == (0,)
    assert (inferer.inferer.overlap, tuple(inferer.inferer.roi_size)) == (0.25, (128, 128))
