"""Shape features against genomic subtypes: clinical table, id matching, Fisher's exact test, corrections.

For each feature x subtype column: the patients with both a feature value and a subtype value
(the others are left out and counted), the feature dichotomised at the median of those
patients' values (``split``; values ``<=`` the threshold are ``low``, above it ``high``), and
Fisher's exact test on the r x 2 table (one row per subtype level, columns low/high).

**Fisher's exact test for r x 2**: the p-value is the total hypergeometric probability, given
the row and column sums, of all tables no more probable than the observed one (relative
tolerance 1e-7, as R's ``fisher.test``). It is computed exactly by the network algorithm
(Mehta & Patel 1983) specialised to two columns: a table is the column-0 counts ``x_i`` row by
row, its probability ``prod C(n_i, x_i) / C(N, c_0)``; a partial table whose every completion
is (or none is) at most as probable as the observed one is summed in one step (Vandermonde's
identity) or dropped. For 2 x 2 it equals ``scipy.stats.fisher_exact`` (two-sided); scipy
1.17's r x c ``fisher_exact`` is a Monte Carlo estimate (random, 9999 resamples by default),
so the exact enumeration is done here.

**Multiple testing**: Bonferroni and Holm adjustments within a family of hypotheses; the
default family is one feature's tests over all subtype columns (the published analysis:
significance p < 0.05 / number of subtypes); ``family="all"`` pools every test.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Cells read as "no value" in the clinical table (compared case-insensitively, stripped).
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "none", "null", "-", ".", "?", "[not available]",
                             "[not applicable]", "[unknown]", "[not evaluated]", "[discrepancy]"})


@dataclass
class ClinicalTable:
    """Subtype columns of a clinical CSV.

    Attributes:
        path: the file read.
        subtypes: the subtype column names, in file order.
        values: ``{patient_id: {subtype: level or None}}``.
    """

    path: str
    subtypes: list[str]
    values: dict[str, dict[str, str | None]] = field(default_factory=dict)


def read_clinical(path: str | os.PathLike, id_column: str = "Patient", subtypes: Sequence[str] | None = None) -> ClinicalTable:
    """Read the patient id and subtype columns of a clinical CSV.

    Args:
        path: CSV with a header row.
        id_column: column of the patient ids.
        subtypes: columns to test; ``None``: every column whose name ends in ``Cluster``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no header, a named column missing, no subtype column, an empty or repeated
            patient id (the message names the file, row and column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: clinical table not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if not columns:
        raise ValueError(f"{path}: empty file, expected a CSV header with {id_column!r} and subtype columns")
    if id_column not in columns:
        raise ValueError(f"{path}: no {id_column!r} column (columns: {', '.join(columns)})")
    chosen = [c for c in columns if c.lower().endswith("cluster")] if subtypes is None else list(subtypes)
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing} (columns: {', '.join(columns)})")
    if not chosen:
        raise ValueError(f"{path}: no subtype column (none ends in 'Cluster'); name them with subtypes=")
    table = ClinicalTable(str(path), chosen)
    for row_no, row in enumerate(rows, start=2):
        pid = (row.get(id_column) or "").strip()
        if not pid:
            raise ValueError(f"{path}: line {row_no}: empty {id_column!r}")
        if pid in table.values:
            raise ValueError(f"{path}: line {row_no}: patient {pid!r} appears twice")
        table.values[pid] = {c: _cell(row.get(c)) for c in chosen}
    return table


