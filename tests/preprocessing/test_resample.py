"""Reorientation (RAS canonical) and resampling to a target spacing, on synthetic and real volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.io import array_to_sitk_ras, sitk_to_array
from preprocessing.itk_io import read_image, write_image
from preprocessing.resample import (
    make_reference_grid,
    orientation_of,
    reorient,
    resample_to_grid,
    resample_to_spacing,
)


def _extent(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())


def _centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_reorient_keeps_world_positions(tmp_path: Path, orientation: str) -> None:
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -5], [0, -1.0, 0, 3], [0, 0, 0, 1]])  # an "ASL"-ish file
    image = array_to_sitk_ras(data, affine)
    out = reorient(image, orientation)
    assert orientation_of(out) == orientation
    path = write_image(out, tmp_path / "o.nii.gz")
    assert "".join(nib.aff2axcodes(nib.load(str(path)).affine)) == orientation  # nibabel agrees
    assert sorted(out.GetSize()) == sorted(image.GetSize())
    for index in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:  # same value at the same world point
        point = image.TransformIndexToPhysicalPoint(index)
        assert out[out.TransformPhysicalPointToIndex(point)] == image[index]


def test_unknown_orientation() -> None:
    with pytest.raises(ValueError, match="unknown orientation 'XYZ'"):
        reorient(sitk.Image([4, 4, 4], sitk.sitkFloat32), "XYZ")


def test_resample_to_spacing_keeps_extent_and_centre() -> None:
    image = sitk.Image([40, 30, 12], sitk.sitkFloat32)
    image.SetSpacing((0.9, 0.9, 5.5))
    image.SetOrigin((-20.0, 13.0, 7.0))
    out = resample_to_spacing(image, (1.0, 1.0, 1.0))
    assert out.GetSize() == (36, 27, 66)
    assert np.all(np.abs(_extent(out) - _extent(image)) <= 0.5 + 1e-6)  # within half a new voxel
    np.testing.assert_allclose(_centre(out), _centre(image), atol=1e-6)
    assert out.GetDirection() == image.GetDirection()


def test_labels_resample_with_nearest_neighbour() -> None:
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[5:12, 4:15, 2:8] = 2
    labels[7:10, 7:10, 4:6] = 4
    image = array_to_sitk_ras(labels, np.diag([1.0, 1.0, 3.0, 1.0]))
    out = resample_to_spacing(image, (0.5, 0.5, 0.5), interpolator="nearest")
    assert set(np.unique(sitk_to_array(out))) == {0, 2, 4}
    assert out.GetPixelID() == sitk.sitkUInt8
    volume = lambda im, v: (sitk_to_array(im) == v).sum() * np.prod(im.GetSpacing())  # noqa: E731
    assert volume(out, 2) == pytest.approx(volume(image, 2), rel=0.1)


def test_downsampling_is_antialiased() -> None:
    stripes = np.zeros((64, 8, 8), np.float32)
    stripes[::3] = 1.0  # a period of 3 mm, far above what 4 mm samples can hold
    image = array_to_sitk_ras(stripes, np.eye(4))
    smooth = sitk_to_array(resample_to_spacing(image, (4.0, 1.0, 1.0), "linear"))
    aliased = sitk_to_array(resample_to_spacing(image, (4.0, 1.0, 1.0), "linear", antialias=False))
    assert smooth.std() < 0.2 * aliased.std() + 1e-6
    assert smooth.mean() == pytest.approx(1 / 3, abs=0.05)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0)])
def test_bad_spacing_is_named(spacing) -> None:
    with pytest.raises(ValueError, match="target spacing must be three positive sizes"):
        make_reference_grid(sitk.Image([4, 4, 4], sitk.sitkFloat32), spacing)


def test_resample_to_grid_applies_transform() -> None:
    data = np.zeros((20, 20, 20), np.float32)
    data[10, 10, 10] = 1.0
    image = array_to_sitk_ras(data, np.eye(4))
    # The transform maps output points to input points: output point p samples the input at p + 2 mm
    # along LPS x. Voxel index x runs along RAS x = -LPS x, so output index i samples input index i - 2.
    shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    out = sitk_to_array(resample_to_grid(image, image, shift, "nearest"))
    assert np.unravel_index(np.argmax(out), out.shape) == (12, 10, 10)


def test_real_raw_sequence_to_1mm(raw_study_dir: Path) -> None:
    """0.9 x 0.9 x 5.5 mm, 256 x 224 x 26 -> 1 mm: expected shape, same physical extent and centre."""
    image = reorient(read_image(raw_study_dir / "TCGA-FG-6692_t1.nii.gz"))
    assert image.GetSize() == (256, 224, 26)
    out = resample_to_spacing(image, (1.0, 1.0, 1.0), interpolator="linear")
    expected = tuple(int(round(n * s)) for n, s in zip(image.GetSize(), image.GetSpacing()))
    assert out.GetSize() == expected == (230, 201, 143)
    assert np.all(np.abs(_extent(out) - _extent(image)) <= 0.5 + 1e-3)
    np.testing.assert_allclose(_centre(out), _centre(image), atol=1e-3)
    np.testing.assert_allclose(out.GetSpacing(), (1.0, 1.0, 1.0))
    values = sitk_to_array(out)
    source = sitk_to_array(image)
    assert values.mean() == pytest.approx(source.mean(), rel=0.05)  # intensities survive interpolation
