"""Image files as numpy arrays: the error type, NIfTI through nibabel, and the SimpleITK <-> numpy conversions.

Axis order: every array this module returns or accepts is **x, y, z** (nibabel/MONAI order),
with the world affine in nibabel's RAS+ convention (mm). SimpleITK images are z, y, x in
memory and LPS in world space; :func:`sitk_to_array` / :func:`array_to_sitk` are the only
conversions between the two, and :func:`sitk_to_ras_affine` / :func:`ras_affine_to_sitk` /
:func:`array_to_sitk_ras` convert between SimpleITK's LPS geometry and nibabel's RAS affine.

Errors: every problem with a file raises :class:`ImageFileError` (a ``ValueError``) whose
message starts with the file's path, then says what is wrong (missing, unreadable, truncated,
wrong dimensionality, NaN/Inf, constant, geometry mismatch).

Writing is atomic: data goes to a temporary file in the destination folder and is renamed
into place, so a killed job never leaves a half-written output.

NIfTI files as arrays (what ``brats_pipeline`` reads and writes): :func:`read_geometry` reads a
header, :func:`read_array` the voxels, both with checks; :func:`check_same_geometry` compares
grids; :func:`write_nifti` writes atomically and :func:`read_description` reads back the header's
note. The ITK stage's SimpleITK images (NIfTI, NRRD, MetaImage, DICOM series) are read, checked
and written by :mod:`preprocessing.itk_io`.
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
        holds = f"at most {format_bytes(room)} once decompressed" if name.endswith(".gz") else f"{format_bytes(max(room, 0))} after the header"
        raise ImageFileError(path, f"truncated or corrupt file: the header's dimensions {dims} of {dtype.name} imply "
                             f"{format_bytes(needed)} of voxel data, but the file ({format_bytes(size)}) holds {holds}")


def format_bytes(n: int) -> str:
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
                f"{name} affine differs from {ref_name} ({ref.path}): spacing {format_values(geo.spacing)} vs "
                f"{format_values(ref.spacing)} mm, origin {format_values(geo.affine[:3, 3])} vs {format_values(ref.affine[:3, 3])} mm",
            )


def format_values(values: Sequence[float]) -> str:
    """``(1.0, 0.25)`` -> ``"(1, 0.25)"``: numbers for an error message, 3 significant digits."""
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
# SimpleITK geometry (LPS+) <-> nibabel affine (RAS+)
# --------------------------------------------------------------------------------------------
#: NIfTI/nibabel world space is RAS+, ITK/SimpleITK world space is LPS+: x and y flip sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


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
