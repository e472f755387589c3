"""The seed paper's augmentation table (issue #17), row by row, measured on both paths.

Every row runs alone (``AugmentationConfig.none()`` plus that row) through the per-sample CPU
path (``cpu_augmentation``, MONAI) and the batched path (``BatchAugment``), on a *coordinate
image* as in ``test_augment.py``: channel ``i`` holds each voxel's index along axis ``i`` and a
last channel holds ones, so after bilinear resampling each output voxel holds the input
position it was sampled from (exact: the map is linear), and voxels whose sample touched the
zero padding show a ones channel below 1 and are left out. An affine row is then measured by a
least-squares fit ``source = J · x + c`` (x centred on the patch), per sample.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from brats_pipeline.data.augment import BatchAugment
from brats_pipeline.data.augmentation_config import AugmentationConfig
from brats_pipeline.data.elastic import smooth_displacement
from brats_pipeline.data.transforms import cpu_augmentation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PATHS = ("cpu", "batch")


def _only(**fields: object) -> AugmentationConfig:
    return AugmentationConfig(**{**asdict(AugmentationConfig.none()), **fields})


def _coordinates(shape: tuple[int, ...]) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.cat([torch.stack(torch.meshgrid(*axes, indexing="ij")), torch.ones(1, *shape)])


def _run(path: str, cfg: AugmentationConfig, image: torch.Tensor, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` augmented copies of ``image`` (C, *size); the label (image channel 0 > its mean) is checked to follow."""
    label = (image[:1] > image[0].mean()).float()
    if path == "batch":
        torch.manual_seed(seed)
        out, lab = BatchAugment(cfg)(image.expand(n, *image.shape).clone(), label.expand(n, *label.shape).clone())
        pairs = list(zip(out, lab))
    else:
        from monai.transforms import Compose
        from monai.utils import set_determinism

        set_determinism(seed)
        transform = Compose(cpu_augmentation(cfg, spatial_dims=image.ndim - 1))
        pairs = []
        for _ in range(n):
            d = transform({"image": image.clone(), "label": label.clone()})
            pairs.append((torch.as_tensor(d["image"]), torch.as_tensor(d["label"])))
        set_determinism(None)
    for img, lab in pairs:
        assert img.shape == image.shape and set(lab.unique().tolist()) <= {0.0, 1.0}
    return [img for img, _ in pairs]


