"""Image I/O and validation: the one place that reads, checks and writes volumes.

Axis order: every array this module returns or accepts is **x, y, z** (nibabel/MONAI order),
with the world affine in nibabel's RAS+ convention (mm). SimpleITK images are z, y, x in
memory and LPS in world space; :func:`sitk_to_array` / :func:`array_to_sitk` are the only
conversions between the two.

Errors: every problem with a file raises :class:`ImageFileError` (a ``ValueError``) whose
message starts with the file's path, then says what is wrong (missing, unreadable, truncated,
wrong dimensionality, NaN/Inf, constant, geometry mismatch).

Writing is atomic: data goes to a temporary file in the destination folder and is renamed
into place, so a killed job never leaves a half-written output.

The preprocessing stage works on SimpleITK images: :func:`read_image` reads NIfTI, NRRD,
MetaImage and DICOM series folders with the same checks (for NIfTI it checks the file
itself for truncation and NaN, which ITK's reader would zero-fill or turn into 0),
:func:`read_label` reads label maps, :func:`check_same_grid` compares grids, :func:`write_image`
writes atomically, and :func:`sitk_to_ras_affine` / :func:`ras_affine_to_sitk` /
:func:`array_to_sitk_ras` convert between SimpleITK's LPS geometry and nibabel's RAS affine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.outputs import atomic_path, write_json  # noqa: F401  (re-exported: most writers import them from here)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class ImageFileError(ValueError):
    """A problem with one image file; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Geometry:
    """Shape (x, y, z[, c]) and 4x4 RAS affine (mm) of a NIfTI file, read from its header."""

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along x, y, z (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def strip_nifti_suffix(name: str) -> str:
    """``"a_t1.nii.gz" -> "a_t1"``; other names unchanged."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_geometry(path: str | os.PathLike, ndim: Sequence[int] = (3,)) -> Geometry:
    """Read the header of a NIfTI file and check its dimensionality.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: accepted numbers of dimensions (``(3,)`` for a volume, ``(4,)`` for MSD images).
            A trailing singleton dimension is ignored.

    Raises:
        ImageFileError: missing, unreadable or not ``ndim``-dimensional.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a bad header
        raise ImageFileError(path, f"unreadable image header ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in ndim:
        raise ImageFileError(path, f"expected a {' or '.join(f'{n}D' for n in ndim)} image, got shape {shape}")
    if any(s == 0 for s in shape):
        raise ImageFileError(path, f"empty image, shape {shape}")
    _check_data_size(path, img)
    return Geometry(str(path), shape, np.asarray(img.affine, dtype=np.float64))


#: No deflate stream (``.nii.gz``) expands more than 1032-fold (RFC 1951: 258 bytes per 2-bit code at best).
_MAX_GZIP_RATIO = 1033


def _check_data_size(path: Path, img: Any) -> None:
    """Raise if a NIfTI header's dimensions imply more voxel data than the file can hold (a corrupt header)."""
    name, size = path.name.lower(), path.stat().st_size
    dims, dtype = tuple(int(s) for s in img.header.get_data_shape()), img.header.get_data_dtype()
    needed = int(np.prod(dims, dtype=object)) * dtype.itemsize
    room = size * _MAX_GZIP_RATIO if name.endswith(".gz") else size - int(getattr(img.dataobj, "offset", 0))
    if name.endswith(NIFTI_SUFFIXES) and needed > room:
        holds = f"at most {_bytes(room)} once decompressed" if name.endswith(".gz") else f"{_bytes(max(room, 0))} after the header"
        raise ImageFileError(path, f"truncated or corrupt file: the header's dimensions {dims} of {dtype.name} imply "
                             f"{_bytes(needed)} of voxel data, but the file ({_bytes(size)}) holds {holds}")


def _bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    power = min(max(n, 1).bit_length() - 1, 69) // 10
    return f"{n} bytes" if power == 0 else f"{n / 1024 ** power:.3g} {'KMGTPE'[power - 1]}iB"


def read_array(
    path: str | os.PathLike,
    ndim: Sequence[int] = (3,),
    dtype: Any = np.float32,
    check_finite: bool = True,
    check_constant: bool = False,
) -> tuple[np.ndarray, Geometry]:
    """Read a NIfTI file's voxels (x, y, z[, c]) and header, with checks.

    Raises:
        ImageFileError: missing, unreadable, truncated, wrong dimensionality, NaN/Inf
            (``check_finite``), constant (``check_constant``).
    """
    import nibabel as nib

    geometry = read_geometry(path, ndim)
    try:
        data = np.asarray(nib.load(str(path)).dataobj, dtype=dtype)
    except Exception as exc:  # EOFError, zlib.error, OSError ... depending on where the file ends
        raise ImageFileError(path, f"truncated or corrupt image data ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc
    data = data.reshape(geometry.shape)
    if check_finite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise ImageFileError(path, f"{bad} voxels are NaN or Inf")
    if check_constant and data.size and data.min() == data.max():
        raise ImageFileError(path, f"constant image (every voxel is {data.flat[0]}): empty volume?")
    return data, geometry


def check_same_geometry(
    geometries: Mapping[str, Geometry], atol: float = 1e-3
) -> None:
    """Check that volumes share a spatial grid (shape and affine within ``atol`` mm).

    Args:
        geometries: name (e.g. modality) -> geometry; the first one is the reference.

    Raises:
        ImageFileError: naming the first file that disagrees with the reference and how.
    """
    items = list(geometries.items())
    if not items:
        return
    ref_name, ref = items[0]
    for name, geo in items[1:]:
        if geo.spatial_shape != ref.spatial_shape:
            raise ImageFileError(
                geo.path, f"{name} shape {geo.spatial_shape} differs from {ref_name} shape {ref.spatial_shape} ({ref.path})"
            )
        if not np.allclose(geo.affine, ref.affine, atol=atol):
            raise ImageFileError(
                geo.path,
                f"{name} affine differs from {ref_name} ({ref.path}): spacing {_fmt(geo.spacing)} vs "
                f"{_fmt(ref.spacing)} mm, origin {_fmt(geo.affine[:3, 3])} vs {_fmt(ref.affine[:3, 3])} mm",
            )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def write_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: Any = None, description: str | None = None
) -> Path:
    """Write an x, y, z[, c] array with a RAS affine to ``path`` atomically.

    Args:
        array: voxel data, x-y-z order.
        affine: 4x4 voxel-to-RAS (mm).
        path: destination ``.nii`` / ``.nii.gz``.
        dtype: on-disk data type (default: the array's).
        description: the header's ``descrip`` (at most 80 ASCII characters; :func:`read_description`
            reads it back), e.g. the resume key of the run that wrote the file.

    Raises:
        ValueError: a description that does not fit the header.
    """
    import nibabel as nib

    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if description is not None:
        if len(description) > 80 or not description.isascii():
            raise ValueError(f"{path}: NIfTI description must be at most 80 ASCII characters, got {description!r}")
        img.header["descrip"] = description.encode("ascii")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def read_description(path: str | os.PathLike) -> str | None:
    """The header ``descrip`` of a NIfTI file (``""`` if empty), or ``None`` if it cannot be read as NIfTI."""
    import nibabel as nib

    try:
        raw = nib.load(str(path)).header["descrip"]
    except Exception:  # missing, truncated or not NIfTI: no description to trust
        return None
    value = raw.item() if hasattr(raw, "item") else raw
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).rstrip("\x00")


def sitk_to_array(image: Any) -> np.ndarray:
    """SimpleITK image -> numpy array in x, y, z (the z, y, x memory order is transposed)."""
    import SimpleITK as sitk

    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image)))


