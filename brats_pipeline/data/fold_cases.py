"""A data module's cases: its datalist read for the modalities used, and one fold's (train, validation) split.

:func:`read_datalist` reads a datalist with a modality subset (the task and the entries
restricted to it, :mod:`brats_pipeline.data.modalities`); :func:`fold_cases` splits its labelled
cases for one cross-validation fold (``-1``: train on every fold, validate on fold 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from brats_pipeline.constants import Task, get_task
from brats_pipeline.data.datalist import load_datalist, split_fold
from brats_pipeline.data.modalities import default_modalities, select_datalist, select_modalities


def read_datalist(datalist: str, modalities: Sequence[str] | None) -> tuple[dict[str, Any], Task]:
    """The datalist at ``datalist`` and its task, both restricted to the modalities used.

    Args:
        datalist: datalist JSON written by ``brats-datalist`` / ``brats-preprocess``.
        modalities: names or aliases of the task's modalities to read; ``None``: the ones the
            datalist was built for (all the task's).

    Returns:
        ``(datalist, task)``: the entries list only the files used; the task's modalities are the
        ones read, in the task's channel order.
    """
    data = load_datalist(datalist)
    task = get_task(data["task"])
    names = modalities if modalities is not None else default_modalities(data, task)
    task = select_modalities(task, names, f"{datalist}: data.modalities")  # the model records them
    data = select_datalist(data, task, str(datalist))  # entries: the used files only
    return data, task


def fold_cases(
    entries: list[dict[str, Any]], fold: int, max_cases: int | None, source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) entries of ``fold``.

    Args:
        entries: the datalist's labelled cases (``training``).
        fold: validation fold; the other folds train. ``-1``: train on every fold and validate on fold 0.
        max_cases: use at most this many training (and validation) cases; ``None``: all.
        source: the datalist's path, for messages.

    Raises:
        ValueError: no labelled cases, an unknown fold, or a fold that leaves no training or validation case.
    """
    if not entries:
        raise ValueError(f"{source}: no labelled cases to train on")
    if fold == -1:
        train, val = entries, split_fold(entries, 0)[1]
    else:
        train, val = split_fold(entries, fold)
    if max_cases is not None:
        train, val = train[:max_cases], val[:max_cases]
    if not train or not val:
        raise ValueError(f"{source}: fold {fold} leaves {len(train)} training / {len(val)} validation cases")
    return train, val
