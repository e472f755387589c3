"""Modality subsets: train and infer on some of a task's modalities (``data.modalities: [t2, t1c, flair]``).

A subset is a :class:`~brats_pipeline.constants.Task` whose ``modalities`` are some of its registry
task's (:func:`select_modalities`); its name, labels and regions are the task's. Everything that
reads ``task.modalities`` — the header checks and loaders, dataset discovery, the data module's
and the predictor's channel counts, the 2.5D context — then follows it: ``image`` is
``C×X×Y×Z`` with ``C`` the subset's modalities, and a 2.5D network takes ``C·(2k+1)`` channels.

* **Names**: the task's modality names, or the aliases the task already knows, case-insensitively:
  a modality's file suffixes (BraTS 2021: ``t1ce``/``t1gd`` for ``t1c``; BraTS 2023: ``t2w``) and
  its contrast (``t2`` for BraTS 2023's ``t2w``, ``flair`` for its ``t2f``). An unknown name is a
  ``ValueError`` listing the task's modalities.
* **Order**: always the task's channel order (BraTS: T1c, T1, T2, FLAIR; LGG: T1, FLAIR, T1c),
  whatever order the names are given in: ``[t2, t1c, flair]`` and ``[flair, t2, t1c]`` are the
  same subset, read as channels ``t1c, t2, flair``.
* **Cases**: a datalist entry lists every modality's file in the task's order (or the files of the
  modalities the datalist's ``modality`` map names, or only the subset's); :func:`select_case`
  keeps the subset's files. An unused modality may be absent (its file missing or not listed);
  a used one that is absent is an error naming the case and the modality. A case that is one 4D
  file (MSD) holds every modality of the task: :class:`SelectModalitiesd` keeps the subset's
  channels after loading.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.transforms import MapTransform

from brats_pipeline.constants import TASKS, Task, get_task


def base_task(task: str | Task) -> Task:
    """The registry task a (subset) task belongs to: the one of its name whose modalities include its own."""
    task = get_task(task)
    registered = TASKS.get(task.name)
    if registered is not None and set(task.modality_names) <= set(registered.modality_names):
        return registered
    return task


def is_subset(task: str | Task) -> bool:
    """Whether ``task`` reads only some of its registry task's modalities."""
    task = get_task(task)
    return task.modality_names != base_task(task).modality_names


def modality_aliases(task: str | Task) -> dict[str, str]:
    """Lower-case alias -> modality name: the names, and the contrasts and file suffixes that name one modality only."""
    full = base_task(task)
    owners: dict[str, set[str]] = {}
    for m in full.modalities:
        for alias in (m.contrast, *m.suffixes):
            owners.setdefault(alias.lower(), set()).add(m.name)
    aliases = {alias: next(iter(names)) for alias, names in owners.items() if len(names) == 1}
    aliases.update((m.name.lower(), m.name) for m in full.modalities)  # a name always means itself
    return aliases


def resolve_modalities(task: str | Task, names: Sequence[str], source: str = "modalities") -> tuple[str, ...]:
    """The task's modality names for ``names`` (names or aliases), in the task's channel order.

    Raises:
        ValueError: ``names`` empty or not a list of strings, an unknown name (the error lists the
            task's modalities and their aliases), or one modality named twice; ``source`` first.
    """
    full = base_task(task)
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise ValueError(f"{source}: expected a list of modality names such as {list(full.modality_names)}, got {names!r}")
    if not names:
        raise ValueError(f"{source}: empty; name at least one of the {full.name} modalities {list(full.modality_names)}")
    aliases = modality_aliases(full)
    chosen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or name.strip().lower() not in aliases:
            raise ValueError(f"{source}: unknown modality {name!r} for task {full.name}; its modalities are "
                             f"{_describe(full, aliases)}")
        resolved = aliases[name.strip().lower()]
        if resolved in chosen:
            raise ValueError(f"{source}: modality {resolved} is named twice ({chosen[resolved]!r} and {name!r})")
        chosen[resolved] = name
    return tuple(n for n in full.modality_names if n in chosen)