def array_to_sitk(array: np.ndarray, reference: Any | None = None) -> Any:
    """Numpy array in x, y, z -> SimpleITK image; copies origin/spacing/direction from ``reference``."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(array))))
    if reference is not None:
        image.CopyInformation(reference)
    return image


# --------------------------------------------------------------------------------------------
# SimpleITK images: NIfTI, NRRD, MetaImage and DICOM series
# --------------------------------------------------------------------------------------------
#: File suffixes :func:`read_image` reads through SimpleITK (a DICOM series is a folder).
SITK_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")

#: Single-file formats :func:`write_image` writes (``.mhd``/``.nhdr`` keep data in a second file).
WRITE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".mha")

#: NIfTI/nibabel world space is RAS+, ITK/SimpleITK world space is LPS+: x and y flip sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def image_suffix(path: str | os.PathLike) -> str:
    """The format suffix of ``path`` (``".nii.gz"``, ``".nrrd"`` ...), lower case."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def sitk_to_ras_affine(image: Any) -> np.ndarray:
    """4x4 voxel-to-RAS affine (mm) of a SimpleITK image, as nibabel would report it.

    The affine maps a voxel index (i, j, k) in **x, y, z** order to RAS+ world coordinates;
    SimpleITK stores origin/spacing/direction in LPS+.
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return affine


def ras_affine_to_sitk(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Split a 4x4 voxel-to-RAS affine into SimpleITK ``(origin, spacing, direction)`` in LPS+.

    Raises:
        ValueError: the affine has a zero-length axis or its axes are not orthogonal
            (ITK images cannot hold a sheared grid).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {affine.shape}")
    lps = _LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if (spacing <= 0).any():
        raise ValueError(f"affine has a zero-length axis (spacing {tuple(spacing)})")
    direction = lps / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine axes are not orthogonal (sheared grid); SimpleITK cannot represent it")
    origin = _LPS_TO_RAS @ affine[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def array_to_sitk_ras(array: np.ndarray, affine: np.ndarray) -> Any:
    """Numpy array in x, y, z with a 4x4 RAS affine -> SimpleITK image (LPS geometry)."""
    image = array_to_sitk(array)
    origin, spacing, direction = ras_affine_to_sitk(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


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
                    where, f"{name} {what} {_fmt(value)} differs from {ref_name} {_fmt(expected)} ({paths.get(ref_name, ref_name)})"
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
                raise OSError(errno.ENOSPC, f"No space left on device while writing ({_bytes(free)} free)", str(path)) from exc
            raise OSError(errno.EIO, f"written incompletely ({exc.problem})", str(path)) from exc
    return Path(path)
