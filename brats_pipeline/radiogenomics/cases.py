"""Which label maps to measure, and the features of all of them.

A label source is one of:

* a datalist JSON (``brats-datalist`` output): every entry with a ``label``;
* a dataset folder in the task's layout (``ROOT/<case>/<case>_seg.nii.gz``, read by the
  project's case reader): every case with a segmentation file;
* a folder holding label maps directly, ``<case_id>.nii[.gz]`` (``brats-infer`` output);
  subfolders (``probabilities/``) are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brats_pipeline.radiogenomics.features import foreground_mask, shape_features


@dataclass(frozen=True)
class LabelCase:
    """One label map to measure.

    Attributes:
        case_id: the case's id (folder name, datalist ``case_id`` or file stem).
        label: the label NIfTI.
        image: a background image for pictures (FLAIR when the task has it), or ``None``.
    """

    case_id: str
    label: str
    image: str | None = None


def _background(image: Any, task: Any) -> str | None:
    if image is None:
        return None
    files = [image] if isinstance(image, str) else list(image)
    if len(files) == 1:
        return files[0]
    contrasts = [m.contrast for m in task.modalities]
    return files[contrasts.index("flair")] if "flair" in contrasts else files[0]


def label_cases(source: str | os.PathLike, task: str | None = None) -> list[LabelCase]:
    """The label maps of a datalist, a dataset folder or a folder of label files (module docstring).

    Args:
        source: datalist JSON or folder.
        task: task of a dataset folder's layout (default ``lgg``); a datalist names its own.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: nothing with a label found there (the message says what was expected).
    """
    from brats_pipeline.constants import get_task
    from preprocessing.io import NIFTI_SUFFIXES, strip_nifti_suffix

    path = Path(source)
    if path.is_file():
        from brats_pipeline.data.cases import read_cases
        from brats_pipeline.data.datalist import load_datalist

        t = get_task(task or load_datalist(path)["task"])
        entries = read_cases(path, t, labelled=True, consumer="radiogenomics")  # ValueError when none has a label
        return [LabelCase(str(e["case_id"]), e["label"], _background(e.get("image"), t)) for e in entries]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such label folder or datalist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if files:
        return [LabelCase(strip_nifti_suffix(p.name), str(p)) for p in files]
    from brats_pipeline.data.discovery import discover_cases

    t = get_task(task or "lgg")
    found = discover_cases(path, t)
    cases = [LabelCase(c.case_id, c.label, _background(c.image, t) if c.ok else None) for c in found if c.label]
    if not cases:
        raise ValueError(f"{path}: no case has a segmentation file (looked for <case>{t.separator}"
                         f"{'|'.join(t.label_suffixes)}.nii[.gz] in the {t.name} layout)")
    return cases


def case_features(case: LabelCase, foreground: Sequence[int] | None = None, **kwargs: Any) -> dict[str, float]:
    """Read one label map (errors name the file) and return its :func:`shape_features`."""
    from brats_pipeline.evaluation import read_label_map

    labels, affine = read_label_map(case.label)
    return shape_features(foreground_mask(labels, foreground), affine, **kwargs)


def cohort_features(
    cases: Sequence[LabelCase],
    foreground: Sequence[int] | None = None,
    workers: int = 1,
    progress: bool = False,
    **kwargs: Any,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Features of every case; a case that fails (unreadable, not 3D, non-integer labels) is
    recorded and the rest go on.

    Args:
        cases: from :func:`label_cases`.
        foreground: label values that make the tumour (``None``: any nonzero).
        workers: threads measuring cases concurrently.
        progress: show a tqdm bar.
        **kwargs: passed to :func:`~.features.shape_features` (``n_sectors``, ``window_fraction``).

    Returns:
        ``({case_id: features}, {case_id: reason})`` in case order.

    Raises:
        ValueError: two cases share an id.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    ids = [c.case_id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"case ids occur more than once: {dupes}")

    def one(case: LabelCase) -> dict[str, float] | Exception:
        try:
            return case_features(case, foreground, **kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            return exc

    features: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(cases), desc="shape features", unit="case", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for case, result in zip(cases, pool.map(one, cases)):
            bar.update()
            if isinstance(result, Exception):
                failed[case.case_id] = str(result)
            else:
                features[case.case_id] = result
    bar.close()
    return features, failed
