"""Find the cases of a dataset laid out the way its source ships it, and check them.

Layouts (chosen by the task):

* ``case_folder`` — one folder per case, files ``<case><sep><suffix>.nii[.gz]``:
  BraTS 2020 ``BraTS20_Training_001/BraTS20_Training_001_flair.nii``,
  BraTS 2021 ``BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz``,
  BraTS 2023 ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz``,
  LGG ``TCGA_CS_4942_19970222/TCGA_CS_4942_19970222_flair.nii.gz``.
  A case without a segmentation file is unlabelled (a test case).
* ``msd`` — Medical Segmentation Decathlon: ``dataset.json`` listing 4D images
  (x, y, z, modality) in ``imagesTr``/``imagesTs`` and labels in ``labelsTr``.

:func:`check_case` validates one case at the boundary: every modality present and readable,
3D (4D with one channel per modality for MSD), data not truncated, finite and not constant,
all files on one grid (shape and affine), label values in the task's scheme.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.modalities import base_task
from preprocessing.identity import check_case_id, check_case_ids
from preprocessing.io import (
    NIFTI_SUFFIXES,
    Geometry,
    ImageFileError,
    check_same_geometry,
    read_array,
    read_geometry,
    strip_nifti_suffix,
)

CHECK_LEVELS = ("none", "header", "full")

logger = logging.getLogger(__name__)
_warned: set[tuple[str, ...]] = set()


@dataclass
class CaseRecord:
    """One case found on disk.

    Attributes:
        case_id: folder name (or MSD file stem).
        image: modality files in the task's modality order, or one 4D file (MSD).
        label: segmentation file, ``None`` for an unlabelled case.
        problem: why the case is unusable (``None`` when it is fine).
        problem_file: the file the problem is about.
    """

    case_id: str
    image: list[str] | str
    label: str | None = None
    problem: str | None = None
    problem_file: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None


def discover_cases(root: str | os.PathLike, task: str | Task) -> list[CaseRecord]:
    """List every case under ``root`` in the task's layout (no file contents are read).

    A modality subset (:func:`brats_pipeline.data.modalities.select_modalities`) looks only for
    its own modalities' files: a case without an unused modality is found whole.

    Cases whose files cannot be found (a missing modality, an ambiguous match) or whose id is
    not a safe file name (:mod:`preprocessing.identity`: a folder name with a space ...) are
    returned with ``problem`` set rather than dropped, so callers can report them. Folders
    without NIfTI files (an empty case folder, one of DICOM files) are not cases: a warning names them.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no case of this layout, or an MSD ``dataset.json`` lists
            two images with one case id.
    """
    task = get_task(task)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    cases = _discover_msd(root, task) if task.layout == "msd" else _discover_case_folders(root, task)
    if not cases:
        hint = "dataset.json + imagesTr/" if task.layout == "msd" else f"one folder per case with <case>{task.separator}<suffix>.nii.gz files"
        raise ValueError(f"{root}: no {task.name} cases found (expected {hint})")
    return cases


def _id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name output files, or ``None`` (:func:`preprocessing.identity.check_case_id`)."""
    try:
        check_case_id(case_id)
    except ValueError as exc:
        return str(exc)
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _find_file(files: Sequence[Path], case_id: str, sep: str, suffixes: Sequence[str]) -> tuple[Path | None, str | None]:
    """Return (file, problem) for the first suffix that names exactly one file."""
    stems = {f: strip_nifti_suffix(f.name) for f in files}
    for suffix in suffixes:
        exact = [f for f, s in stems.items() if s == f"{case_id}{sep}{suffix}"]
        if len(exact) == 1:
            return exact[0], None
        loose = [f for f, s in stems.items() if s.lower().endswith(f"{sep}{suffix}".lower())]
        if len(loose) == 1:
            return loose[0], None
        if len(loose) > 1:
            return None, f"ambiguous: {', '.join(f.name for f in loose)} all end in {sep}{suffix}"
    return None, None


