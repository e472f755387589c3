"""Networks registry: every architecture builds by name, gives logits of the right shape, and trains."""

from __future__ import annotations

import math

import pytest
import torch

from brats_pipeline.networks import NETWORKS, build_network, count_parameters, get_network_spec
from brats_pipeline.networks.bunet import BUNet, ResidualExtendedSkip, WideContext
from brats_pipeline.networks.encoders import MobileNetV2Encoder, ResNet50Encoder, load_encoder_weights
from brats_pipeline.networks.spatial_attention_unet import SpatialAttention, SpatialAttentionUNet

IN, OUT = 4, 3
NETS_3D = [n for n, s in NETWORKS.items() if 3 in s.spatial_dims]
NETS_2D = [n for n, s in NETWORKS.items() if 2 in s.spatial_dims]

#: Small configurations for the training test (the architecture, fewer channels).
TINY = {
    "unet3d": {"features": (4, 4, 8, 8, 16, 4)},
    "attention_unet": {"channels": (4, 8, 8, 16, 16)},
    "spatial_attention_unet": {"features": (4, 8, 8, 16, 16)},
    "residual_unet": {"channels": (4, 8, 8, 16, 16)},
    "bunet": {"features": (4, 8, 8, 16, 16)},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1, 1)},
    "swin_unetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (3, 3, 3, 3)},
    "resnet_unet": {"decoder_channels": (16, 8, 8, 8, 8)},
    "mobilenet_unet": {"decoder_channels": (16, 8, 8, 8, 8)},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _forward(net: torch.nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(1, IN, *shape))


# ------------------------------------------------------------------------------ registry
def test_registry_entries_cite_a_paper_and_have_a_documented_factory():
    assert set(TINY) == set(NETWORKS)
    for name, spec in NETWORKS.items():
        assert spec.name == name
        assert spec.paper and spec.description
        assert " 20" in spec.paper or "," in spec.paper  # a year / venue
        factory = spec.factory()
        assert factory.__doc__ and len(factory.__doc__) > 40, name


def test_unknown_network_lists_choices():
    with pytest.raises(ValueError, match="unknown network 'unet4d'.*unet3d.*bunet"):
        build_network("unet4d", IN, OUT)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_channel_counts_rejected(bad):
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        build_network("unet3d", bad, OUT)


def test_bad_spatial_dims_rejected():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        build_network("unet3d", IN, OUT, spatial_dims=4)


@pytest.mark.parametrize("name", ["resnet_unet", "mobilenet_unet"])
def test_2d_only_networks_reject_3d(name):
    with pytest.raises(ValueError, match=f"{name}' is 2D only.*spatial_dims=3"):
        build_network(name, IN, OUT, spatial_dims=3)
    factory = get_network_spec(name).factory()
    with pytest.raises(ValueError, match="2D only"):
        factory(in_channels=IN, out_channels=OUT, spatial_dims=3)


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError):
        build_network("bunet", IN, OUT, not_an_option=1)


def test_count_parameters_trainable_only():
    net = build_network("residual_unet", IN, OUT, **TINY["residual_unet"])
    total = count_parameters(net)
    next(net.parameters()).requires_grad_(False)
    assert 0 < count_parameters(net, trainable_only=True) < total


# ----------------------------------------------------------------------- forward passes
@pytest.mark.parametrize("name", [n for n in NETS_3D if n != "swin_unetr"])
def test_forward_3d_default_config(name):
    y = _forward(build_network(name, IN, OUT, spatial_dims=3), (32, 32, 32))
    assert y.shape == (1, OUT, 32, 32, 32)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NETS_2D)
def test_forward_2d_default_config(name):
    y = _forward(build_network(name, IN, OUT, spatial_dims=2), (64, 64))
    assert y.shape == (1, OUT, 64, 64)
    assert torch.isfinite(y).all()


def test_outputs_are_logits_not_probabilities():
    net = build_network("unet3d", IN, OUT, **TINY["unet3d"])
    torch.nn.init.constant_(net.final_conv.bias, 5.0)  # pushes outputs far above 1
    assert _forward(net, (32, 32, 32)).max() > 1.0