def _fit(coords: torch.Tensor, warped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``source = J · x + c`` over the voxels sampled inside the patch (x, source centred, voxels)."""
    dims = coords.shape[0] - 1
    inside = warped[-1] > 1 - 1e-4
    centre = torch.tensor([(n - 1) / 2 for n in coords.shape[1:]], dtype=torch.float64)
    x = coords[:-1].movedim(0, -1)[inside].double() - centre
    src = warped[:-1].movedim(0, -1)[inside].double() - centre
    beta = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1), src).solution
    assert len(x) > 0.3 * inside.numel()
    return beta[:dims].T, beta[dims]


def _offdiag(j: torch.Tensor) -> torch.Tensor:
    return j - torch.diag(j.diagonal())


def _monai_shear(j: torch.Tensor) -> torch.Tensor:
    """MONAI's 2D shear matrix of the factors (j[0, 1], j[1, 0]): both paths use ``create_shear`` (MONAI >= 1.6:
    elementary shears composed, [[1, a], [b, 1 + ab]]; older: [[1, a], [b, 1]])."""
    from monai.transforms.utils import create_shear

    return torch.as_tensor(create_shear(2, [float(j[0, 1]), float(j[1, 0])]), dtype=j.dtype)[:2, :2]


# table row (rotation ±20°, shift 10 %, shear 0.2, zoom ±10 %) -> (fields, what is measured per sample, the paper's bound, what else must stay identity)
ROWS = {
    "rotation 20 deg": (
        {"rotate_deg": 20.0},
        lambda j, c, n: math.degrees(abs(math.atan2(float(j[1, 0]), float(j[0, 0])))),
        20.0,
        lambda j, c: float((j @ j.T - torch.eye(len(j), dtype=j.dtype)).abs().max() + c.abs().max()),
    ),
    "shift 10 pct": (
        {"shift": 0.1},
        lambda j, c, n: float((c.abs() / torch.tensor(n, dtype=c.dtype)).max()),
        0.1,
        lambda j, c: float((j - torch.eye(len(j), dtype=j.dtype)).abs().max()),
    ),
    "shear 0.2": (
        {"shear": 0.2},
        lambda j, c, n: float(_offdiag(j).abs().max()),
        0.2,
        lambda j, c: float((j - _monai_shear(j)).abs().max() + c.abs().max()),  # MONAI's shear of those factors
    ),
    "zoom 10 pct": (
        {"scale": 0.1},
        lambda j, c, n: float((j.diagonal() - 1).abs().max()),
        0.1,
        lambda j, c: float(_offdiag(j).abs().max() + c.abs().max()),
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("row", "shape"), [(r, (64, 56)) for r in ROWS] + [("shift 10 pct", (40, 36, 32)),
                                                                            ("zoom 10 pct", (40, 36, 32))])
def test_affine_row_reaches_the_papers_range_and_not_more(path: str, row: str, shape: tuple[int, ...]) -> None:
    """Each sample's fitted map: the row's parameter within the paper's bound, its largest value over
    12 samples above 80 % of it, and nothing else moved (the other parts of the map stay identity)."""
    fields, measure, bound, rest = ROWS[row]
    coords = _coordinates(shape)
    values = []
    for warped in _run(path, _only(**{"spatial_prob": 1.0, "rotate_deg": 0.0, "scale": 0.0, "shear": 0.0, **fields}), coords, 12):
        j, c = _fit(coords, warped)
        values.append(measure(j, c, shape))
        assert rest(j, c) < 2e-3, (row, path, j, c)
    assert max(values) <= bound * (1 + 1e-3) + 1e-4, (row, path, values)
    assert max(values) >= 0.8 * bound and min(values) < 0.6 * bound, (row, path, values)


def test_shift_turns_with_the_rotation_and_keeps_its_length() -> None:
    """Shift and rotation together: the translation (fitted c) is the drawn shift turned by the rotation
    (MONAI's composition R·(x + t)), so its length stays within 10 % of the size on a square patch."""
    coords = _coordinates((64, 64))
    cfg = _only(spatial_prob=1.0, rotate_deg=20.0, scale=0.0, shear=0.0, shift=0.1)
    for path in PATHS:
        lengths = [float(_fit(coords, w)[1].norm()) for w in _run(path, cfg, coords, 12)]
        assert max(lengths) <= 0.1 * 64 * math.sqrt(2) + 1e-3 and max(lengths) > 0.5 * 6.4, (path, lengths)


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 exact symmetries of the (x, y) square of ``x`` (C, X, Y[, Z]): rot90 k = 0..3, without and with
    transpose (index = 4 · transposed + k); 3D: then the same 8 with z flipped (index + 8)."""
    planes = [torch.rot90(t, k, (1, 2)) for t in (x, x.transpose(1, 2)) for k in range(4)]
    return planes + [p.flip(3) for p in planes] if x.ndim == 4 else planes


def _which(out: torch.Tensor, x: torch.Tensor) -> int:
    hits = [i for i, v in enumerate(_dihedral(x)) if torch.equal(out, v)]
    assert hits, "not an exact permutation of the input"
    return hits[0]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(24, 24), (16, 16, 6)])
def test_transpose_rot90_and_flips_are_exact_permutations(path: str, shape: tuple[int, ...]) -> None:
    """Outputs equal one of the 8 symmetries of the square bit for bit (3D: of the x-y plane), label the same one;
    rot90 alone: k = 0 with 1 - p, k = 1, 2, 3 with p/3 each; transpose alone: half transposed."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, *shape, generator=g)
    label = (image[:1] > image[0].mean()).float()
    outs = _run(path, _only(flip_prob=0.5, transpose_prob=0.5, rot90_prob=0.75), image, 32)
    assert len({_which(o, image) % 8 for o in outs}) >= 6  # the whole group of the plane shows up
    for o in outs:
        assert _which((o[:1] > image[0].mean()).float(), label) == _which(o, image)
    ks = [_which(o, image) for o in _run(path, _only(rot90_prob=0.75), image, 48, seed=1)]
    assert set(ks) == {0, 1, 2, 3} and 4 <= ks.count(0) <= 22, ks  # about 12 of 48
    flags = [_which(o, image) for o in _run(path, _only(transpose_prob=0.5), image, 40, seed=2)]
    assert set(flags) == {0, 4} and 10 <= flags.count(4) <= 30, flags


def test_batch_permutations_are_copied_exactly_and_match_one_grid() -> None:
    """BatchAugment with transpose/rot90/flips and shift on a margin input (60×52 -> 48×48): samples that drew
    only permutations are exact copies of the permuted centre window, and the whole batch equals one
    ``grid_sample`` over every sample (the grid carries the permutations)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    image = F.interpolate(torch.randn(16, 2, 7, 7, generator=g), size=(60, 52), mode="bilinear", align_corners=True)
    label = (image[:, :1] > 0.2).float()
    cfg = _only(flip_prob=0.5, transpose_prob=0.5, rot90_prob=0.75, spatial_prob=0.5, rotate_deg=10.0, shift=0.1)
    aug = BatchAugment(cfg, out_size=(48, 48))
    torch.manual_seed(5)
    out, lab = aug(image, label)
    torch.manual_seed(5)
    grid = aug.sampling_grid(16, (60, 52), image.device)
    ref = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(lab, (F.grid_sample(label, grid, mode="bilinear", padding_mode="zeros", align_corners=True) > 0.5).float())
    torch.manual_seed(5)
    plain = (~aug._affine(16, (48, 48), (1.0, 1.0), image.device).moved).nonzero().flatten().tolist()
    assert 0 < len(plain) < 16
    seen = {_which(out[i], image[i, :, 6:54, 2:50]) for i in plain}  # bit for bit
    assert len(seen) >= 2


def test_transpose_and_rot90_need_a_square_plane() -> None:
    from monai.transforms import Compose

    cfg = _only(rot90_prob=1.0)
    with pytest.raises(ValueError, match="square x-y plane"):
        BatchAugment(cfg)(torch.zeros(2, 1, 24, 20))
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose names the transform, the cause says why
        Compose(cpu_augmentation(_only(transpose_prob=1.0), spatial_dims=2))({"image": torch.zeros(1, 24, 20), "label": torch.zeros(1, 24, 20)})
    assert "square x-y plane; 'image' has spatial shape (24, 20)" in str(err.value.__cause__)
    BatchAugment(cfg, out_size=(20, 20))(torch.zeros(2, 1, 24, 20))  # the output window is square: fine


# ------------------------------------------------------------------------------ elastic α/σ
def _expected_std(alpha: float, sigma: float, dims: int) -> float:
    """Per-axis std of α · G_σ * U(-1, 1): variance 1/3 times Σ g², Σ g² ≈ (2σ√π)^-D for a normalised Gaussian."""
    return alpha / math.sqrt(3) * (2 * sigma * math.sqrt(math.pi)) ** (-dims / 2)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("shape", "alpha", "sigma", "n"), [((96, 96), 34.0, 4.0, 12), ((40, 40, 32), 20.0, 2.0, 8)])
def test_alpha_sigma_elastic_has_the_expected_displacement_statistics(path, shape, alpha, sigma, n) -> None:
    """Away from the border (3σ + 2 voxels): per-axis RMS displacement α/√3·(2σ√π)^(-D/2) within 10 %
    (34/4 in 2D: 1.38 pixels; 20/2 in 3D: 0.61 voxels), and σ in voxels: the correlation of the
    field at a lag of σ and 2σ voxels is exp(-1/4) = 0.78 and exp(-1) = 0.37 (Gaussian-smoothed white
    noise) within 0.08; the mean is 0 within 10 % of the std."""
    coords = _coordinates(shape)
    m, lag = int(3 * sigma) + 2, int(sigma)
    crop = (slice(None), *(slice(m, -m) for _ in shape))
    fields = []
    for warped in _run(path, _only(elastic_prob=1.0, elastic_alpha=alpha, elastic_sigma=sigma), coords, n):
        assert bool((warped[-1][crop[1:]] > 1 - 1e-4).all())
        fields.append((warped[:-1] - coords[:-1])[crop])
    field = torch.stack(fields).double()  # (n, D, *interior)
    rms, expected = float(field.pow(2).mean().sqrt()), _expected_std(alpha, sigma, len(shape))
    assert rms == pytest.approx(expected, rel=0.10), (path, rms, expected)
    assert abs(float(field.mean())) < 0.1 * expected
    for step, target in ((lag, math.exp(-0.25)), (2 * lag, math.exp(-1.0))):
        a, b = field[:, :, :-step], field[:, :, step:]  # lag along axis 0
        corr = float((a * b).mean() / field.pow(2).mean())
        assert corr == pytest.approx(target, abs=0.08), (path, step, corr, target)


def test_alpha_sigma_field_is_monai_rand3delastic() -> None:
    """``smooth_displacement`` is MONAI ``Rand3DElastic``'s field (sigma_range (σ, σ), magnitude_range (α, α)):
    the same random numbers give the same displacement of a coordinate image."""
    from monai.transforms import Rand3DElastic

    shape, alpha, sigma = (20, 22, 18), 12.0, 2.0
    monai = Rand3DElastic(sigma_range=(sigma, sigma), magnitude_range=(alpha, alpha), prob=1.0, padding_mode="zeros")
    monai.set_random_state(0)
    monai.randomize(shape)
    coords = _coordinates(shape)
    theirs = torch.as_tensor(monai(coords, randomize=False))
    inside = theirs[-1] > 1 - 1e-4
    ours = smooth_displacement(torch.from_numpy((monai.rand_offset + 1) / 2)[None], alpha, sigma)[0].movedim(-1, 0)
    assert inside.float().mean() > 0.8
    torch.testing.assert_close((theirs[:-1] - coords[:-1])[:, inside], ours[:, inside], atol=2e-4, rtol=0)


# ---------------------------------------------------------------------------- intensity rows
@pytest.mark.parametrize("path", PATHS)
def test_brightness_and_gamma_factors_are_within_0_8_to_1_2(path: str) -> None:
    """Brightness (intensity_scale 0.2): each channel times one factor in [0.8, 1.2]; gamma_range (0.8, 1.2):
    a [0, 1] ramp becomes ramp ** γ with γ in [0.8, 1.2]. Both ends reached within 0.05 over 12 samples."""
    ramp = torch.linspace(0.0, 1.0, 16 * 16).view(1, 16, 16)
    image = torch.cat([ramp + 0.5, 2 * ramp + 1.0])  # positive, two channels
    factors = []
    for out in _run(path, _only(intensity_prob=1.0, intensity_scale=0.2, intensity_shift=0.0), image, 12):
        ratio = out / image
        assert float(ratio.flatten(1).std(1).max()) < 1e-5  # one factor per channel
        factors += ratio.flatten(1)[:, 0].tolist()
    assert 0.8 - 1e-6 <= min(factors) <= 0.85 and 1.15 <= max(factors) <= 1.2 + 1e-6, factors
    half = 127  # ramp value 127/255 ≈ 0.5
    gammas = [math.log(float(o.flatten()[half])) / math.log(float(ramp.flatten()[half]))
              for o in _run(path, _only(gamma_prob=1.0, gamma_range=(0.8, 1.2)), ramp, 12)]
    assert 0.8 - 1e-3 <= min(gammas) <= 0.85 and 1.15 <= max(gammas) <= 1.2 + 1e-3, gammas


# ------------------------------------------------------------------------------- the table
def test_paper_table_config_holds_every_row() -> None:
    cfg = AugmentationConfig.paper_table()
    assert (cfg.flip_prob, cfg.rotate_deg, cfg.shift, cfg.shear, cfg.scale) == (0.5, 20.0, 0.1, 0.2, 0.1)
    assert (cfg.intensity_scale, cfg.intensity_shift, tuple(cfg.gamma_range)) == (0.2, 0.0, (0.8, 1.2))
    assert cfg.elastic_alpha > 0 and cfg.elastic_sigma > 0 and cfg.spatial_prob == 1.0
    assert (cfg.noise_prob, cfg.smooth_prob, cfg.transpose_prob, cfg.rot90_prob) == (0, 0, 0, 0)
    shipped = Path(__file__).resolve().parents[2] / "brats_pipeline" / "configs" / "augmentation_paper_table.yaml"
    assert shipped.is_file()
    coords = _coordinates((48, 48))
    for path in PATHS:  # runs on both paths, image finite, label binary (checked in _run)
        assert all(torch.isfinite(o).all() for o in _run(path, cfg, coords, 4))


def test_new_options_default_off_and_are_checked() -> None:
    cfg = AugmentationConfig()
    assert (cfg.shift, cfg.transpose_prob, cfg.rot90_prob, cfg.elastic_alpha, cfg.elastic_sigma) == (0, 0, 0, 0, 0)
    assert (cfg.shear, cfg.elastic_magnitude, cfg.scale, cfg.rotate_deg) == (0.05, 4.0, 0.1, 20.0)  # unchanged
    with pytest.raises(ValueError, match="elastic_alpha and elastic_sigma"):
        AugmentationConfig(elastic_alpha=34.0)
    with pytest.raises(ValueError, match="elastic_alpha and elastic_sigma"):
        AugmentationConfig(elastic_alpha=34.0, elastic_sigma=-1.0)
    with pytest.raises(ValueError, match="shift and scale"):
        AugmentationConfig(shift=1.0)
    with pytest.raises(ValueError, match="rot90_prob"):
        AugmentationConfig(rot90_prob=1.5)
