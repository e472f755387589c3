"""Cases of a test cohort that are also in a training cohort: find them, take them out.

BraTS 2021 contains the BraTS 2020 cases again under new names (``BraTS20_Training_001`` is
some ``BraTS2021_xxxxx``), so a BraTS 2020 model tested on all of BraTS 2021 is tested partly on
its own training cases. :func:`remove_overlap` drops such cases from a test datalist, by one rule:

* **Name mapping** (a CSV given): the official tables have a row per case and a column per
  release: BraTS 2021's ``BraTS21-17_Mapping.csv`` (``BraTS2021``, ``BraTS2020``, ``BraTS2019`` ...,
  an empty or ``NA`` cell where a case is not in that release), BraTS 2020's ``name_mapping.csv``
  (``BraTS_2020_subject_ID``, ``BraTS_2019_subject_ID`` ...). The training cohort's and the test
  cohort's columns are named (``mapping_columns=(TRAIN, TEST)``) or else found from the header:
  the column holding the most training case ids, and the one holding the most test case ids (a
  tie is an error). A test case is removed when its row names a case of the training cohort;
  test cases the CSV does not list are kept and counted as ``unmapped``.
* **Image content** (no CSV): every image is fingerprinted with
  :func:`preprocessing.identity.voxel_digest` (voxel values in one canonical dtype) as stored and
  turned to RAS orientation, so the same image re-saved with another header (affine, description,
  dtype or scale factor giving the same values, ``.nii`` or ``.nii.gz``) or reoriented with its
  affine keeps a fingerprint, and different images share none. A test case is removed when
  ``any`` (default) or ``all`` of its images equal images of one training case. Constant images
  are no evidence and are not compared. Both cohorts are read once (``workers`` threads).

Case ids alone are never compared: two releases may use one id for different patients.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task

#: CSV cells that mean "not in this release".
EMPTY_CELLS = frozenset({"", "na", "n/a", "nan", "none", "null", "-"})
CONTENT_RULES = ("any", "all")


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
    """What :func:`find_overlap` found.

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
    return Cohort(str(path), entries, _modalities(datalist))


def _modalities(datalist: Mapping[str, Any]) -> tuple[str, ...]:
    names = datalist.get("modality") or {}
    if names:
        return tuple(str(names[k]) for k in sorted(names, key=int))
    return tuple(get_task(datalist["task"]).modality_names)


# ----------------------------------------------------------------------------- the name mapping
def read_name_mapping(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a mapping CSV (comma, semicolon or tab separated; a BOM is ignored).

    Returns:
        ``(columns, rows)``; each row maps a column to its stripped cell text.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, not text, or without a header and rows (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: name-mapping CSV not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: name-mapping CSV cannot be read ({type(exc).__name__}: {exc})") from exc
    try:
        dialect: Any = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = [c.strip() for c in next(reader, [])]
    if not any(header):
        raise ValueError(f"{path}: name-mapping CSV is empty (expected a header row naming the releases' columns)")
    rows = [{col: (row[i].strip() if i < len(row) else "") for i, col in enumerate(header) if col} for row in reader if row]
    if not rows:
        raise ValueError(f"{path}: name-mapping CSV has a header but no rows")
    return [c for c in header if c], rows


def _cell(value: str) -> str | None:
    return None if value.strip().lower() in EMPTY_CELLS else value.strip()


def _pick_column(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, str]], ids: set[str], which: str) -> str:
    counts = {c: sum(1 for r in rows if _cell(r.get(c, "")) in ids) for c in columns}
    best = max(counts.values(), default=0)
    if best == 0:
        raise ValueError(f"{path}: no column holds the {which} cohort's case ids (e.g. {sorted(ids)[:2]}); "
                         f"columns: {', '.join(columns)}")
    top = [c for c, n in counts.items() if n == best]
    if len(top) > 1:
        raise ValueError(f"{path}: columns {', '.join(top)} hold the {which} cohort's case ids equally often ({best}); "
                         "name the training and test columns (--mapping-columns TRAIN TEST)")
    return top[0]


