"""Reading one case for inference: modality files read in parallel, then the deterministic transforms.

A case is a mapping with ``case_id`` and ``image`` (modality files in the task's channel
order, or one 4D file with channels last as MSD ships it), like a datalist entry. Files are
read with :func:`preprocessing.io.read_array` (checks: missing, truncated, not 3D/4D,
NaN/Inf, constant — an all-zero modality is an empty scan, not something to predict from) on a thread pool — gzip decoding releases the GIL, so four modalities decode in
about the time of one — and assembled into a ``C×X×Y×Z`` ``MetaTensor`` carrying the first
file's affine, exactly as ``LoadImaged(ensure_channel_first=True)`` would. The remaining
steps are :func:`brats_pipeline.data.transforms.deterministic_transforms` without its loading
step, so inference sees what training saw, and ``Invertd`` can undo the spatial steps:
:func:`prepare_case` runs the transforms on a case, :func:`invert_probabilities` maps the
network's output back onto the input's grid. :func:`image_files` and :func:`case_id_of` read a case
(defined in :mod:`brats_pipeline.data.cases`, the one case reader).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.cases import case_id_of, image_files
from brats_pipeline.data.modalities import base_task, channel_indices, select_case

__all__ = ["ParallelLoadImaged", "case_id_of", "image_files", "inference_transforms", "invert_probabilities", "prepare_case"]


class ParallelLoadImaged:
    """Load ``image`` (list of 3D files, or one 4D file) as a ``C×X×Y×Z`` float32 ``MetaTensor``.

    Not invertible (``Invertd`` stops at it, leaving the prediction on the files' voxel grid).

    Args:
        task: decides how many channels to expect (a modality subset: its channels of a 4D file of all).
        executor: thread pool reading the modality files concurrently (``None``: one by one).
        atol: tolerance (mm) when checking that all modalities share one affine.
    """

    def __init__(self, task: str | Task, executor: Executor | None = None, atol: float = 1e-3) -> None:
        self.task = get_task(task)
        self.executor = executor
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        from preprocessing.io import ImageFileError, read_array

        d = dict(data)
        files = image_files(d)
        n = len(self.task.modalities)
        if len(files) == 1:
            array, geometry = read_array(files[0], ndim=(3, 4))
            if array.ndim == 3 and n == 1:
                array = array[None]
            elif array.ndim == 4 and array.shape[-1] == n:
                array = np.moveaxis(array, -1, 0)
            elif array.ndim == 4 and array.shape[-1] == len(base_task(self.task).modalities):  # a subset of a 4D file
                array = np.moveaxis(array, -1, 0)[list(channel_indices(self.task))]
            else:
                raise ImageFileError(files[0], f"expected {n} modalities ({', '.join(self.task.modality_names)}) "
                                     f"stacked on the last axis, got shape {array.shape}")
            for i, (channel, name) in enumerate(zip(array, self.task.modality_names)):  # an empty modality
                if channel.size and channel.min() == channel.max():
                    raise ImageFileError(files[0], f"channel {i} ({name}) is constant (every voxel is "
                                         f"{channel.flat[0]}): empty volume?")
            geometries = [geometry]
        else:
            if len(files) != n:
                raise ValueError(f"case {d.get('case_id', '?')}: expected {n} modality files "
                                 f"({', '.join(self.task.modality_names)}), got {len(files)}")
            if self.executor is None:
                results = [_read_modality(f) for f in files]
            else:
                results = list(self.executor.map(_read_modality, files))
            geometries = [g for _, g in results]
            ref = geometries[0]
            for geo in geometries[1:]:
                if geo.spatial_shape != ref.spatial_shape:
                    raise ImageFileError(geo.path, f"shape {geo.spatial_shape} differs from {ref.path} {ref.spatial_shape}")
                if not np.allclose(geo.affine, ref.affine, atol=self.atol):
                    raise ImageFileError(geo.path, f"affine differs from {ref.path}: the modalities are not on one grid")
            array = np.stack([a for a, _ in results])
        ref = geometries[0]
        affine = torch.as_tensor(ref.affine, dtype=torch.float64)
        meta = {
            "affine": affine,
            "original_affine": affine.clone(),
            "spatial_shape": np.asarray(ref.spatial_shape),
            "original_channel_dim": 0,
            "filename_or_obj": str(files[0]),
            "space": "RAS",
        }
        d["image"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), meta=meta)
        return d


def _read_modality(path: str) -> tuple[np.ndarray, Any]:
    """One modality file's voxels and geometry; a constant (all-zero, empty) image is an error naming the file."""
    from preprocessing.io import read_array

    return read_array(path, check_constant=True)


def inference_transforms(
    task: str | Task,
    executor: Executor | None = None,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
    crop_margin: int = 4,
    normalize: bool = True,
) -> Any:
    """Parallel loading + the deterministic transforms (without their loader), as one ``Compose``.

    Args:
        task: the task (channel order).
        executor: thread pool for reading modality files.
        spacing, orientation, crop_foreground, crop_margin, normalize: as in
            :func:`brats_pipeline.data.transforms.deterministic_transforms` (use the values the
            model was trained with).
    """
    from monai.transforms import Compose, LoadImaged

    from brats_pipeline.data.transforms import deterministic_transforms

    det = deterministic_transforms(
        task, with_label=False, spacing=spacing, orientation=orientation,
        crop_foreground=crop_foreground, crop_margin=crop_margin, normalize=normalize,
    )
    steps = [t for t in det.transforms if not isinstance(t, LoadImaged)]
    return Compose([ParallelLoadImaged(task, executor), *steps])


def prepare_case(transform: Any, case: Mapping[Hashable, Any], task: Task) -> dict[Hashable, Any]:
    """Run ``transform`` (:func:`inference_transforms`) on a case; a modality subset reads only its files.

    A MONAI ``RuntimeError("applying transform ...")`` is unwrapped: its cause is raised (a
    :class:`preprocessing.io.ImageFileError` naming the file, ...).
    """
    try:
        return transform(select_case(case, task))  # a modality subset: only its files
    except RuntimeError as exc:  # MONAI wraps errors as "applying transform ..."; surface the cause
        cause: BaseException = exc
        while str(cause).startswith("applying transform") and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is exc:
            raise
        raise cause from None


def invert_probabilities(transform: Any, data: Mapping[Hashable, Any], probabilities: Any) -> Any:
    """``(R, X', Y', Z')`` probabilities on the network's grid -> ``(R, X, Y, Z)`` float32 on the input's grid.

    MONAI ``Invertd`` with ``transform``, the very ``Compose`` that prepared ``data["image"]``
    (undoing crop, resampling — linear interpolation of the probabilities — and orientation).
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    image = data["image"]
    inverter = Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False, to_tensor=True)
    out = inverter({"image": image, "pred": MetaTensor(probabilities)})["pred"]
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    expected = tuple(int(s) for s in image.meta["spatial_shape"])
    if tuple(out.shape[1:]) != expected:
        raise RuntimeError(f"{image.meta.get('filename_or_obj')}: inverted prediction has shape {tuple(out.shape[1:])}, input {expected}")
    return out.float()
