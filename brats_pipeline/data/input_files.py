"""A case's input files around MONAI's ``LoadImaged``: every error names the file at fault.

MONAI's ``LoadImaged`` stacks a case's modality files into one ``C×X×Y×Z`` image whose meta
data names only the first file, and its errors for files that do not fit together ("spatial_shape
of all images should be the same", "all input arrays must have the same shape", "operands could
not be broadcast") or cannot be read (``EOFError`` of a truncated ``.nii.gz``) name none. Around it,
in :func:`brats_pipeline.data.transforms.deterministic_transforms` (training, validation, the
bundle's inference):

* :class:`SourceFilesd` keeps each key's file names (``image`` -> ``image_files``) before loading;
* :class:`CheckHeadersd` reads the NIfTI headers (nibabel, no voxels) before loading: each file
  present and readable, 3D (or one 4D file with a channel per modality), with dimensions the file
  can hold, all on one grid (shape and affine, the label's too);
* :class:`NamedLoadImaged` is MONAI's ``LoadImaged`` whose errors name the file that could not be read;
* :class:`CheckFinited` (after loading) names the channel's own file for NaN/Inf voxels.

Values that are not NIfTI file names (an image already in memory, another format MONAI reads)
are left to MONAI.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.transforms import LoadImaged, MapTransform

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.modalities import base_task

#: Suffix of the key under which :class:`SourceFilesd` keeps a key's file names (``image`` -> ``image_files``).
SOURCES_SUFFIX = "_files"


def file_names(value: Any) -> list[str]:
    """``value`` as a list of file names (one name, or a sequence of names), else ``[]``."""
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, Sequence) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [str(v) for v in value]
    return []


def _nifti(files: Sequence[str]) -> bool:
    from preprocessing.io import NIFTI_SUFFIXES

    return bool(files) and all(f.lower().endswith(NIFTI_SUFFIXES) for f in files)


class SourceFilesd(MapTransform):
    """Before loading: keep the file name(s) of each key under ``<key>_files`` (a list of strings).

    Values that are not file names (an image already in memory, as MONAI Label may pass) are left
    alone and keep no names. A MONAI ``MapTransform`` (as every step here), so ``CacheDataset``
    caches through it.
    """

    def __init__(self, keys: str | Sequence[str]) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if files := file_names(d.get(key)):
                d[f"{key}{SOURCES_SUFFIX}"] = files
        return d


class CheckHeadersd(MapTransform):
    """Before loading: read each NIfTI file's header and check that the case's files fit together.

    ``image`` is one file per modality of ``task`` (each 3D), or one 4D file with the modalities on
    its last axis (for a modality subset: the subset's, or every modality of the task); every other key (``label``) one 3D file. All files share one grid (shape and
    affine within 1e-3 mm). A file's header must also promise no more voxel data than the file can
    hold (:func:`preprocessing.io.read_geometry`).

    Raises (when called):
        ImageFileError: a ``ValueError`` ``"<file>: <problem>"`` naming the file (missing, unreadable
            header, 2D/4D, wrong number of channels, dimensions the file cannot hold, another grid).
        ValueError: a wrong number of modality files (naming them).
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task, image_key: str = "image") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.task = get_task(task)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        from preprocessing.io import ImageFileError, check_same_geometry, read_geometry

        n, names = len(self.task.modalities), self.task.modality_names
        geometries = {}
        for key in self.keys:
            files = file_names(data.get(key))
            if not _nifti(files):
                continue
            if key != self.image_key:
                for i, path in enumerate(files):
                    geometries[key if len(files) == 1 else f"{key}[{i}]"] = read_geometry(path)
            elif len(files) == 1:
                geometry = read_geometry(files[0], ndim=(3, 4))
                if (geometry.shape[3:] or (1,))[0] not in (n, len(base_task(self.task).modalities)):  # a subset's, or all
                    raise ImageFileError(files[0], f"expected {n} channels ({', '.join(names)}), as one 4D NIfTI with the "
                                         "modalities stacked on the last axis in that order (brats-bundle stack) or one "
                                         f"file per modality; the header's shape is {geometry.shape}")
                geometries[key] = geometry
            elif len(files) != n:
                raise ValueError(f"{', '.join(files)}: expected {n} modality files ({', '.join(names)}), got {len(files)}")
            else:
                geometries.update((name, read_geometry(path)) for name, path in zip(names, files))
        check_same_geometry(geometries)
        return data


class NamedLoadImaged(LoadImaged):
    """MONAI's ``LoadImaged``; when it fails, the error names the file that could not be read.

    A key's NIfTI files are then read one by one (:func:`preprocessing.io.read_array`, which names
    a truncated or corrupt file); an error no single file explains names the key's files.
    """

    def __call__(self, data: Any, reader: Any = None) -> Any:
        try:
            return super().__call__(data, reader)
        except Exception as exc:
            from preprocessing.io import ImageFileError, read_array

            for key in self.keys:
                files = file_names(data.get(key)) if isinstance(data, Mapping) else []
                for path in files if _nifti(files) else []:
                    try:
                        read_array(path, ndim=range(1, 8), dtype=None, check_finite=False)
                    except ImageFileError as bad:
                        raise bad from exc
                if files:
                    raise RuntimeError(f"{', '.join(files)}: cannot be loaded as one image "
                                       f"({type(exc).__name__}: {exc})") from exc
            raise


class CheckFinited(MapTransform):
    """After loading: fail naming the file when an image holds NaN/Inf voxels.

    The file is the channel's own when :class:`SourceFilesd` kept one file per channel, else the
    image's (MONAI's meta data names the first file only).
    """

    def __init__(self, keys: str | Sequence[str]) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        import torch

        for key in self.keys:
            image = torch.as_tensor(data[key])
            finite = torch.isfinite(image)
            if bool(finite.all()):
                continue
            files = list(data.get(f"{key}{SOURCES_SUFFIX}") or [])
            source = source_name(data[key], key)
            if image.ndim >= 1 and len(files) == image.shape[0] > 1:
                channel = next(i for i in range(image.shape[0]) if not bool(finite[i].all()))
                source, finite = files[channel], finite[channel]
            raise ValueError(f"{source}: {int((~finite).sum())} voxels are NaN or Inf")
        return data


def source_name(value: Any, key: Hashable) -> str:
    """The file a loaded image came from (MONAI's ``filename_or_obj``: the first file of a stack), else ``key``."""
    meta = getattr(value, "meta", None) or {}
    return str(meta.get("filename_or_obj", key))