def match_by_name(
    training: Sequence[Cohort],
    test_ids: Sequence[str],
    name_mapping: str | os.PathLike,
    columns: tuple[str, str] | Sequence[str] | None = None,
) -> OverlapReport:
    """Test cases whose row of the mapping CSV names a case of a training cohort (see the module docstring).

    Args:
        training: the training cohorts (only their case ids are used).
        test_ids: the test cohort's case ids.
        name_mapping: the CSV.
        columns: ``(training column, test column)``; default: found from the header and the ids.

    Raises:
        ValueError: a named column not in the header, or a column (named or found) holding none
            of its cohort's ids (naming the CSV and its columns).
    """
    path = Path(name_mapping)
    header, rows = read_name_mapping(path)
    train_of = {cid: c.source for c in training for cid in c.case_ids}
    tests = set(test_ids)
    if columns is not None:
        columns = tuple(columns)
        if len(columns) != 2:
            raise ValueError(f"{path}: name two columns (training, test), got {list(columns)}")
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} in the header; "
                             f"columns: {', '.join(header)}")
        for column, ids, which in ((columns[0], set(train_of), "training"), (columns[1], tests, "test")):
            if ids and not any(_cell(r.get(column, "")) in ids for r in rows):
                raise ValueError(f"{path}: column {column!r} holds none of the {which} cohort's case ids "
                                 f"(e.g. {sorted(ids)[:2]}); columns: {', '.join(header)}")
        train_col, test_col = columns
    else:
        train_col = _pick_column(path, header, rows, set(train_of), "training")
        test_col = _pick_column(path, header, rows, tests, "test")
    mapped: dict[str, list[str]] = {}
    for row in rows:
        if (test_id := _cell(row.get(test_col, ""))) is not None:
            mapped.setdefault(test_id, [])
            if (train_id := _cell(row.get(train_col, ""))) is not None:
                mapped[test_id].append(train_id)
    report = OverlapReport("name-mapping", n_test=len(test_ids), columns=(train_col, test_col), name_mapping=str(path))
    for cid in test_ids:
        if cid not in mapped:
            report.unmapped.append(cid)
            continue
        for train_id in mapped[cid]:
            if train_id in train_of:
                report.matches.append(OverlapMatch(cid, train_id, train_of[train_id],
                                                   f"{path.name}: {test_col} {cid} = {train_col} {train_id}"))
                break
    return report


# ----------------------------------------------------------------------------- image content
def image_fingerprints(path: str | os.PathLike, channels: int | None = None) -> list[frozenset[str]]:
    """Per image in a file (one for a 3D file, one per channel of a 4D one), its content fingerprints.

    A fingerprint set holds the :func:`~preprocessing.identity.voxel_digest` of the voxels as
    stored and, when the affine is not RAS-ordered, of the voxels turned to RAS orientation. A
    constant image gets an empty set (it matches nothing).

    Raises:
        preprocessing.io.ImageFileError: missing, unreadable or truncated file (naming it).
    """
    from nibabel.orientations import apply_orientation, io_orientation

    from preprocessing.identity import voxel_digest
    from preprocessing.io import ImageFileError, read_array

    data, geometry = read_array(path, ndim=(3, 4), dtype=np.float32, check_finite=False)
    if channels is not None and data.ndim == 4 and data.shape[3] != channels:
        raise ImageFileError(path, f"has {data.shape[3]} channels, expected {channels}")
    ornt = io_orientation(geometry.affine)
    turn = not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]])
    volumes = [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
    prints = []
    for volume in volumes:
        if volume.size == 0 or volume.min() == volume.max():
            prints.append(frozenset())
            continue
        digests = {voxel_digest(volume)}
        if turn:
            digests.add(voxel_digest(apply_orientation(volume, ornt)))
        prints.append(frozenset(digests))
    return prints


def _case_fingerprints(entry: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, frozenset[str]]:
    image = entry.get("image") or []
    if isinstance(image, str):  # one 4D file (MSD), a channel per modality
        prints = image_fingerprints(image, len(modalities) or None)
        names = list(modalities) or [f"channel{i}" for i in range(len(prints))]
        return dict(zip(names, prints))
    names = list(modalities) + [f"image{i}" for i in range(len(modalities), len(image))]
    return {name: image_fingerprints(path)[0] for name, path in zip(names, image)}


def _fingerprint_all(cohort: Cohort, workers: int, progress: bool) -> list[dict[str, frozenset[str]]]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(lambda e: _case_fingerprints(e, cohort.modalities), cohort.entries),
                         total=len(cohort.entries), desc=f"reading {cohort.source}", unit="case", disable=not progress))


