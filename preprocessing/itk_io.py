"""SimpleITK images for the ITK stage: read (NIfTI, NRRD, MetaImage, DICOM series), check, write.

:func:`read_image` reads NIfTI, NRRD, MetaImage and DICOM series folders with the same checks
(for NIfTI it checks the file itself for truncation and NaN, which ITK's reader would zero-fill
or turn into 0), :func:`read_label` reads label maps, :func:`check_image` checks voxel values,
:func:`check_same_grid` compares grids, and :func:`write_image` writes atomically (a temporary
file renamed into place, checked whole first for NIfTI).

Images are SimpleITK's: z, y, x in memory, LPS in world space. The conversions to x, y, z numpy
arrays and nibabel's RAS affine are :mod:`preprocessing.io`'s (:func:`~preprocessing.io.sitk_to_array`,
:func:`~preprocessing.io.sitk_to_ras_affine` ...), as is the error type: every problem with a file
raises :class:`~preprocessing.io.ImageFileError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.io import NIFTI_SUFFIXES, ImageFileError, format_bytes, format_values, read_array
from preprocessing.outputs import atomic_path

#: File suffixes :func:`read_image` reads through SimpleITK (a DICOM series is a folder).
SITK_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")

#: Single-file formats :func:`write_image` writes (``.mhd``/``.nhdr`` keep data in a second file).
WRITE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".mha")


def image_suffix(path: str | os.PathLike) -> str:
    """The format suffix of ``path`` (``".nii.gz"``, ``".nrrd"`` ...), lower case."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _dicom_series_files(folder: Path, series_id: str | None) -> list[str]:
    import SimpleITK as sitk

    series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series:
        raise ImageFileError(folder, "folder holds no DICOM series")
    if series_id is None:
        if len(series) > 1:
            raise ImageFileError(folder, f"folder holds {len(series)} DICOM series {series}; name one with series_id")
        series_id = series[0]
    elif series_id not in series:
        raise ImageFileError(folder, f"no DICOM series {series_id!r}; the folder holds {series}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))


def read_image(
    path: str | os.PathLike,
    *,
    channel: int | None = None,
    pixel_type: Any = "float32",
    check_finite: bool = True,
    check_constant: bool = True,
    series_id: str | None = None,
) -> Any:
    """Read one 3D volume as a SimpleITK image (LPS geometry), with checks.

    Reads NIfTI, NRRD, MetaImage (``.mha``/``.mhd``) and, when ``path`` is a folder, the DICOM
    series in it (slices sorted by position through GDCM).

    Args:
        path: image file, or a folder holding one DICOM series.
        channel: for a 4D file (x, y, z, c: MSD images), the channel to return; a 4D file
            without ``channel`` is an error unless its last axis has size 1.
        pixel_type: ``"float32"`` (images), ``None`` (keep the file's type) or a SimpleITK
            pixel id such as ``sitk.sitkUInt8``.
        check_finite: reject NaN/Inf voxels.
        check_constant: reject an image whose voxels all have one value (an empty volume).
        series_id: DICOM series to read when the folder holds several.

    Returns:
        A 3D ``SimpleITK.Image``; in memory it is z, y, x (use :func:`sitk_to_array` for x, y, z).

    Raises:
        ImageFileError: missing, unreadable/truncated/corrupt, not 3D, NaN/Inf, constant.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        files = _dicom_series_files(path, series_id)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
    elif path.is_file():
        if image_suffix(path) not in SITK_SUFFIXES and image_suffix(path) != ".dcm":
            raise ImageFileError(path, f"unsupported file type; expected one of {SITK_SUFFIXES}, .dcm or a DICOM folder")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
    else:
        raise ImageFileError(path, "file not found")
    if path.is_file() and image_suffix(path) in NIFTI_SUFFIXES:
        _check_nifti_data(path, check_finite)  # ITK zero-fills truncated data and reads NaN as 0
    try:
        image = reader.Execute()
    except RuntimeError as exc:  # ITK reports bad headers and truncated data alike
        message = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reversed(message) if line.strip()), "")
        raise ImageFileError(path, f"unreadable, truncated or corrupt image ({detail[:200]})") from exc

    size = list(image.GetSize())
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFileError(path, f"expected a scalar 3D image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if image.GetDimension() == 4:
        if channel is None and size[3] == 1:
            channel = 0
        if channel is None:
            raise ImageFileError(path, f"expected a 3D image, got 4D size {tuple(size)} (x, y, z, c); name a channel")
        if not 0 <= channel < size[3]:
            raise ImageFileError(path, f"channel {channel} out of range for 4D size {tuple(size)}")
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, channel])
    elif image.GetDimension() != 3 or (channel not in (None, 0)):
        raise ImageFileError(path, f"expected a 3D image, got {image.GetDimension()}D size {tuple(size)}")
    if min(image.GetSize()) < 2:
        raise ImageFileError(path, f"expected a 3D volume, got size {image.GetSize()} (a single slice?)")

    if pixel_type == "float32":
        image = sitk.Cast(image, sitk.sitkFloat32)
    elif pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    check_image(image, path, check_finite=check_finite, check_constant=check_constant)
    return image


def _check_nifti_data(path: Path, check_finite: bool) -> None:
    """Check what ITK's NIfTI reader does not: complete voxel data and, for float files, no NaN/Inf.

    ITK silently zero-fills a truncated ``.nii.gz`` and turns NaN into 0, so the checks run
    here, on the file: float data with ``check_finite`` are read through nibabel; otherwise the
    gzip stream is decompressed in chunks (CRC and length checked), or the size of a ``.nii``
    compared with the header.

    Raises:
        ImageFileError: truncated or corrupt data, or NaN/Inf voxels.
    """
    import gzip
    import zlib

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as exc:  # nibabel raises several types for a bad header
        raise ImageFileError(path, f"unreadable, truncated or corrupt image (bad NIfTI header: {exc})") from exc
    if check_finite and header.get_data_dtype().kind == "f":
        read_array(path, ndim=(2, 3, 4, 5), dtype=None, check_finite=True)  # raises the same named errors
        return
    shape = header.get_data_shape()
    expected = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    if image_suffix(path) == ".nii.gz":
        total = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise ImageFileError(path, f"unreadable, truncated or corrupt image (gzip stream: {exc})") from exc
    else:
        total = path.stat().st_size
    if total < expected:
        raise ImageFileError(
            path, f"unreadable, truncated or corrupt image ({total} bytes of data, the header promises {expected})"
        )


def check_image(image: Any, path: str | os.PathLike, check_finite: bool = True, check_constant: bool = True) -> None:
    """Raise :class:`ImageFileError` naming ``path`` if ``image`` has NaN/Inf voxels or is constant."""
    import SimpleITK as sitk

    values = sitk.GetArrayViewFromImage(image)
    if check_finite and np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            raise ImageFileError(path, f"{int((~finite).sum())} voxels are NaN or Inf")
    if check_constant:
        lo, hi = values.min(), values.max()
        if lo == hi:
            raise ImageFileError(path, f"constant image (every voxel is {lo}): empty volume?")


def read_label(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Read a label map (3D, integer values >= 0) as a ``sitkUInt8``/``sitkUInt16`` image.

    Float files are accepted when every value is a whole number.

    Raises:
        ImageFileError: unreadable, not 3D, NaN, negative or non-integer values.
    """
    import SimpleITK as sitk

    image = read_image(path, pixel_type=None, check_constant=False, **kwargs)
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ImageFileError(path, "label map has NaN or Inf voxels")
        if not np.array_equal(values, np.round(values)):
            raise ImageFileError(path, "label map has non-integer values")
    lo, hi = values.min(), values.max()
    if lo < 0:
        raise ImageFileError(path, f"label map has negative values (min {lo})")
    return sitk.Cast(image, sitk.sitkUInt8 if hi <= 255 else sitk.sitkUInt16)


def check_same_grid(images: Mapping[str, Any], paths: Mapping[str, str] | None = None, atol: float = 1e-3) -> None:
    """Check SimpleITK images share one voxel grid: size, spacing, direction and origin.

    Args:
        images: name (e.g. modality) -> image; the first one is the reference.
        paths: name -> file, for the error message (defaults to the name).
        atol: tolerance in mm (spacing, origin) and in direction cosines.

    Raises:
        ImageFileError: naming the first file that disagrees, what differs and both values.
    """
    items = list(images.items())
    if not items:
        return
    paths = dict(paths or {})
    ref_name, ref = items[0]
    for name, image in items[1:]:
        where = paths.get(name, name)
        checks = (
            ("size", image.GetSize(), ref.GetSize(), 0),
            ("spacing (mm)", image.GetSpacing(), ref.GetSpacing(), atol),
            ("direction", image.GetDirection(), ref.GetDirection(), atol),
            ("origin (mm)", image.GetOrigin(), ref.GetOrigin(), atol),
        )
        for what, value, expected, tol in checks:
            if len(value) != len(expected) or not np.allclose(value, expected, atol=tol, rtol=0):
                raise ImageFileError(
                    where, f"{name} {what} {format_values(value)} differs from {ref_name} {format_values(expected)} ({paths.get(ref_name, ref_name)})"
                )


def write_image(image: Any, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically; the format follows the suffix (``.nii.gz``, ``.nrrd``, ``.mha``).

    ITK reports no error when the disk fills up: a NIfTI file is checked whole before it is renamed
    into place, else ``OSError`` names ``path``.
    """
    import errno
    import shutil

    import SimpleITK as sitk

    if image_suffix(path) not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: unsupported output type; choose one of {WRITE_SUFFIXES}")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        try:
            _check_nifti_data(tmp, check_finite=False) if image_suffix(path) in NIFTI_SUFFIXES else None
        except ImageFileError as exc:
            free = shutil.disk_usage(tmp.parent).free
            if free < (1 << 20):
                raise OSError(errno.ENOSPC, f"No space left on device while writing ({format_bytes(free)} free)", str(path)) from exc
            raise OSError(errno.EIO, f"written incompletely ({exc.problem})", str(path)) from exc
    return Path(path)
