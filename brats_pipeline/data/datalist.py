"""MONAI decathlon-style datalists with patient-level, seeded cross-validation folds.

Format (``monai.data.load_decathlon_datalist`` reads ``training``/``testing`` directly)::

    {
      "name": "lgg", "task": "lgg", "root": "/data/lgg",
      "modality": {"0": "t1", "1": "flair", "2": "t1c"},      # image channel order
      "labels": {"0": "background", "1": "FLAIR abnormality"},
      "regions": {"WT": [1]},                                  # network output channels, in order
      "num_folds": 5, "seed": 0, "numTraining": 21, "numTest": 0,
      "training": [{"case_id": "...", "patient_id": "...", "fold": 0,
                    "image": ["..._t1.nii.gz", "..._flair.nii.gz", "..._t1c.nii.gz"],
                    "label": "..._seg.nii.gz"}, ...],
      "testing":  [{"case_id": "...", "image": [...]}],
      "skipped":  [{"case_id": "...", "file": "...", "reason": "..."}]
    }

``image`` is a list of per-modality files in channel order, or one 4D file (MSD). Paths
are absolute unless written with ``relative=True`` (then relative to the datalist's folder,
which is where MONAI resolves them).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.discovery import CHECK_LEVELS, CaseRecord, check_case, discover_cases


class DatasetError(ValueError):
    """A dataset with unusable cases under ``strict``; ``problems`` lists ``(case_id, file, reason)``."""

    def __init__(self, root: str, problems: Sequence[tuple[str, str, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {case}: {file}: {reason}" for case, file, reason in self.problems)
        super().__init__(f"{root}: {len(self.problems)} unusable case(s):\n{lines}")


def assign_folds(case_ids: Sequence[str], task: str | Task, num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign each case a fold in ``0..num_folds-1``; every case of one patient gets the same fold.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` and dealt, largest first,
    to the fold with the fewest cases so far: deterministic for a seed, balanced, and
    independent of the order ``case_ids`` come in.

    Raises:
        ValueError: ``num_folds`` < 1 or larger than the number of patients.
    """
    task = get_task(task)
    if num_folds < 1:
        raise ValueError(f"num_folds must be at least 1, got {num_folds}")
    patients: dict[str, list[str]] = defaultdict(list)
    for case_id in sorted(case_ids):
        patients[task.patient_id(case_id)].append(case_id)
    if num_folds > len(patients):
        raise ValueError(f"cannot make {num_folds} folds from {len(patients)} patient(s)")
    order = sorted(patients)
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    order.sort(key=lambda p: -len(patients[p]))  # stable: ties keep the shuffled order
    sizes = [0] * num_folds
    folds: dict[str, int] = {}
    for patient in order:
        fold = min(range(num_folds), key=lambda f: (sizes[f], f))
        sizes[fold] += len(patients[patient])
        for case_id in patients[patient]:
            folds[case_id] = fold
    return folds