def test_swin_unetr_rejects_sizes_it_cannot_process():
    net = build_network("swin_unetr", IN, OUT, **TINY["swin_unetr"])
    with pytest.raises(ValueError, match="multiple of 32 and at least 64, got \\(32, 32, 32\\)"):
        net(torch.randn(1, IN, 32, 32, 32))
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.randn(1, IN, 80, 64, 64))


@pytest.mark.slow
def test_swin_unetr_forward_3d_64():
    y = _forward(build_network("swin_unetr", IN, OUT, **TINY["swin_unetr"]), (64, 64, 64))
    assert y.shape == (1, OUT, 64, 64, 64)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------- training
def _toy_case(spatial: tuple[int, ...], batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright cube on noise; target: cube in every output channel."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN, *spatial, generator=g) * 0.1
    target = torch.zeros(batch, OUT, *spatial)
    cube = tuple(slice(s // 4, s // 2) for s in spatial)
    x[(slice(None), slice(None), *cube)] += 1.0
    target[(slice(None), slice(None), *cube)] = 1.0
    return x, target


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_few_adam_steps_reduce_the_loss(name):
    spec = NETWORKS[name]
    if 3 in spec.spatial_dims and name != "swin_unetr":
        dims, spatial, batch = 3, (16, 48, 16), 1  # not a cube, not all powers of two
    elif name == "swin_unetr":
        dims, spatial, batch = 2, (64, 64), 1  # 3D needs >= 64^3: see the slow test
    else:
        dims, spatial, batch = 2, (32, 32), 2  # batch norm needs > 1 value at the 1/32 level
    torch.manual_seed(0)
    net = build_network(name, IN, OUT, spatial_dims=dims, **TINY[name])
    x, target = _toy_case(spatial, batch)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        logits = net(x)
        assert logits.shape == (batch, OUT, *spatial)
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------- hand-written modules
def test_spatial_attention_gate_is_sigmoid_of_conv_over_mean_and_max():
    gate = SpatialAttention(spatial_dims=3, kernel_size=1)
    with torch.no_grad():
        gate.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(1, 2, 1, 1, 1))  # mean - max
        gate.conv.bias.zero_()
    x = torch.rand(2, 5, 4, 4, 4)
    out, a = gate(x)
    expected = torch.sigmoid(x.mean(1, keepdim=True) - x.amax(1, keepdim=True))
    assert a.shape == (2, 1, 4, 4, 4)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(out, x * expected)


def test_spatial_attention_maps_reach_the_decoder():
    net = SpatialAttentionUNet(3, IN, OUT, features=(4, 8, 16))
    # decoder level i sees upsampled (f_i) + gated skip (f_i) + attention map (1) channels
    assert [d[0].conv.in_channels for d in net.decoders] == [2 * 4 + 1, 2 * 8 + 1]
    with pytest.raises(ValueError, match="positive odd int"):
        SpatialAttention(3, kernel_size=4)


@pytest.mark.parametrize(
    ("dims", "kernels"),
    [(3, [(5, 1, 1), (1, 5, 1), (1, 1, 5)]), (2, [(5, 1), (1, 5)])],
)
def test_bunet_factorised_convolutions_follow_the_axes(dims, kernels):
    wc = WideContext(dims, 6, 6, kernel_size=5)
    assert [tuple(c.conv.kernel_size) for c in wc.forward_path] == kernels
    assert [tuple(c.conv.kernel_size) for c in wc.reverse_path] == kernels[::-1]
    res = ResidualExtendedSkip(dims, 6, kernel_sizes=(3, 5))
    assert [tuple(c.conv.kernel_size) for c in res.paths[1]] == kernels
    x = torch.randn(1, 6, *([8] * dims))
    assert res(x).shape == x.shape
    assert wc(x).shape == x.shape


def test_bunet_has_a_res_block_per_skip_and_wc_at_the_bottleneck():
    net = BUNet(3, IN, OUT, features=(4, 8, 16))
    assert len(net.skips) == 2 and all(isinstance(s, ResidualExtendedSkip) for s in net.skips)
    assert isinstance(net.bottleneck[-1], WideContext)
    with pytest.raises(ValueError, match="features must be at least 2"):
        BUNet(3, IN, OUT, features=(4,))
    with pytest.raises(ValueError, match="WC kernel_size must be a positive odd int"):
        BUNet(3, IN, OUT, features=(4, 8), wc_kernel_size=4)


# ------------------------------------------------------------------------------ encoders
@pytest.mark.parametrize(
    ("encoder_cls", "params", "n_keys", "keys"),
    [
        # torchvision resnet50 / mobilenet_v2 minus their classifiers (fc / classifier.1)
        (
            ResNet50Encoder,
            25_557_032 - 2_049_000,
            320 - 2,
            ["conv1.weight", "layer1.0.downsample.1.running_var", "layer4.2.bn3.num_batches_tracked"],
        ),
        (
            MobileNetV2Encoder,
            3_504_872 - 1_281_000,
            314 - 2,
            [
                "features.0.0.weight",
                "features.1.conv.1.weight",
                "features.17.conv.3.running_mean",
                "features.18.1.bias",
            ],
        ),
    ],
)
def test_encoders_match_torchvision_layout(encoder_cls, params, n_keys, keys):
    # a quick check without torchvision; test_encoders_torchvision.py (slow) compares with the real models
    enc = encoder_cls(3)
    assert count_parameters(enc) == params
    state = enc.state_dict()
    assert len(state) == n_keys
    assert all(k in state for k in keys)
    feats = enc.eval()(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(enc.out_channels)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2, 1]


def _torchvision_like_file(encoder, path, head: dict[str, torch.Tensor]):
    """The encoder's weights, perturbed, plus classifier keys: what a torchvision file holds."""
    g = torch.Generator().manual_seed(1)
    state = {
        k: (v + 0.1 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
        for k, v in encoder.state_dict().items()
    }
    torch.save({**state, **head}, path)
    return state


@pytest.mark.parametrize(
    ("name", "encoder_cls", "head"),
    [
        ("resnet_unet", ResNet50Encoder, {"fc.weight": torch.zeros(10, 2048), "fc.bias": torch.zeros(10)}),
        (
            "mobilenet_unet",
            MobileNetV2Encoder,
            {"classifier.1.weight": torch.zeros(10, 1280), "classifier.1.bias": torch.zeros(10)},
        ),
    ],
)
def test_encoder_weights_load_from_a_local_file(tmp_path, name, encoder_cls, head):
    path = tmp_path / "encoder.pth"
    saved = _torchvision_like_file(encoder_cls(3), path, head)
    loaded = build_network(name, 3, 1, spatial_dims=2, decoder_channels=(8, 8, 8, 8, 8), encoder_weights=path)
    state = loaded.encoder.state_dict()
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value)

    # loading into an existing network changes what it computes
    net = build_network(name, 3, 1, spatial_dims=2, decoder_channels=(8, 8, 8, 8, 8)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        load_encoder_weights(net.encoder, path)
        after = net(x)
    assert torch.isfinite(after).all()
    assert not torch.allclose(before, after)


def test_three_channel_weights_are_adapted_to_four_channels(tmp_path):
    path = tmp_path / "mobilenet_v2.pth"
    saved = _torchvision_like_file(MobileNetV2Encoder(3), path, {})
    enc = MobileNetV2Encoder(4)
    load_encoder_weights(enc, path)
    stem, rgb = enc.features[0][0].weight.detach(), saved["features.0.0.weight"]
    assert stem.shape == (32, 4, 3, 3)
    # each channel: sum of the RGB kernels / 4, so a channel-constant image responds as before
    for c in range(4):
        torch.testing.assert_close(stem[:, c], rgb.sum(1) / 4)
    torch.testing.assert_close(stem.sum(1), rgb.sum(1))


def test_wrong_weight_file_names_the_file(tmp_path):
    mobilenet_file = tmp_path / "mobilenet_v2.pth"
    _torchvision_like_file(MobileNetV2Encoder(3), mobilenet_file, {})
    with pytest.raises(
        ValueError, match="mobilenet_v2.pth.*not a torchvision ResNet50 state dict.*missing keys"
    ):
        build_network("resnet_unet", 3, 1, spatial_dims=2, encoder_weights=mobilenet_file)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="garbage.pth.*cannot be read"):
        load_encoder_weights(ResNet50Encoder(3), garbage)

    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(ValueError, match="tensor.pth.*does not hold a state dict"):
        load_encoder_weights(MobileNetV2Encoder(3), not_a_dict)

    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_encoder_weights(MobileNetV2Encoder(3), tmp_path / "absent.pth")


def test_wrong_shapes_in_weight_file_are_reported(tmp_path):
    path = tmp_path / "wide.pth"
    state = MobileNetV2Encoder(3).state_dict()
    state["features.18.0.weight"] = torch.zeros(1000, 320, 1, 1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="wide.pth.*shape mismatch in.*features.18.0.weight"):
        load_encoder_weights(MobileNetV2Encoder(3), path)


# ------------------------------------------------------- encoder U-Nets: input adapter, normalisation
SMALL_DECODER = {"spatial_dims": 2, "decoder_channels": (8, 8, 8, 8, 8)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_adapter": "conv3x3"}, "unknown input_adapter 'conv3x3'; choose one of none, conv1x1"),
        ({"input_normalization": "zscore"}, "unknown input_normalization 'zscore'; choose one of none, imagenet"),
        ({"input_normalization": "imagenet"}, "input_normalization='imagenet' needs 3 .* got in_channels=4.*conv1x1"),
    ],
)
@pytest.mark.parametrize("name", ["resnet_unet", "mobilenet_unet"])
def test_bad_input_options_are_rejected(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_network(name, 4, 1, **SMALL_DECODER, **kwargs)


@pytest.mark.parametrize(("name", "encoder_cls"), [("resnet_unet", ResNet50Encoder), ("mobilenet_unet", MobileNetV2Encoder)])
@pytest.mark.parametrize("in_channels", [3, 4])
def test_conv1x1_adapter_starts_as_the_adapted_stem(tmp_path, name, encoder_cls, in_channels):
    """Same pretrained weights: at initialisation ``conv1x1`` computes what ``none`` does, then it can learn."""
    from brats_pipeline.networks import input_channels_of

    path = tmp_path / "encoder.pth"
    torch.manual_seed(0)
    torch.save(encoder_cls(3).state_dict(), path)
    plain = build_network(name, in_channels, 1, encoder_weights=path, **SMALL_DECODER).eval()
    adapted = build_network(name, in_channels, 1, encoder_weights=path, input_adapter="conv1x1", **SMALL_DECODER).eval()
    adapted.decoder.load_state_dict(plain.decoder.state_dict())
    adapted.head.load_state_dict(plain.head.state_dict())
    plain_stem, adapted_stem = (next(m for m in n.encoder.modules() if isinstance(m, torch.nn.Conv2d)) for n in (plain, adapted))
    assert (plain_stem.in_channels, adapted_stem.in_channels) == (in_channels, 3)  # the pretrained stem as it is
    assert input_channels_of(adapted) == in_channels  # the adapter is the first convolution
    # the only differences: the stems, and the adapter's 3 x in_channels weights and 3 biases
    stem_difference = adapted_stem.weight.numel() - plain_stem.weight.numel()
    assert count_parameters(adapted) - count_parameters(plain) == stem_difference + 3 * in_channels + 3
    x = torch.randn(2, in_channels, 32, 32)
    with torch.no_grad():
        want = plain(x)  # equal up to float rounding (the channel sum is taken in another order)
        torch.testing.assert_close(adapted(x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max().clamp_min(1)))


@pytest.mark.parametrize("name", ["resnet_unet", "mobilenet_unet"])
def test_imagenet_normalization_uses_the_imagenet_statistics(name):
    from brats_pipeline.networks.encoders import IMAGENET_MEAN, IMAGENET_STD

    net = build_network(name, 3, 1, input_normalization="imagenet", **SMALL_DECODER).eval()
    x = torch.rand(2, 3, 32, 32)  # a [0, 1] image
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(net.normalize(x), (x - mean) / std)
    plain = build_network(name, 3, 1, **SMALL_DECODER).eval()
    plain.load_state_dict(net.state_dict())  # the statistics are constants, not in the state dict
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain((x - mean) / std))
    net4 = build_network(name, 4, 1, input_adapter="conv1x1", input_normalization="imagenet", **SMALL_DECODER)
    assert net4(torch.rand(2, 4, 32, 32)).shape == (2, 1, 32, 32)


def test_input_options_script_and_match_eager():
    torch.manual_seed(0)
    net = build_network("mobilenet_unet", IN, OUT, input_adapter="conv1x1", input_normalization="imagenet",
                        **TINY["mobilenet_unet"]).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, IN, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-4)