def _discover_case_folders(root: Path, task: Task) -> list[CaseRecord]:
    cases = []
    empty = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _nifti_files(folder)
        if not files:
            empty.append(folder.name)
            continue
        case_id = folder.name
        if (problem := _id_problem(case_id)) is not None:
            cases.append(CaseRecord(case_id, [], None, problem, str(folder)))
            continue
        images: list[str] = []
        problem_file = None
        for modality in task.modalities:
            found, why = _find_file(files, case_id, task.separator, modality.suffixes)
            if found is None:
                looked = " or ".join(f"{case_id}{task.separator}{s}.nii[.gz]" for s in modality.suffixes)
                problem = why or f"missing modality {modality.name} (looked for {looked})"
                problem_file = str(folder / f"{case_id}{task.separator}{modality.suffixes[0]}.nii.gz")
                break
            images.append(str(found.resolve()))
        label, why = _find_file(files, case_id, task.separator, task.label_suffixes)
        if why and problem is None:
            problem, problem_file = why, str(folder)
        cases.append(
            CaseRecord(case_id, images, str(label.resolve()) if label else None, problem, problem_file)
        )
    if empty and (str(root.resolve()), *empty) not in _warned:  # once per process: callers may discover twice
        _warned.add((str(root.resolve()), *empty))
        logger.warning("%s: ignoring %d folder(s) without .nii/.nii.gz files (not cases): %s", root, len(empty),
                       ", ".join(empty))
    return cases


def _discover_msd(root: Path, task: Task) -> list[CaseRecord]:
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        return []
    try:
        meta = json.loads(dataset_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{dataset_json}: not valid JSON ({exc})") from exc
    channels = meta.get("modality", {})
    full = base_task(task)  # a modality subset reads its channels of the 4D files of every modality
    if channels and len(channels) != len(full.modalities):
        raise ValueError(
            f"{dataset_json}: lists {len(channels)} modalities {list(channels.values())}, "
            f"task {task.name} expects {len(full.modalities)} {full.modality_names}"
        )
    cases = []
    entries = [(e["image"], e.get("label")) for e in meta.get("training", [])]
    entries += [(e if isinstance(e, str) else e["image"], None) for e in meta.get("test", [])]
    for image_rel, label_rel in entries:
        image = (root / image_rel).resolve()
        case_id = strip_nifti_suffix(image.name)
        label = str((root / label_rel).resolve()) if label_rel else None
        problem = problem_file = None
        if not image.is_file():
            problem, problem_file = "missing image file listed in dataset.json", str(image)
        elif label and not Path(label).is_file():
            problem, problem_file = "missing label file listed in dataset.json", label
        if (unsafe := _id_problem(case_id)) is not None:
            problem, problem_file = unsafe, str(image)
        cases.append(CaseRecord(case_id, str(image), label, problem, problem_file))
    check_case_ids(((c.case_id, c.image) for c in cases if c.ok), dataset_json)
    return cases


def check_case(case: CaseRecord, task: str | Task, level: str = "full") -> CaseRecord:
    """Validate one case in place and return it (``problem``/``problem_file`` set on failure).

    Args:
        case: from :func:`discover_cases`.
        task: the task whose modalities and label scheme apply.
        level: ``none`` (existence only, as discovered), ``header`` (readable headers, 3D/4D,
            matching shapes and affines) or ``full`` (also reads all voxels: truncated data,
            NaN/Inf, constant images, label values).
    """
    task = get_task(task)
    if level not in CHECK_LEVELS:
        raise ValueError(f"unknown check level {level!r}; choose one of {CHECK_LEVELS}")
    if not case.ok or level == "none":
        return case
    try:
        _check_files(case, task, full=level == "full")
    except ImageFileError as err:
        case.problem, case.problem_file = err.problem, err.path
    return case


def _check_files(case: CaseRecord, task: Task, full: bool) -> None:
    geometries: dict[str, Geometry] = {}
    if isinstance(case.image, str):  # MSD: one 4D file, channels last
        geo = read_geometry(case.image, ndim=(4,))
        if geo.shape[3] != len(task.modalities) and geo.shape[3] != len(base_task(task).modalities):
            raise ImageFileError(
                case.image, f"has {geo.shape[3]} channels, task {task.name} expects {len(task.modalities)} {task.modality_names}"
            )
        geometries["image"] = geo
    else:
        for modality, path in zip(task.modalities, case.image):
            geometries[modality.name] = read_geometry(path)
    if case.label:
        geometries["label"] = read_geometry(case.label)
    check_same_geometry(geometries)
    if not full:
        return
    images = [case.image] if isinstance(case.image, str) else case.image
    for path in images:
        read_array(path, ndim=(3, 4), check_constant=True)
    if case.label:
        label, _ = read_array(case.label, dtype=None)
        if label.dtype.kind == "f" and (label != label.round()).any():
            raise ImageFileError(case.label, "label map holds non-integer values")
        try:
            task.check_labels(label, source=case.label)
        except ValueError as err:
            raise ImageFileError(case.label, str(err).split(": ", 1)[1]) from err
