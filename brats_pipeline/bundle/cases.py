"""The cases a bundle predicts or scores: ``dataset#data`` of ``configs/inference.json`` and ``evaluate.json``.

:func:`inference_cases` reads a datalist or a folder (4D stacked files, MSD style, and case
folders in the task's layout) into ``{"case_id", "image"[, "label"]}`` entries, keeping a case
that cannot be used with its ``problem`` (reported by :class:`~brats_pipeline.bundle.runner.BundleRunner`
as that case's failure); :func:`case_id_of` and :func:`image_files` read an entry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.constants import Task, get_task
from preprocessing.identity import check_case_ids


def inference_cases(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    task: str | Task = "brats2021",
    labelled: bool = False,
    fold: int | None = None,
    modalities: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Cases to predict: ``{"case_id", "image"[, "label"]}``.

    Sources, first match wins: the ``datalist`` file (every case: ``training``, then
    ``testing``); ``dataset_dir/datalist.json``; else the NIfTI files directly in ``dataset_dir``
    (each a 4D stacked case, MSD style, named by its file) and the case folders in the task's
    layout under ``dataset_dir`` (per-modality files), both. A case folder that cannot be used
    (a missing modality, an unsafe name) keeps its ``problem`` (``"<file>: <what>"``), which
    :class:`~brats_pipeline.bundle.runner.BundleRunner` reports as that case's failure.

    Args:
        dataset_dir: folder (see above).
        datalist: datalist JSON (wins over ``dataset_dir``).
        task: the bundle's task (checked against a datalist's, used for discovery).
        labelled: only cases with a ``label`` (evaluation); an error if there are none.
        fold: only the labelled cases of this fold (needs a datalist with folds).
        modalities: a modality subset the network reads: a case lists only those files (the others
            need not exist; case folders are searched for those only), and a case lacking one of
            them keeps a ``problem`` naming the case and the modality.

    Raises:
        FileNotFoundError: the datalist or the folder does not exist.
        ValueError: no cases, a datalist of another task, or a case id that is not a safe file name or appears twice.
    """
    from brats_pipeline.data.datalist import load_datalist
    from brats_pipeline.data.discovery import discover_cases
    from brats_pipeline.data.modalities import datalist_modalities, select_cases, select_modalities
    from preprocessing.io import NIFTI_SUFFIXES, strip_nifti_suffix

    task = select_modalities(get_task(task), modalities)
    listed = None
    if not datalist and dataset_dir and (Path(dataset_dir) / "datalist.json").is_file():
        datalist = Path(dataset_dir) / "datalist.json"
    if datalist:
        loaded = load_datalist(datalist)
        if get_task(loaded["task"]).name != task.name:
            raise ValueError(f"{datalist}: datalist of task {loaded['task']!r}, but the bundle is for {task.name!r}")
        training = loaded["training"]
        if fold is not None:
            training = [e for e in training if e.get("fold") == fold]
        cases = training + ([] if (labelled or fold is not None) else loaded.get("testing", []))
        where, listed = str(datalist), datalist_modalities(loaded)
    else:
        if not dataset_dir or not Path(dataset_dir).is_dir():
            raise FileNotFoundError(f"input folder {dataset_dir!r} not found; pass --dataset_dir DIR or --datalist FILE")
        if fold is not None:
            raise ValueError(f"fold={fold} needs a datalist with folds; {dataset_dir} has no datalist.json")
        root = Path(dataset_dir)
        files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        cases = [{"case_id": strip_nifti_suffix(p.name), "image": str(p)} for p in files]
        try:  # case folders too: a stray file beside them is one more case, failing by name if it is no stacked input
            found = discover_cases(root, task)
        except ValueError:  # no case folder: stacked files only (MSD style)
            if not cases:
                raise
            found = []
        cases += [{"case_id": c.case_id, "image": c.image, **({"label": c.label} if c.label else {}),
                   **({"problem": f"{c.problem_file}: {c.problem}"} if c.problem else {})} for c in found]
        where = str(root)
    cases = select_cases([c for c in cases if c.get("label") or not labelled], task, listed)
    check_case_ids(((case_id_of(c), f"the case of {image_files(c)[0]}") for c in cases if not c.get("problem")), where)
    if not cases:
        raise ValueError(f"{where}: no {'labelled ' if labelled else ''}cases found"
                         + (f" in fold {fold}" if fold is not None else ""))
    return cases


def case_id_of(case: Mapping[str, Any]) -> str:
    """``case_id`` of a case, else its folder (several modality files) or file name without suffix."""
    from preprocessing.io import strip_nifti_suffix

    if case.get("case_id"):
        return str(case["case_id"])
    files = image_files(case)
    return Path(files[0]).parent.name if len(files) > 1 else strip_nifti_suffix(Path(files[0]).name)


def image_files(case: Mapping[str, Any]) -> list[str]:
    image = case.get("image")
    files = [image] if isinstance(image, (str, os.PathLike)) else list(image or [])
    if not files:
        raise ValueError(f"case {case.get('case_id', '?')}: no 'image'")
    return [str(f) for f in files]
