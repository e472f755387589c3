"""One case through the ITK stage: read -> reorient -> N4 -> register -> resample -> normalise -> write.

:func:`preprocess_case` is the Python API; :func:`preprocessing.batch.run_batch` runs it over many
cases (``brats-preprocess`` does that for a task's datalist or dataset folder). What it does, and
the modality names, label values and output names of a case, is a
:class:`~preprocessing.config.PreprocessConfig`: the package knows no task. The steps, in order
(each can be switched off):

1. **read** every modality (and the label) with checks (:func:`preprocessing.itk_io.read_image`):
   unreadable/truncated, not 3D, NaN/Inf, constant; the label must share the reference
   modality's grid and hold only the configured label values;
2. **reorient** to ``orientation`` (RAS by default; permutes axes, no interpolation);
3. **foreground mask** of the reference modality (``mask_method``);
4. **N4** bias correction of each modality at its native resolution (the reference in the
   reference mask, the others in their own foreground mask);
5. **register** each other modality rigidly (or affinely) to the reference (Mattes MI);
6. **resample** every modality onto one output grid, the reference's field of view at
   ``spacing`` (one interpolation per image: registration transform and resampling together;
   B-spline for images, nearest neighbour for the label and mask);
7. **normalise**: crop all volumes to the mask's bounding box plus ``crop_margin`` voxels,
   z-score each modality inside the mask (and inside its own field of view, once registered:
   a sequence that covers fewer slices than the reference is 0 where it has no data),
   optional percentile clipping, zero outside;
8. **write** ``OUT/<case_id>/<case_id><sep><modality>.nii.gz`` (float32),
   ``<case_id><sep><label suffix>.nii.gz`` (uint8) and the JSON sidecar
   ``<case_id>_preprocess.json`` *last*: a case is finished exactly when its sidecar exists
   and lists outputs that all exist. Every file is written atomically.

A case's input files, where it is written and whether it is finished already (:class:`~preprocessing.case.Case`,
:func:`~preprocessing.case.output_paths`, :func:`~preprocessing.case.finished_record`) are
:mod:`preprocessing.case`'s.

Arrays in results are SimpleITK images (z, y, x in memory, LPS geometry); the written NIfTI
files are read by nibabel/MONAI as x, y, z in RAS world coordinates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.case import Case, output_paths, sidecar_path
from preprocessing.config import PreprocessConfig
from preprocessing.io import ImageFileError
from preprocessing.itk_io import check_same_grid, read_image, read_label, write_image
from preprocessing.outputs import write_json


@dataclass
class CaseResult:
    """What :func:`preprocess_case` produced.

    Attributes:
        case_id: the case.
        images: modality -> preprocessed image (``sitkFloat32``), on one grid.
        label: label on that grid (``sitkUInt8``) or ``None``.
        mask: foreground mask on that grid.
        record: the sidecar content (steps, parameters, timings, outputs).
        outputs: modality (and ``"label"``) -> written file, when an output folder was given.
        sidecar: the sidecar file, when written.
        seconds: wall time.
    """

    case_id: str
    images: dict[str, Any]
    label: Any | None
    mask: Any
    record: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)
    sidecar: Path | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------------- the steps
def _read_case(case: Case, config: PreprocessConfig) -> tuple[dict[str, Any], Any | None]:
    import numpy as np
    import SimpleITK as sitk

    images = {}
    for name in case.ordered(config.modalities):
        images[name] = read_image(case.images[name], channel=case.channels.get(name))
    label = None
    if case.label is not None:
        label = read_label(case.label)
        reference = images[config.reference]
        check_same_grid(
            {config.reference: reference, "label": label},
            {config.reference: str(case.images[config.reference]), "label": str(case.label)},
        )
        if config.label_values is not None:
            found = np.unique(sitk.GetArrayViewFromImage(label)).tolist()
            unexpected = sorted(set(found) - set(config.label_values))
            if unexpected:
                raise ImageFileError(
                    case.label, f"label values {unexpected} are not among the expected values {list(config.label_values)}"
                )
    return images, label


def preprocess_case(
    case: Case | Mapping[str, Any],
    config: PreprocessConfig | None = None,
    out_dir: str | os.PathLike | None = None,
) -> CaseResult:
    """Run the ITK stage on one case (module docstring for the steps).

    Args:
        case: a :class:`Case`, or a mapping with ``case_id``, ``images`` (modality -> path)
            and optionally ``label``, ``channels``, ``fold``.
        config: settings (:class:`PreprocessConfig` defaults if ``None``).
        out_dir: output root; ``None`` returns the images without writing anything.

    Returns:
        :class:`CaseResult`.

    Raises:
        ValueError: bad case description (unknown/missing modality, unsafe id, reference
            not among the modalities).
        ImageFileError: a bad input file, naming it (unreadable, truncated, not 3D, NaN,
            constant, label grid or values wrong).
        RuntimeError: registration failed.
    """
    import SimpleITK as sitk

    from preprocessing.n4 import n4_bias_correct
    from preprocessing.normalize import foreground_mask, normalize_images, resolve_mask_method
    from preprocessing.register import register_to_reference
    from preprocessing.resample import make_reference_grid, orientation_of, reorient, resample_to_grid

    start = time.perf_counter()
    config = config or PreprocessConfig()
    if not isinstance(case, Case):
        case = Case(**dict(case))
    case.validate(config.modalities, config.reference)
    ref = config.reference
    steps: list[dict[str, Any]] = []

    def step(name: str, t0: float, **info: Any) -> None:
        steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 3), **info})

    t0 = time.perf_counter()
    images, label = _read_case(case, config)
    inputs = case.inputs_record()  # the content just read (the resume key)
    step(
        "read",
        t0,
        inputs={
            m: {"size_xyz": list(im.GetSize()), "spacing_mm": [round(s, 4) for s in im.GetSpacing()], "orientation": orientation_of(im)}
            for m, im in images.items()
        },
    )

    if config.orientation is not None:
        t0 = time.perf_counter()
        images = {m: reorient(im, config.orientation) for m, im in images.items()}
        label = None if label is None else reorient(label, config.orientation)
        step("reorient", t0, orientation=config.orientation)

    t0 = time.perf_counter()
    method = resolve_mask_method(images[ref], config.mask_method)
    mask = foreground_mask(images[ref], method)
    step("mask", t0, method=method, source=ref)

    if config.n4:
        t0 = time.perf_counter()
        per_modality = {}
        for m, im in images.items():
            result = n4_bias_correct(im, mask if m == ref else foreground_mask(im, method), config.n4_config)
            images[m] = result.corrected
            per_modality[m] = result.record()
        step("n4", t0, parameters=config.n4_config.to_dict(), modalities=per_modality)

    transforms: dict[str, Any] = {}
    if config.register:
        t0 = time.perf_counter()
        per_modality = {}
        for m, im in images.items():
            if m == ref:
                continue
            result = register_to_reference(im, images[ref], config.registration, fixed_mask=mask)
            transforms[m] = result.transform
            per_modality[m] = result.record()
        step("register", t0, reference=ref, parameters=config.registration.to_dict(), modalities=per_modality)

    t0 = time.perf_counter()
    grid = images[ref] if config.spacing is None else make_reference_grid(images[ref], config.spacing)
    coverage = {  # where each registered modality has data on the output grid
        m: resample_to_grid(_ones_like(images[m]), grid, transforms[m], "nearest") for m in transforms
    }
    images = {
        m: resample_to_grid(im, grid, transforms.get(m), config.image_interpolator) for m, im in images.items()
    }
    mask = resample_to_grid(mask, grid, None, "nearest")
    if label is not None:
        label = resample_to_grid(label, grid, None, config.label_interpolator)
    step(
        "resample",
        t0,
        spacing_mm=None if config.spacing is None else list(config.spacing),
        size_xyz=list(grid.GetSize()),
        image_interpolator=config.image_interpolator,
        label_interpolator=config.label_interpolator,
    )

    if config.normalize:
        t0 = time.perf_counter()
        images, label, mask, record = normalize_images(
            images, mask, config.crop_margin, config.clip_percentiles, label=label, coverage=coverage
        )
        step("normalize", t0, **record)
    images = {m: sitk.Cast(im, sitk.sitkFloat32) for m, im in images.items()}
    if label is not None:
        label = sitk.Cast(label, sitk.sitkUInt8)

    reference = next(iter(images.values()))
    record: dict[str, Any] = {
        "case_id": case.case_id,
        "status": "ok",
        "fold": case.fold,
        "inputs": inputs,
        "config": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "output_grid": {
            "size_xyz": list(reference.GetSize()),
            "spacing_mm": list(reference.GetSpacing()),
            "origin_lps_mm": list(reference.GetOrigin()),
            "direction_lps": list(reference.GetDirection()),
            "orientation": orientation_of(reference),
        },
        "steps": steps,
        "versions": _versions(),
    }
    result = CaseResult(case.case_id, images, label, mask, record)
    if out_dir is not None:
        _write_outputs(case, config, result, Path(out_dir), start)
    result.seconds = time.perf_counter() - start
    return result


def _ones_like(image: Any) -> Any:
    """An all-ones ``sitkUInt8`` image on ``image``'s grid (to map its field of view)."""
    import SimpleITK as sitk

    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    return ones


def _write_outputs(case: Case, config: PreprocessConfig, result: CaseResult, out_dir: Path, start: float) -> None:
    """Write images, label, then the sidecar; on any error remove what this call wrote."""
    paths = output_paths(case, out_dir, config)
    sidecar = sidecar_path(out_dir, case.case_id)
    folder = sidecar.parent
    existed = folder.exists()
    written: list[Path] = []
    try:
        sidecar.unlink(missing_ok=True)  # the case is unfinished from here until the new sidecar lands
        for name, path in paths.items():
            image = result.label if name == "label" else result.images[name]
            write_image(image, path)
            written.append(path)
        result.record["outputs"] = {name: path.name for name, path in paths.items()}
        result.record["seconds"] = round(time.perf_counter() - start, 3)
        write_json(result.record, sidecar)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    result.outputs = paths
    result.sidecar = sidecar


def _versions() -> dict[str, str]:
    import SimpleITK as sitk

    versions = {"SimpleITK": sitk.Version_VersionString()}
    try:
        from importlib.metadata import version

        versions["brats-pipeline"] = version("brats-pipeline")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        pass
    return versions