def test_check_state_dict_keys_names_the_source_and_the_keys() -> None:
    from brats_pipeline.networks import check_state_dict_keys

    net = build_network("unet3d", 4, 3, features=(4, 4, 8, 8, 16, 4))
    state = net.state_dict()
    check_state_dict_keys(net, state, "model.pt")  # exact keys: no error
    wrong = {**{k: v for k, v in state.items() if not k.startswith("final_conv")}, "head.weight": state["final_conv.weight"]}
    with pytest.raises(ValueError, match=r"^model\.pt: weights do not match the network: 2 missing keys \['final_conv.bias', 'final_conv.weight'\], 1 unexpected keys \['head.weight'\]"):
        check_state_dict_keys(net, wrong, "model.pt")


# ------------------------------------------------------------- 2D slice networks, TorchScript
TINY.update(
    {
        "unet2d": {"channels": (4, 8, 8, 16, 16)},
        "unet2d_buda": {"features": (4, 8, 8, 16, 16, 4)},
    }
)


def test_2d_slice_networks_are_registered_2d_only_with_their_papers_configuration():
    from brats_pipeline.networks import input_channels_of, spatial_dims_of

    buda = build_network("unet2d_buda", 3, 1)  # 2D without asking: the entry is 2D only
    convs = [m for m in buda.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 32 and max(c.out_channels for c in convs) == 512
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in buda.modules())
    fast = build_network("unet2d", 3, 1)
    assert spatial_dims_of(fast) == 2 and input_channels_of(fast) == 3
    assert [m.out_channels for m in fast.modules() if isinstance(m, torch.nn.Conv2d)][0] == 16
    with pytest.raises(ValueError, match="'unet2d' is 2D only"):
        build_network("unet2d", 3, 1, spatial_dims=3)
    assert spatial_dims_of(build_network("bunet", 3, 1, spatial_dims=2, **TINY["bunet"])) == 2
    assert spatial_dims_of(build_network("bunet", 3, 1, **TINY["bunet"])) == 3  # 3D where supported
    assert spatial_dims_of(torch.nn.Identity(), default=3) == 3
    with pytest.raises(ValueError, match="cannot tell the spatial dimensionality of Identity"):
        spatial_dims_of(torch.nn.Identity())


#: networks the bundles in bundles/*/configs export with ``monai.bundle ckpt_export`` must script
SCRIPTED = [n for n, s in NETWORKS.items() if s.scriptable]


def test_every_bundles_network_is_meant_to_be_scriptable():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "bundles"
    names = {json.loads(p.read_text())["network_def"].get("name") for p in root.glob("*/configs/train.json")}
    assert names and names <= set(SCRIPTED), names - set(SCRIPTED)
    assert "swin_unetr" not in SCRIPTED  # MONAI's SwinUNETR does not script


@pytest.mark.parametrize("name", SCRIPTED)
def test_registered_networks_script_and_match_eager(name):
    dims = 3 if 3 in NETWORKS[name].spatial_dims else 2
    torch.manual_seed(0)
    net = build_network(name, IN, OUT, spatial_dims=dims, **TINY[name]).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, IN, *((32,) * dims))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-4)
