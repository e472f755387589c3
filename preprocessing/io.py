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
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    return Geometry(str(path), shape, np.asarray(img.affine, dtype=np.float64))


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
        raise ImageFileError(path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the file's suffix (``.nii.gz``) so writers pick the right format.
    On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: Any = None) -> Path:
    """Write an x, y, z[, c] array with a RAS affine to ``path`` atomically.

    Args:
        array: voxel data, x-y-z order.
        affine: 4x4 voxel-to-RAS (mm).
        path: destination ``.nii`` / ``.nii.gz``.
        dtype: on-disk data type (default: the array's).
    """
    import nibabel as nib

    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
