"""The cohorts compared for overlap, and what was found: :class:`Cohort`, :class:`OverlapMatch`, :class:`OverlapReport`.

:func:`load_cohort` reads a training cohort from a datalist JSON or a dataset folder;
:func:`datalist_modalities` is a datalist's modality names in channel order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brats_pipeline.constants import Task, get_task


@dataclass(frozen=True)
class Cohort:
    """A cohort's cases: ``entries`` with ``case_id`` and ``image``, its modality names, where it came from."""

    source: str
    entries: tuple[dict[str, Any], ...]
    modalities: tuple[str, ...] = ()

    @property
    def case_ids(self) -> list[str]:
        return [str(e["case_id"]) for e in self.entries]


@dataclass(frozen=True)
class OverlapMatch:
    """A test case found in a training cohort: ``case_id`` is ``training_case`` of ``cohort``, because ``evidence``."""

    case_id: str
    training_case: str
    cohort: str
    evidence: str


@dataclass
class OverlapReport:
    """What :func:`~brats_pipeline.data.overlap.removal.find_overlap` found.

    Attributes:
        method: ``"name-mapping"`` or ``"content"``.
        matches: the test cases also in a training cohort, in test-cohort order.
        n_test: test cases examined.
        unmapped: test cases the mapping CSV does not list (kept).
        columns: the mapping's (training, test) columns used.
        name_mapping: the CSV.
    """

    method: str
    matches: list[OverlapMatch] = field(default_factory=list)
    n_test: int = 0
    unmapped: list[str] = field(default_factory=list)
    columns: tuple[str, str] | None = None
    name_mapping: str | None = None

    @property
    def removed(self) -> list[str]:
        return [m.case_id for m in self.matches]

    def describe(self) -> str:
        """One line: how many cases were removed, by which rule."""
        how = (f"by name mapping {self.name_mapping} ({self.columns[0]} -> {self.columns[1]})"
               if self.method == "name-mapping" and self.columns else "by image content")
        text = f"removed {len(self.matches)} of {self.n_test} test case(s) also in the training cohort(s), {how}"
        if self.unmapped:
            text += f"; {len(self.unmapped)} test case(s) not listed in the mapping were kept"
        return text


def load_cohort(path: str | os.PathLike, task: str | Task | None = None) -> Cohort:
    """A training cohort from a datalist JSON (its ``training`` and ``testing`` entries) or a dataset folder.

    Args:
        path: datalist JSON (``brats-datalist`` output) or a dataset folder in ``task``'s layout.
        task: the layout of a folder (a datalist names its own).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a datalist, or a folder without cases of ``task`` (naming ``path``).
    """
    from brats_pipeline.data.datalist import load_datalist
    from brats_pipeline.data.discovery import discover_cases

    path = Path(path)
    if path.is_dir():
        if task is None:
            raise ValueError(f"{path}: a dataset folder as a training cohort needs its task")
        task = get_task(task)
        cases = discover_cases(path, task)
        entries = tuple({"case_id": c.case_id, "image": c.image} for c in cases)
        return Cohort(str(path), entries, tuple(task.modality_names))
    datalist = load_datalist(path)
    entries = tuple(e for key in ("training", "testing") for e in datalist.get(key, []))
    return Cohort(str(path), entries, datalist_modalities(datalist))


def datalist_modalities(datalist: Mapping[str, Any]) -> tuple[str, ...]:
    """A datalist's modality names in channel order (its ``modality`` map, else its task's)."""
    names = datalist.get("modality") or {}
    if names:
        return tuple(str(names[k]) for k in sorted(names, key=int))
    return tuple(get_task(datalist["task"]).modality_names)
