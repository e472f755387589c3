"""The one case reader: a datalist or a dataset folder -> cases whose ids are safe file names.

A *case* is a dict like a datalist entry (:mod:`brats_pipeline.data.datalist`)::

    {"case_id": "BraTS2021_00000", "image": [t1c, t1, t2, flair] | "case.nii.gz", "label": "..._seg.nii.gz", ...}

``image`` is the modality files in the task's channel order, or one 4D file with the modalities on
the last axis (MSD). A case that cannot be used (a missing modality, a folder name that is no safe
file name, a modality the model reads that is absent) keeps its entry with ``problem`` set
(``"<file>: <what>"``): batch runners report it as that case's failure and go on.

* :func:`read_cases` — the reader behind ``brats-infer`` (:mod:`brats_pipeline.cli.infer`), the
  bundles' ``dataset#data`` (:func:`brats_pipeline.bundle.inference_cases`), the truth of
  ``brats-evaluate`` and of radiogenomics (``labelled=True``);
* :func:`image_files`, :func:`case_id_of` — read one case.

Case ids follow :data:`preprocessing.identity.CASE_ID_RULE` (they name output files); an id that
breaks it, or one that two entries share, is a ``ValueError`` naming the source and the entries.
(``preprocessing/`` reads datalists on its own: it imports nothing of ``brats_pipeline``.)
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.constants import Task, get_task
from preprocessing.identity import check_case_ids
from preprocessing.io import NIFTI_SUFFIXES, strip_nifti_suffix

#: Which datalist entries :func:`read_cases` reads.
SPLITS = ("all", "training", "testing")

#: The file a dataset folder may hold its datalist in (it then wins over the folder's own cases).
DATALIST_NAME = "datalist.json"


def image_files(case: Mapping[Hashable, Any]) -> list[str]:
    """The ``image`` file(s) of a case as a list of strings: one 4D file gives ``[file]``.

    Args:
        case: ``image`` is a file (``str`` or path) or a non-empty list/tuple of files.

    Raises:
        ValueError: ``image`` is missing, empty, a mapping, or holds something other than files
            (naming the case).
    """
    image = case.get("image")
    if isinstance(image, (str, os.PathLike)):
        return [str(image)]
    if isinstance(image, Sequence) and image and all(isinstance(f, (str, os.PathLike)) for f in image):
        return [str(f) for f in image]
    raise ValueError(f"case {case.get('case_id', '?')}: 'image' must be a file or a non-empty list of files "
                     f"(in the task's channel order), got {image!r}")


def case_id_of(case: Mapping[Hashable, Any]) -> str:
    """``case_id`` of a case; without one, its folder (several modality files) or its file name without suffix.

    Raises:
        ValueError: no ``case_id`` and no usable ``image`` (:func:`image_files`).
    """
    if case.get("case_id"):
        return str(case["case_id"])
    files = image_files(case)
    first = Path(files[0])
    return first.parent.name if len(files) > 1 else strip_nifti_suffix(first.name)


def read_cases(
    source: str | os.PathLike | None,
    task: str | Task,
    *,
    datalist: str | os.PathLike | None = None,
    split: str = "all",
    fold: int | None = None,
    labelled: bool = False,
    modalities: Sequence[str] | None = None,
    consumer: str = "model",
) -> list[dict[Hashable, Any]]:
    """Cases ``{"case_id", "image"[, "label"][, "problem"], ...}`` from a datalist or a dataset folder.

    Sources, first match wins: ``datalist``; ``source`` if it is a file (a datalist JSON);
    ``source/datalist.json``; else the dataset folder ``source``: the NIfTI files directly in it
    (each a 4D stacked case, MSD style, named by its file) and the cases
    :func:`brats_pipeline.data.discovery.discover_cases` finds in the task's layout (case
    folders, or an MSD ``dataset.json``), both. A datalist entry keeps its keys; every case returned
    has a ``case_id`` (an entry without one gets the id its files give: :func:`case_id_of`).

    Args:
        source: dataset folder or datalist file.
        task: the model's task: a datalist of another task is refused; discovery uses its layout.
        datalist: datalist JSON (wins over ``source``).
        split: datalist entries to read: ``all`` (``training`` then ``testing``), ``training``, ``testing``.
        fold: only the ``training`` entries of this fold (needs a datalist with folds).
        labelled: only cases with a ``label`` (the ground truth of ``brats-evaluate``, a bundle's
            ``evaluate.json``, radiogenomics); an error if there are none.
        modalities: a modality subset the network reads (else the task's own, which may be a
            subset already): a case lists only those files (the others need not exist; case
            folders are searched for those only), and a case lacking one of them keeps a
            ``problem`` naming the case and the modality.
        consumer: what ``task`` belongs to, for the message about a datalist of another task.

    Raises:
        FileNotFoundError: the datalist or the folder does not exist.
        ValueError: no cases; a datalist of another task; an entry whose ``image`` is no file or
            list of files; ``fold`` or ``split`` without a datalist; a case id (given, or made from
            file names) that is not a safe file name, or that two entries share (naming both).
    """
    from brats_pipeline.data.modalities import select_cases, select_modalities

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    task = select_modalities(get_task(task), modalities)
    path = Path(datalist) if datalist else _datalist_in(source)
    if path is not None:
        named, listed = _from_datalist(path, task, split, fold, labelled, consumer)
        where = str(path)
    else:
        named, listed, where = _from_folder(Path(source), task, split, fold), None, str(source)  # type: ignore[arg-type]
    named = [(name, case) for name, case in named if case.get("label") or not labelled]
    if not named:
        raise ValueError(f"{where}: no {'labelled ' if labelled else ''}cases found"
                         + (f" in fold {fold}" if fold is not None else ""))
    usable = [(name, case) for name, case in named if not case.get("problem")]  # a problem case is reported, not named
    check_case_ids(((case_id_of(case), name) for name, case in usable), where)
    cases = [case if case.get("case_id") or case.get("problem") else {**case, "case_id": case_id_of(case)}
             for _, case in named]  # the id its files give, pinned before a modality subset drops some of them
    return select_cases(cases, task, listed)


def _datalist_in(source: str | os.PathLike | None) -> Path | None:
    """The datalist ``source`` names (a file, a ``.json`` path, a folder holding one), or ``None`` for a dataset folder."""
    if source is None or str(source) == "":
        raise FileNotFoundError("input folder None not found; pass a dataset folder or a datalist file "
                                "(bundles: --dataset_dir DIR or --datalist FILE)")
    path = Path(source)
    if path.is_file() or (not path.exists() and path.suffix == ".json"):  # a missing .json: load_datalist names it
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"input folder {str(source)!r} not found; pass a dataset folder or a datalist file "
                                "(bundles: --dataset_dir DIR or --datalist FILE)")
    return path / DATALIST_NAME if (path / DATALIST_NAME).is_file() else None


def _from_datalist(path: Path, task: Task, split: str, fold: int | None, labelled: bool,
                   consumer: str) -> tuple[list[tuple[str, dict[Hashable, Any]]], tuple[str, ...] | None]:
    """``(entry name, entry)`` pairs of the chosen entries, and the datalist's modality names."""
    from brats_pipeline.data.datalist import load_datalist
    from brats_pipeline.data.modalities import datalist_modalities

    loaded = load_datalist(path)  # checks the given case ids
    if get_task(loaded["task"]).name != task.name:
        raise ValueError(f"{path}: datalist of task {loaded['task']!r}, but the {consumer} is for {task.name!r}")
    if fold is not None:
        keys: tuple[str, ...] = ("training",)
    else:
        keys = ("training", "testing") if split == "all" else (split,)
    named = []
    for key in keys:
        for i, entry in enumerate(loaded.get(key, [])):
            if key == "training" and fold is not None and entry.get("fold") != fold:
                continue
            try:
                files = image_files(entry)
            except ValueError as exc:
                raise ValueError(f"{path}: {key}[{i}]: {exc}") from None
            named.append((f"{key}[{i}]" if entry.get("case_id") else f"{key}[{i}] (id from {files[0]})", entry))
    return named, datalist_modalities(loaded)


