"""Augmentation: one elastic definition on both paths (measured), and BatchAugment on 2D batches.

The displacement of a spatial augmentation is measured by deforming a *coordinate image*
(channel ``i`` holds each voxel's index along axis ``i``; a last channel of ones): bilinear
resampling of a linear function is exact, so each output voxel holds the input position it was
sampled from, and ``output - coordinates`` is the displacement in voxels. Voxels whose sample
touched the zero padding outside the patch show a ones channel below 1 and are left out.
"""

from __future__ import annotations

import time

import pytest
import torch

from brats_pipeline.data.augment import BatchAugment
from brats_pipeline.data.augmentation_config import AugmentationConfig
from brats_pipeline.data.transforms import cpu_augmentation

MAGNITUDE = 4.0  # voxels
SHAPES = {3: (40, 40, 32), 2: (96, 80)}


def _elastic_only(magnitude: float = MAGNITUDE) -> AugmentationConfig:
    cfg = AugmentationConfig.none()
    cfg.elastic_prob, cfg.elastic_magnitude, cfg.elastic_control_points = 1.0, magnitude, 5
    return cfg


def _coordinates(shape: tuple[int, ...]) -> torch.Tensor:
    """(D + 1, *shape) float: channel i = voxel index along axis i; channel D = 1."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.cat([torch.stack(torch.meshgrid(*axes, indexing="ij")), torch.ones(1, *shape)])


def _displacement(coords: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """(N, D) per-axis displacement in voxels of the voxels that sampled wholly inside the patch."""
    inside = warped[-1] > 1 - 1e-4
    return (warped[:-1] - coords[:-1]).movedim(0, -1)[inside]


def _measure_cpu(dims: int, n: int, cfg: AugmentationConfig) -> list[torch.Tensor]:
    from monai.transforms import Compose
    from monai.utils import set_determinism

    set_determinism(0)
    transform = Compose(cpu_augmentation(cfg, spatial_dims=dims))
    coords = _coordinates(SHAPES[dims])
    out = []
    for _ in range(n):
        d = transform({"image": coords.clone(), "label": torch.zeros(1, *SHAPES[dims])})
        out.append(_displacement(coords, torch.as_tensor(d["image"])))
    set_determinism(None)
    return out


def _measure_batch(dims: int, n: int, cfg: AugmentationConfig) -> list[torch.Tensor]:
    torch.manual_seed(0)
    coords = _coordinates(SHAPES[dims])
    warped, _ = BatchAugment(cfg)(coords.expand(n, *coords.shape).clone())
    return [_displacement(coords, w) for w in warped]


@pytest.mark.parametrize("dims", [3, 2])
def test_elastic_displacement_is_the_documented_amplitude_on_both_paths(dims: int) -> None:
    """``elastic_magnitude`` m: control points move uniformly in [-m, m] voxels per axis, linear in between.

    So on either path no voxel moves more than m along an axis, the largest per-axis move of a
    sample comes close to m, and the mean displacement length is about m / 2 (AugmentationConfig's
    documented figure) — measured over 8 samples per path, within 15 %. Before the two paths
    shared one field (MONAI Rand3DElasticd with sigma 5-8, magnitude up to 37.5 m on the CPU;
    randn * m / 2 on the batch path), m = 4 gave a mean length of 0.1-1.1 voxels on the CPU
    and 1.6-1.8 on the batch path, and a per-axis peak of 0.2-2.6 vs 4.7-6.7 voxels.
    """
    n = 8
    for path, fields in (("cpu", _measure_cpu(dims, n, _elastic_only())), ("batch", _measure_batch(dims, n, _elastic_only()))):
        assert all(len(f) > 0.8 * torch.Size(SHAPES[dims]).numel() for f in fields), path  # most voxels stay inside
        peak = [float(f.abs().max()) for f in fields]
        mean_length = float(torch.stack([f.norm(dim=-1).mean() for f in fields]).mean())
        assert max(peak) <= MAGNITUDE + 1e-3, (path, peak)
        assert min(peak) >= 0.8 * MAGNITUDE, (path, peak)
        assert mean_length == pytest.approx(MAGNITUDE / 2, rel=0.15), (path, mean_length)


def test_elastic_displacement_scales_with_magnitude() -> None:
    small = torch.cat(_measure_batch(3, 4, _elastic_only(1.0))).abs().mean()
    large = torch.cat(_measure_batch(3, 4, _elastic_only(3.0))).abs().mean()
    assert float(large / small) == pytest.approx(3.0, rel=0.02)


def test_cpu_augmentation_2d_keeps_shape_binary_label_and_alignment() -> None:
    from monai.transforms import Compose
    from monai.utils import set_determinism

    set_determinism(1)
    cfg = AugmentationConfig(spatial_prob=1.0, elastic_prob=1.0, intensity_prob=0, gamma_prob=0, noise_prob=0, smooth_prob=0)
    transform = Compose(cpu_augmentation(cfg, spatial_dims=2))
    image = _smooth_batch(5, (64, 56), 1, channels=3)[0]
    label = (image[:1] > 0.2).float()
    out = transform({"image": image.clone(), "label": label.clone()})
    img, lab = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
    set_determinism(None)
    assert img.shape == image.shape and lab.shape == label.shape and not torch.allclose(img, image)
    assert set(lab.unique().tolist()) <= {0.0, 1.0}
    clear = ((img[:1] - 0.2).abs() > 0.15) & (img[:1] != 0)
    assert float(((img[:1] > 0.2).float() == lab)[clear].float().mean()) > 0.99


def test_augmentation_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        cpu_augmentation(None, spatial_dims=4)
    with pytest.raises(ValueError, match="elastic_prob"):
        AugmentationConfig(elastic_prob=1.5)
    with pytest.raises(ValueError, match="elastic_magnitude"):
        AugmentationConfig(elastic_magnitude=-1.0)
    with pytest.raises(ValueError, match="elastic_control_points"):
        AugmentationConfig.from_any({"elastic_control_points": 1})


# ------------------------------------------------------------------------- 2D batches
def _smooth_batch(seed: int, shape: tuple[int, ...], batch: int, channels: int = 1) -> torch.Tensor:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, channels, *(6,) * len(shape), generator=g)
    return F.interpolate(coarse, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear", align_corners=True)


def test_batch_augment_2d_identity_when_everything_is_off() -> None:
    image = _smooth_batch(0, (48, 40), 3, channels=3)
    label = (image[:, :1] > 0.2).float()
    out, lab = BatchAugment(AugmentationConfig.none())(image, label)
    assert out.shape == image.shape and lab.shape == label.shape
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    assert torch.equal(lab, label)


def test_batch_augment_2d_flip_is_an_exact_flip() -> None:
    image = _smooth_batch(1, (48, 40), 2, channels=3)
    cfg = AugmentationConfig.none()
    cfg.flip_prob = 1.0
    out, _ = BatchAugment(cfg)(image)
    torch.testing.assert_close(out, image.flip(2, 3), atol=1e-5, rtol=0)


def test_batch_augment_2d_full_config_keeps_shapes_binary_label_and_alignment() -> None:
    torch.manual_seed(0)
    image = _smooth_batch(2, (64, 56), 6, channels=3)
    label = (image[:, :1] > 0.2).float()  # the label is a function of channel 0
    spatial = AugmentationConfig(intensity_prob=0, gamma_prob=0, noise_prob=0, smooth_prob=0,
                                 spatial_prob=1.0, elastic_prob=1.0, elastic_magnitude=3.0)
    out, lab = BatchAugment(spatial, out_size=(48, 40))(image, label)
    assert out.shape == (6, 3, 48, 40) and lab.shape == (6, 1, 48, 40)
    assert set(lab.unique().tolist()) <= {0.0, 1.0}
    ch0 = out[:, :1]
    clear = ((ch0 - 0.2).abs() > 0.15) & (ch0 != 0)
    assert float(((ch0 > 0.2).float() == lab)[clear].float().mean()) > 0.995
    assert (out - image[:, :, 8:56, 8:48]).abs().mean() > 0.05  # it did move things
    full, lab2 = BatchAugment(AugmentationConfig())(image, label)  # every transform on, defaults
    assert full.shape == image.shape and torch.isfinite(full).all() and set(lab2.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("shape", "out_size"), [((48, 40), None), ((48, 40), (40, 32)), ((40, 40, 32), (32, 32, 24))])
def test_batch_augment_copies_flip_only_samples_exactly_and_resamples_the_others(shape, out_size) -> None:
    """Samples that drew only flips are a flipped centre window (no interpolation), the others are
    resampled; the whole batch equals what one ``grid_sample`` over every sample gives."""
    import torch.nn.functional as F

    image = _smooth_batch(3, shape, 12, channels=2)
    label = (image[:, :1] > 0.2).float()
    cfg = AugmentationConfig(intensity_prob=0, gamma_prob=0, noise_prob=0, smooth_prob=0, spatial_prob=0.5,
                             flip_prob=0.5, elastic_prob=0.3, elastic_magnitude=2.0)
    aug = BatchAugment(cfg, out_size=out_size)
    torch.manual_seed(7)
    out, lab = aug(image, label)
    torch.manual_seed(7)  # the same draws, through one grid for every sample
    grid = aug.sampling_grid(image.shape[0], image.shape[2:], image.device)
    ref = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    ref_lab = (F.grid_sample(label, grid, mode="bilinear", padding_mode="zeros", align_corners=True) > 0.5).float()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(lab, ref_lab)
    torch.manual_seed(7)
    draws = aug._affine(image.shape[0], out_size or shape, (1.0,) * len(shape), image.device)
    flips = draws.discrete.diagonal(dim1=1, dim2=2)  # flips only here: a diagonal of ±1
    plain = [i for i in range(image.shape[0]) if not draws.moved[i]]
    assert 0 < len(plain) < image.shape[0]  # both paths ran
    window = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(shape, out_size or shape))
    exact = 0
    for i in plain:
        expected = image[i][(slice(None), *window)].flip([1 + d for d in range(len(shape)) if flips[i, d] < 0])
        exact += int(torch.equal(out[i], expected))  # bit for bit, unless the elastic field moved it
    assert exact >= 1


def test_batch_augment_rejects_mismatched_dimensions() -> None:
    with pytest.raises(ValueError, match="expects image"):
        BatchAugment()(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="spacing"):
        BatchAugment(spacing=(1.0, 1.0, 1.0))(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="out_size"):
        BatchAugment(out_size=(4, 4, 4))(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="out_size must be 2 or 3 positive sizes"):
        BatchAugment(out_size=(4,))
    with pytest.raises(ValueError, match="spacing must be 2 or 3 positive"):
        BatchAugment(spacing=(1.0, 0.0))


def test_batch_augment_2d_time_for_a_16_slice_batch(capsys: pytest.CaptureFixture[str]) -> None:
    """16 × 3 × 256² slices, default settings and every transform on: printed; asserted loosely (shared CPU)."""
    torch.manual_seed(0)
    image = torch.randn(16, 3, 256, 256)
    label = (torch.rand(16, 1, 256, 256) > 0.9).float()
    every = AugmentationConfig(spatial_prob=1.0, elastic_prob=1.0, intensity_prob=1.0, gamma_prob=1.0, noise_prob=1.0,
                               smooth_prob=1.0)
    seconds = {}
    for name, cfg in (("defaults", AugmentationConfig()), ("every transform", every)):
        aug = BatchAugment(cfg)
        aug(image, label)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(3):
            out, lab = aug(image, label)
        seconds[name] = ((time.perf_counter() - start) / 3, (time.process_time() - cpu) / 3)
        assert out.shape == image.shape and lab.shape == label.shape
    with capsys.disabled():
        print("\nBatchAugment 16x3x256x256, " + ", ".join(f"{k}: {w:.3f} s wall / {c:.3f} s CPU" for k, (w, c) in seconds.items())
              + f" ({torch.get_num_threads()} threads)")
    assert seconds["defaults"][1] < 2.0  # CPU seconds: wall time on a shared 2-core machine says little