def match_by_content(
    training: Sequence[Cohort],
    test: Cohort,
    require: str = "any",
    workers: int = 1,
    progress: bool = False,
) -> OverlapReport:
    """Test cases whose images equal a training case's images (see the module docstring).

    Args:
        training: the training cohorts.
        test: the test cohort.
        require: ``any`` — one image of the test case equals an image of the training case;
            ``all`` — every (non-constant) image of the test case does.
        workers: threads reading files.
        progress: tqdm bars.

    Raises:
        ValueError: an unknown ``require``; preprocessing.io.ImageFileError: an unreadable image (naming it).
    """
    if require not in CONTENT_RULES:
        raise ValueError(f"unknown content rule {require!r}; choose one of {CONTENT_RULES}")
    index: dict[str, list[tuple[str, str, str]]] = {}  # digest -> (cohort, case, modality)
    for cohort in training:
        for entry, prints in zip(cohort.entries, _fingerprint_all(cohort, workers, progress)):
            for modality, digests in prints.items():
                for digest in digests:
                    index.setdefault(digest, []).append((cohort.source, str(entry["case_id"]), modality))
    report = OverlapReport("content", n_test=len(test.entries))
    for entry, prints in zip(test.entries, _fingerprint_all(test, workers, progress)):
        found: dict[tuple[str, str], dict[str, str]] = {}  # (cohort, case) -> {test modality: training modality}
        for modality, digests in prints.items():
            for digest in sorted(digests):
                for cohort, case, train_modality in index.get(digest, []):
                    found.setdefault((cohort, case), {}).setdefault(modality, train_modality)
        compared = [m for m, d in prints.items() if d]
        ranked = sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        if not ranked or (require == "all" and len(ranked[0][1]) < len(compared)):
            continue
        (cohort, case), pairs = ranked[0]
        same = ", ".join(m if m == t else f"{m} = {t}" for m, t in pairs.items())
        report.matches.append(OverlapMatch(str(entry["case_id"]), case, cohort,
                                           f"same voxels in {len(pairs)} of {len(compared)} image(s): {same}"))
    return report


# ----------------------------------------------------------------------------- the API
def find_overlap(
    test: Cohort,
    training: Sequence[Cohort],
    name_mapping: str | os.PathLike | None = None,
    mapping_columns: Sequence[str] | None = None,
    require: str = "any",
    workers: int = 1,
    progress: bool = False,
) -> OverlapReport:
    """The cases of ``test`` that are also in a ``training`` cohort: by ``name_mapping`` when given, else by content."""
    if not training:
        raise ValueError("no training cohort to compare the test cohort with")
    if name_mapping is not None:
        return match_by_name(training, test.case_ids, name_mapping, mapping_columns)
    if mapping_columns is not None:
        raise ValueError("mapping columns were named without a name-mapping CSV")
    return match_by_content(training, test, require, workers, progress)


def remove_overlap(
    datalist: Mapping[str, Any],
    training: Iterable[Cohort | str | os.PathLike],
    name_mapping: str | os.PathLike | None = None,
    mapping_columns: Sequence[str] | None = None,
    require: str = "any",
    workers: int = 1,
    progress: bool = False,
) -> tuple[dict[str, Any], OverlapReport]:
    """A copy of ``datalist`` without the cases that are also in a training cohort, and what was removed.

    Both ``training`` (labelled) and ``testing`` entries are examined. The remaining labelled
    cases get their folds again (:func:`~brats_pipeline.data.datalist.assign_folds`, the
    datalist's ``num_folds`` and ``seed``), so folds stay balanced; ``numTraining``/``numTest``
    follow, and ``removed_overlap`` records the rule, the sources and each removed case.

    Args:
        datalist: a test cohort's datalist (:func:`~brats_pipeline.data.datalist.build_datalist`).
        training: training cohorts: :class:`Cohort`, datalist JSON files or dataset folders
            (in the datalist's task layout, :func:`load_cohort`).
        name_mapping, mapping_columns, require, workers, progress: :func:`find_overlap`.

    Raises:
        ValueError: bad mapping CSV or columns, too few patients left for the folds (naming the cause);
            preprocessing.io.ImageFileError: an unreadable image; FileNotFoundError: a missing cohort or CSV.
    """
    from brats_pipeline.data.datalist import assign_folds

    task = get_task(datalist["task"])
    cohorts = [c if isinstance(c, Cohort) else load_cohort(c, task) for c in training]
    entries = [e for key in ("training", "testing") for e in datalist.get(key, [])]
    test = Cohort(str(datalist.get("root", "test cohort")), tuple(entries), _modalities(datalist))
    report = find_overlap(test, cohorts, name_mapping, mapping_columns, require, workers, progress)
    removed = set(report.removed)
    out = dict(datalist)
    labelled = [dict(e) for e in datalist.get("training", []) if e["case_id"] not in removed]
    if labelled and "fold" in labelled[0]:
        folds = int(datalist.get("num_folds", 5))
        try:
            fold_of = assign_folds([e["case_id"] for e in labelled], task, folds, int(datalist.get("seed", 0)))
        except ValueError as exc:
            raise ValueError(f"after removing {len(removed)} overlapping case(s): {exc} (use fewer folds)") from None
        for e in labelled:
            e["fold"] = fold_of[e["case_id"]]
    out["training"] = labelled
    out["testing"] = [e for e in datalist.get("testing", []) if e["case_id"] not in removed]
    out["numTraining"], out["numTest"] = len(out["training"]), len(out["testing"])
    out["removed_overlap"] = {
        "method": report.method,
        "training_cohorts": [c.source for c in cohorts],
        "name_mapping": report.name_mapping,
        "columns": list(report.columns) if report.columns else None,
        "require": require if report.method == "content" else None,
        "removed": [asdict(m) for m in report.matches],
        "unmapped": report.unmapped,
    }
    return out, report
