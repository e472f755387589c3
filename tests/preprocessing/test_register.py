"""Rigid registration: a known shift is recovered; the real raw study's sequences get aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from brats_pipeline.data.synthetic import GM, make_phantom
from preprocessing.case import Case
from preprocessing.config import PreprocessConfig
from preprocessing.io import array_to_sitk_ras, sitk_to_array
from preprocessing.itk_io import check_same_grid, read_image
from preprocessing.pipeline import preprocess_case
from preprocessing.register import (
    RegistrationConfig,
    image_centre,
    level_factors,
    mutual_information,
    register_to_reference,
)
from preprocessing.resample import reorient, resample_to_grid

SPACING = 2.0  # mm; "within one voxel" means within 2 mm


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("brats2021", (64, 64, 56), seed=6, spacing=(SPACING,) * 3, bias=0.0)


@pytest.mark.parametrize(
    ("rotation_deg", "translation_mm"),
    [((0.0, 0.0, 0.0), (5.0, -3.0, 4.0)), ((2.0, -2.0, 3.0), (-4.0, 6.0, 2.5))],
    ids=["shift", "shift+rotation"],
)
def test_known_rigid_motion_is_recovered_within_a_voxel(phantom, rotation_deg, translation_mm) -> None:
    """T2 of a phantom moved by a known rigid transform, registered to the phantom's T1c (multi-modal)."""
    fixed = array_to_sitk_ras(phantom.images["t1c"], phantom.affine)
    truth = sitk.Euler3DTransform()
    truth.SetCenter(image_centre(fixed))
    truth.SetRotation(*np.radians(rotation_deg))
    truth.SetTranslation(translation_mm)
    # moving(p) = t2(truth^-1(p)): the registration must find truth (fixed space -> moving space)
    moving = resample_to_grid(array_to_sitk_ras(phantom.images["t2"], phantom.affine), fixed, truth.GetInverse(), "linear")
    brain = np.argwhere(phantom.tissue >= GM)[::200]
    points = [fixed.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in brain]
    initial = [np.linalg.norm(np.subtract(p, truth.TransformPoint(p))) for p in points]
    assert min(initial) > 3.0  # the motion was real: more than a voxel everywhere

    # every sampling seed (and ITK's thread count, which changes the sums) must land within a voxel
    for seed in (0, 1, 2):
        result = register_to_reference(moving, fixed, RegistrationConfig(seed=seed))
        errors = [np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p))) for p in points]
        assert max(errors) < SPACING / 2, f"seed {seed}: max error {max(errors):.2f} mm"
        assert result.metric_final < result.metric_initial
    record = result.record()
    assert record["transform"]["name"] == "Euler3DTransform" and len(record["transform"]["parameters"]) == 6


def test_affine_option_returns_an_affine_transform(phantom) -> None:
    fixed = array_to_sitk_ras(phantom.images["t1c"], phantom.affine)
    stretch = sitk.AffineTransform(3)
    stretch.SetCenter(image_centre(fixed))
    stretch.SetMatrix((1.06, 0, 0, 0, 0.96, 0, 0, 0, 1.0))
    stretch.SetTranslation((2.0, 0.0, -2.0))
    moving = resample_to_grid(array_to_sitk_ras(phantom.images["flair"], phantom.affine), fixed, stretch, "linear")
    config = RegistrationConfig(transform="affine", shrink_factors=(4, 2), smoothing_sigmas_mm=(8.0, 2.0), iterations=50)
    result = register_to_reference(moving, fixed, config)
    assert result.transform.GetName() == "AffineTransform"
    assert result.metric_final < result.metric_initial
    matrix = np.asarray(result.transform.GetMatrix()).reshape(3, 3)
    assert abs(matrix[0, 0] - 1.0) > 0.02  # a scaling a rigid transform could not express was found


def test_pyramid_keeps_small_and_thick_axes(phantom) -> None:
    small = array_to_sitk_ras(phantom.images["t1c"], phantom.affine)  # 64 x 64 x 56 at 2 mm
    assert level_factors(small, 8, min_level_size=32) == (2, 2, 1)
    thick = sitk.Image([256, 224, 26], sitk.sitkFloat32)
    thick.SetSpacing((0.9, 0.9, 5.5))
    assert level_factors(thick, 4, min_level_size=32) == (4, 4, 1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"transform": "bspline"}, "unknown transform"),
        ({"initialization": "guess"}, "unknown initialization"),
        ({"sampling_percentage": 0.0}, "sampling_percentage"),
        ({"shrink_factors": (4, 2), "smoothing_sigmas_mm": (1.0,)}, "one entry per level"),
        ({"relaxation": 1.0}, "relaxation"),
    ],
)
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegistrationConfig(**settings)


def test_mutual_information_prefers_aligned_arrays() -> None:
    rng = np.random.default_rng(0)
    a = ndimage_smooth(rng.random((32, 32, 32)))
    assert mutual_information(a, a**2) > mutual_information(a, np.roll(a, 4, axis=0)) + 0.1
    with pytest.raises(ValueError, match="differ in shape"):
        mutual_information(a, a[:-1])


def ndimage_smooth(array: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(array, 2.0)


RAW = {"t1c": "t1c", "t1": "t1", "t2": "t2", "flair": "fla"}


@pytest.fixture(scope="module")
def raw_aligned(raw_study_dir: Path):
    """The raw study registered to its T1c and resampled onto the T1c grid (no N4, no normalisation)."""
    case = Case("TCGA-FG-6692", {m: str(raw_study_dir / f"TCGA-FG-6692_{s}.nii.gz") for m, s in RAW.items()})
    config = PreprocessConfig(modalities=tuple(RAW), spacing=None, n4=False, normalize=False)
    return case, preprocess_case(case, config)


def test_real_sequences_share_the_reference_grid(raw_aligned) -> None:
    case, result = raw_aligned
    reference = reorient(read_image(case.images["t1c"]))
    check_same_grid({"reference": reference, **result.images})  # raises naming the odd one out
    assert result.images["t2"].GetSize() == (256, 224, 26)


def test_real_registration_improves_similarity(raw_aligned) -> None:
    """Mutual information with the T1c inside the head, registered vs. header alignment only."""
    case, result = raw_aligned
    reference = result.images["t1c"]
    head = sitk_to_array(result.mask).astype(bool)
    fixed = sitk_to_array(reference)
    steps = {s["step"]: s for s in result.record["steps"]}
    for modality in ("t1", "t2", "flair"):
        unregistered = resample_to_grid(reorient(read_image(case.images[modality])), reference, None, "bspline")
        before = mutual_information(fixed, sitk_to_array(unregistered), head)
        after = mutual_information(fixed, sitk_to_array(result.images[modality]), head)
        assert after > 1.5 * before, f"{modality}: MI {before:.3f} -> {after:.3f}"
        entry = steps["register"]["modalities"][modality]
        assert entry["metric_final"] < entry["metric_initial"]