def _describe(task: Task, aliases: Mapping[str, str]) -> str:
    """``t1c (also t1ce/t1gd), t1, ...``: the task's modalities and their aliases."""
    parts = []
    for m in task.modalities:
        others = sorted(a for a, n in aliases.items() if n == m.name and a != m.name.lower())
        parts.append(f"{m.name} (also {'/'.join(others)})" if others else m.name)
    return ", ".join(parts)


def select_modalities(task: str | Task, names: Sequence[str] | None, source: str = "modalities") -> Task:
    """``task`` reading only the modalities ``names`` (see :func:`resolve_modalities`); ``None``: ``task`` unchanged.

    The result is the registry task itself when ``names`` are all its modalities, else a copy whose
    ``modalities`` are the chosen ones in the task's channel order (same name, labels and regions).
    """
    task = get_task(task)
    if names is None:
        return task
    full = base_task(task)
    chosen = resolve_modalities(full, names, source)
    if chosen == full.modality_names:
        return full
    return dataclasses.replace(full, modalities=tuple(full.modality(n) for n in chosen))


def channel_indices(task: str | Task) -> tuple[int, ...]:
    """Where the task's modalities are among its registry task's channels (``(2, 3)`` for BraTS t2, flair)."""
    names = base_task(task).modality_names
    return tuple(names.index(n) for n in get_task(task).modality_names)


