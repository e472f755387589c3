"""Overlap by name mapping: test cases whose row of a mapping CSV names a training case.

The official tables have a row per case and a column per release: BraTS 2021's
``BraTS21-17_Mapping.csv`` (``BraTS2021``, ``BraTS2020``, ``BraTS2019`` ..., an empty or ``NA``
cell where a case is not in that release), BraTS 2020's ``name_mapping.csv``
(``BraTS_2020_subject_ID``, ``BraTS_2019_subject_ID`` ...). The training cohort's and the test
cohort's columns are named (``mapping_columns=(TRAIN, TEST)``) or else found from the header:
the column holding the most training case ids, and the one holding the most test case ids (a
tie is an error). A test case is removed when its row names a case of the training cohort;
test cases the CSV does not list are kept and counted as ``unmapped``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.data.overlap.cohorts import Cohort, OverlapMatch, OverlapReport

#: CSV cells that mean "not in this release".
EMPTY_CELLS = frozenset({"", "na", "n/a", "nan", "none", "null", "-"})


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