def _from_folder(root: Path, task: Task, split: str, fold: int | None) -> list[tuple[str, dict[Hashable, Any]]]:
    """``(case name, case)`` pairs: the stacked 4D files directly in ``root``, then the cases discovery finds."""
    from brats_pipeline.data.discovery import discover_cases

    if fold is not None:
        raise ValueError(f"fold={fold} needs a datalist with folds; {root} has no {DATALIST_NAME}")
    if split != "all":
        raise ValueError(f"split {split!r} needs a datalist; {root} has no {DATALIST_NAME}")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    cases: list[dict[Hashable, Any]] = [{"case_id": strip_nifti_suffix(p.name), "image": str(p)} for p in files]
    try:  # case folders too: a stray file beside them is one more case, failing by name if it is no stacked input
        found = discover_cases(root, task)
    except ValueError:  # no case folder: stacked files only (MSD style)
        if not cases:
            raise
        found = []
    for c in found:
        case: dict[Hashable, Any] = {"case_id": c.case_id, "image": c.image}
        if c.label:
            case["label"] = c.label
        if c.problem:
            case["problem"] = f"{c.problem_file}: {c.problem}" if c.problem_file else c.problem
        cases.append(case)
    return [(f"the case of {image_files(c)[0]}" if not c.get("problem") else c["case_id"], c) for c in cases]