def datalist_modalities(datalist: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The modality names of a datalist's ``modality`` map (``{"0": "t1c", ...}``) in index order, or ``None``."""
    listed = datalist.get("modality")
    if not isinstance(listed, Mapping) or not listed:
        return None
    try:
        return tuple(str(listed[k]) for k in sorted(listed, key=int))
    except (TypeError, ValueError):
        return None


def default_modalities(datalist: Mapping[str, Any], task: str | Task) -> tuple[str, ...] | None:
    """The subset a datalist was built for (its ``modality`` map names some of the task's modalities), else ``None``."""
    listed = datalist_modalities(datalist)
    if listed is None:
        return None
    try:
        names = resolve_modalities(task, listed)
    except ValueError:
        return None
    return names if len(names) == len(listed) and names != base_task(task).modality_names else None


def _case_name(case: Mapping[Hashable, Any]) -> str:
    if case.get("case_id"):
        return str(case["case_id"])
    image = case.get("image")
    first = image[0] if isinstance(image, (list, tuple)) and image else image
    return Path(str(first)).parent.name if first else "?"


def _listed_names(count: int, task: Task, listed: Sequence[str] | None, case: str) -> tuple[str, ...]:
    """The modality of each of a case's ``count`` image files."""
    full = base_task(task)
    if listed is not None and len(listed) == count:  # a datalist's map: names or aliases, unknown ones kept as they are
        aliases = modality_aliases(full)
        return tuple(aliases.get(str(n).strip().lower(), str(n)) for n in listed)
    for names in (full.modality_names, task.modality_names):
        if len(names) == count:
            return names
    raise ValueError(f"case {case}: 'image' lists {count} files; expected {len(full.modality_names)} "
                     f"({', '.join(full.modality_names)}) in the task's order, or the {len(task.modalities)} the model "
                     f"reads ({', '.join(task.modality_names)})")


def select_case(case: Mapping[Hashable, Any], task: str | Task, listed: Sequence[str] | None = None) -> dict[Hashable, Any]:
    """``case`` with ``image`` holding only the files of the task's modalities, in its channel order.

    Args:
        case: ``{"case_id": ..., "image": [files]}`` (a datalist entry or a discovered case). One
            file (a 4D image of every modality, MSD) or a value that is not a list of files is kept
            as it is (:class:`SelectModalitiesd` selects channels after loading).
        task: a task (a subset from :func:`select_modalities`); a full task returns ``case`` unchanged.
        listed: the modality of each listed file (a datalist's ``modality`` map); ``None``: the
            files are every modality of the task in its order, or only the subset's.

    Raises:
        ValueError: the case does not list a modality the task reads, or lists a number of files
            that fits neither the task nor the subset (naming the case).
        FileNotFoundError: a used modality's file does not exist (naming the case, modality and file).
    """
    task = get_task(task)
    image = case.get("image")
    if not is_subset(task) or not isinstance(image, (list, tuple)) or len(image) <= 1:
        return dict(case)
    name = _case_name(case)
    files = dict(zip(_listed_names(len(image), task, listed, name), image))
    chosen = []
    for modality in task.modality_names:
        if modality not in files:
            raise ValueError(f"case {name}: no {modality} file (its image lists {', '.join(files)}); "
                             f"the model reads {', '.join(task.modality_names)}")
        path = files[modality]
        if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
            raise FileNotFoundError(f"case {name}: modality {modality} is missing ({path} not found); "
                                    f"the model reads {', '.join(task.modality_names)}")
        chosen.append(path)
    return {**case, "image": chosen}


def select_cases(cases: Sequence[Mapping[Hashable, Any]], task: str | Task,
                 listed: Sequence[str] | None = None) -> list[dict[Hashable, Any]]:
    """:func:`select_case` for a batch: a case that cannot be selected keeps its entry with ``problem`` set (reported as failed)."""
    out = []
    for case in cases:
        if case.get("problem"):  # already unusable (dataset discovery said why)
            out.append(dict(case))
            continue
        try:
            out.append(select_case(case, task, listed))
        except (ValueError, FileNotFoundError) as exc:
            out.append({**case, "problem": str(exc)})
    return out


def select_datalist(datalist: Mapping[str, Any], task: str | Task, source: str = "datalist") -> dict[str, Any]:
    """A copy of ``datalist`` whose ``training``/``testing`` entries list only the task's modalities.

    Raises:
        ValueError: entries lacking a modality the task reads, all of them named in one message.
    """
    task = get_task(task)
    if not is_subset(task):
        return dict(datalist)
    listed = datalist_modalities(datalist)
    out, problems = dict(datalist), []
    for key in ("training", "testing"):
        entries = []
        for entry in datalist.get(key, []):
            try:
                entries.append(select_case(entry, task, listed))
            except (ValueError, FileNotFoundError) as exc:
                problems.append(str(exc))
        out[key] = entries
    if problems:
        raise ValueError(f"{source}: {len(problems)} case(s) lack a modality the model reads:\n  " + "\n  ".join(problems))
    out["modality"] = {str(i): n for i, n in enumerate(task.modality_names)}
    return out


class SelectModalitiesd(MapTransform):
    """After loading: keep the task's channels of an image that holds every modality of its registry task.

    A ``C×X×Y×Z`` image with as many channels as the registry task has modalities (one 4D file,
    MSD style) becomes the subset's channels, in order; an image that already has the subset's
    channel count is left as is (a case read from the subset's own files). Meta data is kept.

    Args:
        keys: image keys.
        task: the (subset) task.
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task) -> None:
        super().__init__(keys)
        self.task = get_task(task)
        self.indices = list(channel_indices(self.task))
        self.full_count = len(base_task(self.task).modalities)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if len(self.indices) == self.full_count:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            if getattr(image, "ndim", 0) >= 1 and image.shape[0] == self.full_count:
                d[key] = image[self.indices]
        return d


def modality_selection(task: str | Task, keys: str | Sequence[str] = "image") -> list[Any]:
    """The steps after loading that select a subset's channels: ``[SelectModalitiesd]`` for a subset, ``[]`` otherwise."""
    return [SelectModalitiesd(keys, task)] if is_subset(task) else []


def check_model_modalities(data_names: Sequence[str], model: Any, source: str = "data") -> None:
    """Refuse a model that reads other modalities than the data gives it (``model.modality_names``, if it has them).

    Raises:
        ValueError: the two lists differ, naming both.
    """
    theirs = getattr(model, "modality_names", None)
    if theirs is not None and tuple(theirs) != tuple(data_names):
        raise ValueError(f"{source} reads modalities {list(data_names)}, but the model reads {list(theirs)}; set "
                         "data.modalities (brats-train links model.modalities to it) or build the model with the same list")
