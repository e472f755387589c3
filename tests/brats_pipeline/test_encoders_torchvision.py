"""The hand-written encoders against real torchvision models: key for key, tensor for tensor, map for map.

torchvision does not import beside the project's torch, so the references are made in a
subprocess by a python that has it (``_torchvision_reference.py``): ``$BRATS_TORCHVISION_PYTHON``
if set (then it must work), else ``.venv-monailabel/bin/python`` (``$MONAILABEL_VENV``; created by
``bash scripts/install_monailabel.sh``), skipped with the reason when that is absent or lacks
torchvision. Run with::

    .venv/bin/python -m pytest -m slow tests/brats_pipeline/test_encoders_torchvision.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brats_pipeline.networks import build_network
from brats_pipeline.networks.encoder_unet import ImageNetNormalize
from brats_pipeline.networks.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MobileNetV2Encoder,
    ResNet50Encoder,
    TorchvisionEncoder,
    load_encoder_weights,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_torchvision_reference.py")
ARCHS = {"resnet50": ResNet50Encoder, "mobilenet_v2": MobileNetV2Encoder}
#: fp32; the 3-channel maps are in fact bitwise equal (same kernels), the adapted stems differ by
#: float rounding (~1e-6 of the largest value), amplified a little through the depth
RTOL = 1e-5


def _torchvision_python() -> tuple[Path, bool]:
    """The python to run the reference script with, and whether the user named it explicitly."""
    explicit = os.environ.get("BRATS_TORCHVISION_PYTHON")
    if explicit:
        return Path(explicit), True
    return Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel")) / "bin" / "python", False


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with ``<arch>.pth`` and ``<arch>_reference.pt`` made by real torchvision."""
    python, explicit = _torchvision_python()
    if not python.is_file():
        if explicit:
            pytest.fail(f"BRATS_TORCHVISION_PYTHON={python} does not exist")
        pytest.skip(f"no python with torchvision ({python} is absent): bash scripts/install_monailabel.sh, "
                    "or set BRATS_TORCHVISION_PYTHON")
    out = tmp_path_factory.mktemp("torchvision")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([str(python), str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600, env=env)
    if done.returncode == 3 and not explicit:
        pytest.skip(f"{python} cannot import torchvision: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, f"{python} {SCRIPT.name} failed:\n{done.stderr[-3000:]}"
    print(done.stdout, file=sys.stderr)
    return out


def _load(reference: Path, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = torch.load(reference / f"{arch}.pth", map_location="cpu", weights_only=True)
    ref = torch.load(reference / f"{arch}_reference.pt", map_location="cpu", weights_only=True)
    return state, ref


def _encoder(reference: Path, arch: str, in_channels: int = 3) -> TorchvisionEncoder:
    encoder = ARCHS[arch](in_channels)
    load_encoder_weights(encoder, reference / f"{arch}.pth")
    return encoder.eval()


def _assert_maps_close(ours: list[torch.Tensor], ref: dict[str, torch.Tensor], prefix: str = "") -> None:
    assert len(ours) == 5
    for i, got in enumerate(ours):
        want = ref[f"{prefix}feat{i}"]
        assert got.shape == want.shape, (i, got.shape, want.shape)
        scale = float(want.abs().max().clamp_min(1.0))
        torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * scale, msg=lambda m, i=i: f"map {i}: {m}")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_keys_and_tensors_equal_torchvision(reference: Path, arch: str) -> None:
    state, _ = _load(reference, arch)
    encoder = _encoder(reference, arch)
    head = encoder.head_prefixes
    assert any(k.startswith(head) for k in state)  # the file holds the classifier, as a real one does
    expected = [k for k in state if not k.startswith(head)]
    ours = encoder.state_dict()
    assert list(ours) == expected  # same keys, same order
    for key in expected:
        assert ours[key].dtype == state[key].dtype and torch.equal(ours[key], state[key]), key


@pytest.mark.parametrize("arch", list(ARCHS))
def test_feature_maps_equal_torchvision(reference: Path, arch: str) -> None:
    _, ref = _load(reference, arch)
    encoder = _encoder(reference, arch)
    assert [ref[f"feat{i}"].shape[1] for i in range(5)] == list(encoder.out_channels)
    with torch.no_grad():
        _assert_maps_close(encoder(ref["x"]), ref)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("in_channels", [1, 9])
def test_adapted_stem_on_a_grey_image_responds_as_torchvision(reference: Path, arch: str, in_channels: int) -> None:
    """``_adapt_stem``'s promise: an image constant across channels gives torchvision's response to grey RGB."""
    _, ref = _load(reference, arch)
    encoder = _encoder(reference, arch, in_channels)
    with torch.no_grad():
        _assert_maps_close(encoder(ref["grey"].repeat(1, in_channels, 1, 1)), ref, "grey_")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_imagenet_normalisation_is_torchvisions(reference: Path, arch: str) -> None:
    _, ref = _load(reference, arch)
    assert ref["mean"].tolist() == pytest.approx(IMAGENET_MEAN) and ref["std"].tolist() == pytest.approx(IMAGENET_STD)
    encoder = _encoder(reference, arch)
    with torch.no_grad():
        _assert_maps_close(encoder(ImageNetNormalize()(ref["unit"])), ref, "unit_")


@pytest.mark.parametrize(("name", "arch"), [("resnet_unet", "resnet50"), ("mobilenet_unet", "mobilenet_v2")])
def test_unet_input_options_feed_the_encoder_what_torchvision_expects(reference: Path, name: str, arch: str) -> None:
    """Through the built networks: ``imagenet`` on [0, 1] images, ``conv1x1`` on channel-constant images."""
    _, ref = _load(reference, arch)
    path = reference / f"{arch}.pth"
    small = {"decoder_channels": (8, 8, 8, 8, 8), "spatial_dims": 2, "encoder_weights": path}
    for kwargs, image, prefix in (
        ({"input_normalization": "imagenet"}, ref["unit"], "unit_"),
        ({"input_adapter": "conv1x1"}, ref["grey"].repeat(1, 4, 1, 1), "grey_"),  # starts as the channel mean
    ):
        net = build_network(name, image.shape[1], 1, **small, **kwargs).eval()
        with torch.no_grad():
            _assert_maps_close(net.encoder(net.normalize(net.channel_adapter(image))), ref, prefix)