def _cell(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value.lower() in MISSING_MARKERS else value


def match_patients(case_ids: Sequence[str], patient_ids: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Match case ids to patient ids by prefix (``TCGA_CS_4942_19970222`` -> ``TCGA_CS_4942``).

    A patient id matches a case id that equals it or starts with it followed by ``_``, ``-`` or
    ``.``; the longest matching patient id wins.

    Returns:
        ``({case_id: patient_id}, [unmatched case ids])``.

    Raises:
        ValueError: two cases match one patient (a patient must count once).
    """
    by_length = sorted(patient_ids, key=len, reverse=True)
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    for cid in case_ids:
        hit = next((p for p in by_length if cid == p or (cid.startswith(p) and cid[len(p)] in "_-.")), None)
        if hit is None:
            unmatched.append(cid)
        else:
            matched[cid] = hit
    seen: dict[str, str] = {}
    for cid, pid in matched.items():
        if pid in seen:
            raise ValueError(f"cases {seen[pid]!r} and {cid!r} both match patient {pid!r}: give one case per patient")
        seen[pid] = cid
    return matched, unmatched


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact_rx2(table: Any) -> float:
    """Exact two-sided p-value of Fisher's test for an r x 2 contingency table (module docstring).

    Rows with no count are dropped; a table with fewer than two rows, or an empty column,
    has p = 1.

    Raises:
        ValueError: not r x 2, negative or non-integer counts.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"need an r x 2 table, got shape {t.shape}")
    if (t < 0).any() or (t != np.round(t)).any():
        raise ValueError(f"counts must be non-negative integers, got {t.tolist()}")
    t = t.astype(np.int64)
    t = t[t.sum(axis=1) > 0]
    rows = [int(v) for v in t.sum(axis=1)]
    c0 = int(t[:, 0].sum())
    total = sum(rows)
    if len(rows) < 2 or c0 in (0, total):
        return 1.0
    r = len(rows)
    logf = [[_log_comb(n, x) for x in range(n + 1)] for n in rows]
    threshold = sum(logf[i][int(t[i, 0])] for i in range(r)) + 1e-7
    suffix = [sum(rows[i:]) for i in range(r + 1)]
    # best[k][m] / worst[k][m]: max / min of sum_{i>=k} logf_i(x_i) over completions with sum x_i = m
    best = [[-math.inf] * (c0 + 1) for _ in range(r + 1)]
    worst = [[math.inf] * (c0 + 1) for _ in range(r + 1)]
    best[r][0] = worst[r][0] = 0.0
    for k in range(r - 1, -1, -1):
        for m in range(min(c0, suffix[k]) + 1):
            lo, hi = max(0, m - suffix[k + 1]), min(rows[k], m)
            vals = [logf[k][x] + best[k + 1][m - x] for x in range(lo, hi + 1)]
            best[k][m] = max(vals)
            worst[k][m] = min(logf[k][x] + worst[k + 1][m - x] for x in range(lo, hi + 1))
    log_denominator = _log_comb(total, c0)
    terms: list[float] = []
    stack = [(0, c0, 0.0)]
    while stack:
        k, m, acc = stack.pop()
        if acc + best[k][m] <= threshold:  # every completion counts: sum them all at once
            terms.append(math.exp(acc + _log_comb(suffix[k], m) - log_denominator))
        elif acc + worst[k][m] > threshold:  # no completion counts
            continue
        else:
            for x in range(max(0, m - suffix[k + 1]), min(rows[k], m) + 1):
                stack.append((k + 1, m - x, acc + logf[k][x]))
    return min(1.0, math.fsum(terms))


def bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values: ``min(1, m p)``."""
    m = len(pvalues)
    return [min(1.0, p * m) for p in pvalues]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def split_threshold(values: Sequence[float], split: str | float = "median") -> float:
    """The dichotomisation threshold: ``"median"``, ``"mean"``, or a quantile in (0, 1).

    Raises:
        ValueError: an unknown split or no values.
    """
    if len(values) == 0:
        raise ValueError("no values to dichotomise")
    if split == "median":
        return float(np.median(values))
    if split == "mean":
        return float(np.mean(values))
    try:
        q = float(split)
    except (TypeError, ValueError):
        raise ValueError(f"unknown split {split!r}; choose 'median', 'mean' or a quantile in (0, 1)") from None
    if not 0 < q < 1:
        raise ValueError(f"split quantile must be in (0, 1), got {q}")
    return float(np.quantile(values, q))


def _level_key(level: str) -> tuple[int, float, str]:
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


def associations(
    features: Mapping[str, Mapping[str, float]],
    clinical: ClinicalTable,
    feature_names: Sequence[str],
    split: str | float = "median",
    family: str = "feature",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fisher's exact test of every feature against every subtype column.

    Args:
        features: ``{case_id: {feature: value}}`` (NaN = no value).
        clinical: from :func:`read_clinical`.
        feature_names: features to test, in order.
        split: dichotomisation (:func:`split_threshold`), computed per test on its patients.
        family: ``"feature"`` (adjust over one feature's subtype tests) or ``"all"``.

    Returns:
        ``(rows, matching)``: one row per feature x subtype with ``feature, subtype, n,
        n_missing_subtype, n_missing_feature, threshold, levels, table, p, p_bonferroni,
        p_holm``; ``matching`` has ``matched`` ({case: patient}), ``unmatched_cases`` and
        ``patients_without_case``.

    Raises:
        ValueError: unknown family, or two cases of one patient.
    """
    if family not in ("feature", "all"):
        raise ValueError(f"unknown family {family!r}; choose 'feature' or 'all'")
    matched, unmatched = match_patients(list(features), list(clinical.values))
    rows: list[dict[str, Any]] = []
    for name in feature_names:
        for subtype in clinical.subtypes:
            pairs, missing_subtype, missing_feature = [], 0, 0
            for cid, pid in matched.items():
                value = features[cid].get(name, float("nan"))
                level = clinical.values[pid][subtype]
                if level is None:
                    missing_subtype += 1
                elif value is None or not np.isfinite(value):
                    missing_feature += 1
                else:
                    pairs.append((level, float(value)))
            row: dict[str, Any] = {"feature": name, "subtype": subtype, "n": len(pairs), "n_missing_subtype": missing_subtype,
                                   "n_missing_feature": missing_feature}
            if pairs:
                threshold = split_threshold([v for _, v in pairs], split)
                levels = sorted({lv for lv, _ in pairs}, key=_level_key)
                counts = [[sum(1 for lv, v in pairs if lv == level and (v > threshold) == high) for high in (False, True)]
                          for level in levels]
                row.update(threshold=threshold, levels=";".join(levels), table=counts, p=fisher_exact_rx2(counts))
            else:
                row.update(threshold=float("nan"), levels="", table=[], p=float("nan"))
            rows.append(row)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if np.isfinite(row["p"]):
            groups.setdefault(row["feature"] if family == "feature" else "all", []).append(i)
    for row in rows:
        row["p_bonferroni"] = row["p_holm"] = float("nan")
    for idx in groups.values():
        ps = [rows[i]["p"] for i in idx]
        for i, pb, ph in zip(idx, bonferroni(ps), holm(ps)):
            rows[i]["p_bonferroni"], rows[i]["p_holm"] = pb, ph
    matching = {"matched": matched, "unmatched_cases": unmatched,
                "patients_without_case": sorted(set(clinical.values) - set(matched.values()))}
    return rows, matching
