"""preprocessing.io and preprocessing.itk_io with SimpleITK: formats, RAS<->LPS, checks with named errors, atomic writes."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.io import (
    ImageFileError,
    array_to_sitk_ras,
    ras_affine_to_sitk,
    read_array,
    sitk_to_array,
    sitk_to_ras_affine,
    write_nifti,
)
from preprocessing.itk_io import check_same_grid, read_image, read_label, write_image


def _oblique_affine() -> np.ndarray:
    """0.9 x 0.9 x 5.5 mm, rotated ~10 degrees about x, LAS-like, like the raw clinical study."""
    angle = np.radians(10)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.9, 0.9, 5.5])
    affine[:3, 3] = [90.0, -110.0, -40.0]
    return affine


def test_read_image_matches_nibabel_geometry_and_axis_order(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((12, 10, 6)).astype(np.float32)
    affine = _oblique_affine()
    path = write_nifti(data, affine, tmp_path / "a.nii.gz")
    image = read_image(path)
    assert image.GetSize() == (12, 10, 6)  # SimpleITK size is x, y, z
    np.testing.assert_allclose(sitk_to_ras_affine(image), nib.load(str(path)).affine, atol=1e-4)
    np.testing.assert_array_equal(sitk_to_array(image), data)  # x, y, z like nibabel


def test_ras_lps_round_trip() -> None:
    affine = _oblique_affine()
    origin, spacing, direction = ras_affine_to_sitk(affine)
    np.testing.assert_allclose(spacing, [0.9, 0.9, 5.5], atol=1e-9)
    assert origin[0] == pytest.approx(-90.0) and origin[1] == pytest.approx(110.0)  # LPS flips x and y
    image = array_to_sitk_ras(np.zeros((4, 5, 6), np.float32), affine)
    np.testing.assert_allclose(sitk_to_ras_affine(image), affine, atol=1e-9)


def test_sheared_affine_is_refused() -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(ValueError, match="not orthogonal"):
        ras_affine_to_sitk(affine)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_other_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    image = array_to_sitk_ras(np.random.default_rng(1).random((8, 9, 7)).astype(np.float32), _oblique_affine())
    path = write_image(image, tmp_path / f"b{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(sitk_to_array(back), sitk_to_array(image))
    np.testing.assert_allclose(sitk_to_ras_affine(back), sitk_to_ras_affine(image), atol=1e-4)


def _write_dicom_series(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """One int16 DICOM file per axial slice (volume is x, y, z), with positions and a shared series UID.

    ITK's GDCM writer sets the process locale to ``C`` (Python's default text encoding becomes
    ASCII for every later test in this process), so the locale is restored afterwards.
    """
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, volume, spacing)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for k in range(volume.shape[2]):
        slice_ = sitk.GetImageFromArray(np.ascontiguousarray(volume[:, :, k].T[None]).astype(np.int16))
        slice_.SetSpacing(spacing)
        slice_.SetOrigin((0.0, 0.0, k * spacing[2]))
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{k * spacing[2]}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(spacing[2]),
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def test_dicom_series_folder(tmp_path: Path) -> None:
    volume = np.random.default_rng(2).integers(0, 1000, (16, 12, 5)).astype(np.int16)
    _write_dicom_series(tmp_path / "series", volume, (0.8, 0.8, 4.0))
    image = read_image(tmp_path / "series")
    assert image.GetSize() == (16, 12, 5)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 4.0), atol=1e-6)
    np.testing.assert_array_equal(sitk_to_array(image), volume)


def test_folder_without_dicom_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFileError, match="empty: folder holds no DICOM series"):
        read_image(tmp_path / "empty")


# ----------------------------------------------------------------------------- bad input files
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match="nope.nii.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_truncated_file(tmp_path: Path, write_volume, dtype, suffix: str) -> None:
    """ITK would zero-fill the missing voxels; the check reads the file itself."""
    data = (np.random.default_rng(3).random((32, 32, 32)) * 1000).astype(dtype)
    path = write_volume(tmp_path / f"t{suffix}", data)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageFileError, match=rf"t{suffix.replace('.', '[.]')}: .*truncated or corrupt"):
        read_image(path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "c.nii.gz"
    path.write_bytes(gzip.compress(os.urandom(2000)))
    with pytest.raises(ImageFileError, match=r"c\.nii\.gz: unreadable, truncated or corrupt"):
        read_image(path)


def test_two_dimensional_image(tmp_path: Path) -> None:
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), str(path))
    with pytest.raises(ImageFileError, match=r"flat\.nii\.gz: expected a 3D"):
        read_image(path)


def test_four_dimensional_image_needs_a_channel(tmp_path: Path) -> None:
    data = np.random.default_rng(4).random((8, 8, 6, 3)).astype(np.float32)
    path = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(ImageFileError, match=r"multi\.nii\.gz: expected a 3D image, got 4D"):
        read_image(path)
    np.testing.assert_array_equal(sitk_to_array(read_image(path, channel=2)), data[..., 2])


def test_nan_voxels(tmp_path: Path, write_volume) -> None:
    """ITK reads NaN as 0; the check reads float NIfTI data itself."""
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3] = np.nan
    path = write_volume(tmp_path / "nan.nii.gz", data)
    with pytest.raises(ImageFileError, match=r"nan\.nii\.gz: 1 voxels are NaN or Inf"):
        read_image(path)


def test_constant_image(tmp_path: Path, write_volume) -> None:
    path = write_volume(tmp_path / "const.nii.gz", np.full((8, 8, 8), 7, np.int16))
    with pytest.raises(ImageFileError, match=r"const\.nii\.gz: constant image"):
        read_image(path)


def test_label_with_fractions(tmp_path: Path, write_volume) -> None:
    data = np.zeros((8, 8, 8), np.float32)
    data[2:4, 2:4, 2:4] = 1.5
    path = write_volume(tmp_path / "seg.nii.gz", data)
    with pytest.raises(ImageFileError, match=r"seg\.nii\.gz: label map has non-integer values"):
        read_label(path)


def test_label_reads_as_uint8(tmp_path: Path, write_volume) -> None:
    data = np.zeros((8, 8, 8), np.float32)
    data[2:4, 2:4, 2:4] = 4
    label = read_label(write_volume(tmp_path / "seg.nii.gz", data))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk_to_array(label))) == {0, 4}


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda im: sitk.Image([9, 8, 8], im.GetPixelID()), "size"),
        (lambda im: _with(im, spacing=(1.0, 1.0, 2.0)), "spacing"),
        (lambda im: _with(im, origin=(5.0, 0.0, 0.0)), "origin"),
        (lambda im: _with(im, direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)), "direction"),
    ],
)
def test_grid_disagreement_names_file_and_attribute(change, what: str) -> None:
    reference = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    other = change(reference)
    with pytest.raises(ImageFileError, match=rf"/data/t2\.nii\.gz: t2 {what}"):
        check_same_grid({"t1c": reference, "t2": other}, {"t1c": "/data/t1c.nii.gz", "t2": "/data/t2.nii.gz"})


def _with(image: sitk.Image, **changes) -> sitk.Image:
    out = sitk.Image(image)
    for key, value in changes.items():
        getattr(out, f"Set{key.capitalize()}")(value)
    return out


# ------------------------------------------------------------------------------ atomic writes
def test_outputs_get_normal_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_image(sitk.Image([4, 4, 4], sitk.sitkFloat32), tmp_path / "p.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported output type"):
        write_image(sitk.Image([4, 4, 4], sitk.sitkFloat32), tmp_path / "x.png")

    class Boom(RuntimeError):
        pass

    from preprocessing.io import atomic_path

    with pytest.raises(Boom), atomic_path(tmp_path / "y.nii.gz") as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_nibabel_readers_still_agree(tmp_path: Path, write_volume) -> None:
    """The nibabel-based helpers brats_pipeline.data uses keep working beside the SimpleITK ones."""
    data = np.random.default_rng(5).random((6, 7, 8)).astype(np.float32)
    path = write_volume(tmp_path / "v.nii.gz", data)
    array, geometry = read_array(path)
    np.testing.assert_array_equal(array, sitk_to_array(read_image(path)))
    np.testing.assert_allclose(geometry.affine, sitk_to_ras_affine(read_image(path)), atol=1e-5)

