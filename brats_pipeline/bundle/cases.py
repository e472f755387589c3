"""The cases a bundle predicts or scores: ``dataset#data`` of ``configs/inference.json`` and ``evaluate.json``.

:func:`inference_cases` is the project's one case reader (:func:`brats_pipeline.data.cases.read_cases`)
with the bundle's arguments: a datalist or a folder (4D stacked files, MSD style, and case folders in
the task's layout) into ``{"case_id", "image"[, "label"]}`` entries, keeping a case that cannot be used
with its ``problem`` (reported by :class:`~brats_pipeline.bundle.runner.BundleRunner` as that case's
failure). :func:`case_id_of` and :func:`image_files` (re-exported from :mod:`brats_pipeline.data.cases`)
read an entry; bundle JSON names them ``brats_pipeline.bundle.<name>``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

from brats_pipeline.constants import Task
from brats_pipeline.data.cases import case_id_of, image_files, read_cases

__all__ = ["case_id_of", "image_files", "inference_cases"]


def inference_cases(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    task: str | Task = "brats2021",
    labelled: bool = False,
    fold: int | None = None,
    modalities: Sequence[str] | None = None,
) -> list[dict[Hashable, Any]]:
    """Cases to predict: ``{"case_id", "image"[, "label"]}`` (:func:`brats_pipeline.data.cases.read_cases`).

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
    return read_cases(dataset_dir, task, datalist=datalist, fold=fold, labelled=labelled, modalities=modalities,
                      consumer="bundle")