def build_datalist(
    root: str | os.PathLike,
    task: str | Task,
    folds: int = 5,
    seed: int = 0,
    strict: bool = False,
    check: str = "full",
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Scan ``root``, check every case, and return a datalist dict (see module docstring).

    Args:
        root: dataset folder in the task's layout.
        task: task name or :class:`Task` (a modality subset, :mod:`brats_pipeline.data.modalities`,
            looks for and lists only its modalities' files; ``modality`` records them).
        folds: number of cross-validation folds for labelled cases.
        seed: fold shuffling seed.
        strict: raise :class:`DatasetError` if any case is unusable (default: skip and list it
            under ``skipped``).
        check: ``none``, ``header`` or ``full`` (see :func:`check_case`).
        workers: threads reading files during the check.
        progress: show a tqdm bar while checking.
    """
    task = get_task(task)
    if check not in CHECK_LEVELS:
        raise ValueError(f"unknown check level {check!r}; choose one of {CHECK_LEVELS}")
    root = Path(root).resolve()
    cases = discover_cases(root, task)
    cases = _check_all(cases, task, check, workers, progress)
    bad = [c for c in cases if not c.ok]
    if strict and bad:
        raise DatasetError(str(root), [(c.case_id, c.problem_file or "", c.problem or "") for c in bad])
    good = [c for c in cases if c.ok]
    labelled = [c for c in good if c.label]
    fold_of = assign_folds([c.case_id for c in labelled], task, folds, seed) if labelled else {}
    training = [
        {
            "case_id": c.case_id,
            "patient_id": task.patient_id(c.case_id),
            "fold": fold_of[c.case_id],
            "image": c.image,
            "label": c.label,
        }
        for c in labelled
    ]
    testing = [{"case_id": c.case_id, "image": c.image} for c in good if not c.label]
    return {
        "name": root.name,
        "description": task.description,
        "task": task.name,
        "root": str(root),
        "modality": {str(i): name for i, name in enumerate(task.modality_names)},
        "labels": {"0": "background", **{str(k): v for k, v in task.labels.items()}},
        "regions": {r.name: sorted(r.labels) for r in task.regions},
        "num_folds": folds,
        "seed": seed,
        "check": check,
        "numTraining": len(training),
        "numTest": len(testing),
        "training": training,
        "testing": testing,
        "skipped": [{"case_id": c.case_id, "file": c.problem_file, "reason": c.problem} for c in bad],
    }


def _check_all(cases: list[CaseRecord], task: Task, level: str, workers: int, progress: bool) -> list[CaseRecord]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    bar = tqdm(total=len(cases), desc=f"checking {task.name} cases", unit="case", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(lambda c: check_case(c, task, level), cases):
            bar.update()
    bar.close()
    return cases


def write_datalist(datalist: dict[str, Any], path: str | os.PathLike, relative: bool = False) -> Path:
    """Write ``datalist`` as JSON atomically; ``relative`` rewrites paths relative to the file's folder."""
    from preprocessing.io import write_json

    path = Path(path)
    if relative:
        base = path.resolve().parent
        datalist = dict(datalist)
        for key in ("training", "testing"):
            datalist[key] = [_map_paths(e, lambda p: os.path.relpath(p, base)) for e in datalist.get(key, [])]
    return write_json(datalist, path)


def _map_paths(entry: dict[str, Any], fn: Any) -> dict[str, Any]:
    out = dict(entry)
    for key in ("image", "label"):
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [fn(v) for v in value]
        elif isinstance(value, str):
            out[key] = fn(value)
    return out


def load_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON; relative paths are resolved against the file's folder (as MONAI does).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or missing ``task``/``training`` keys, an entry without ``image``,
            or a ``case_id`` that is not a safe file name or appears twice (naming the file and
            the entries: :func:`preprocessing.identity.check_case_ids`).
    """
    from preprocessing.identity import check_case_ids

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found")
    try:
        datalist = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid JSON datalist ({exc})") from exc
    if not isinstance(datalist, dict) or "task" not in datalist or "training" not in datalist:
        raise ValueError(f"{path}: not a brats-pipeline datalist (needs 'task' and 'training' keys)")
    get_task(datalist["task"])
    base = path.resolve().parent
    for key in ("training", "testing"):
        entries = datalist.get(key, [])
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: {key}[{i}] is not an object with 'image' (got {entry!r})")
            if "image" not in entry:
                raise ValueError(f"{path}: {key}[{i}] has no 'image'")
            image, label = entry["image"], entry.get("label")
            if not (isinstance(image, str) and image) and not (
                    isinstance(image, list) and image and all(isinstance(f, str) and f for f in image)):
                raise ValueError(f"{path}: {key}[{i}]: 'image' must be a file or a non-empty list of files, got {image!r}")
            if label is not None and not (isinstance(label, str) and label):
                raise ValueError(f"{path}: {key}[{i}]: 'label' must be a file, got {label!r}")
        datalist[key] = [_map_paths(e, lambda p: str((base / p).resolve())) for e in entries]
    check_case_ids(((e["case_id"], f"{key}[{i}]") for key in ("training", "testing")
                    for i, e in enumerate(datalist.get(key, [])) if e.get("case_id") not in (None, "")), path)
    return datalist


def split_fold(entries: Iterable[dict[str, Any]], fold: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return ``(train, validation)``: the entries not in ``fold`` and those in it."""
    entries = list(entries)
    folds = sorted({e["fold"] for e in entries})
    if fold not in folds:
        raise ValueError(f"fold {fold} not in the datalist's folds {folds}")
    return [e for e in entries if e["fold"] != fold], [e for e in entries if e["fold"] == fold]
