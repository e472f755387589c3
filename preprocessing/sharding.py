"""Split a cohort into N shards for job arrays: ``--shard I/N`` in every batch command.

The one rule, shared by ``brats-preprocess`` (:mod:`preprocessing.batch`) and ``brats-infer``:
sort the cases by case id, then shard ``I`` of ``N`` takes every ``N``-th case starting at
position ``I``. Hence, for a given cohort and ``N``:

* the shards are **disjoint** and together **cover** every case;
* their sizes differ by **at most one** (``len(cases) // N`` or one more);
* a case's shard does **not depend on the input order** (a datalist, a folder scan or a
  shuffled list give the same shards), so a re-run of array task ``I`` redoes the same cases.

A case's shard may change when cases are added to or removed from the cohort: run every
array task of one submission on the same datalist (the batch commands skip finished cases,
so a re-run on a grown cohort never redoes work, it only re-balances what is left).

The shards' manifests (one per array task) are merged by :func:`merge_manifests`, also from a
job script: ``python -m preprocessing.sharding merge -o OUT/manifest.json SHARD_MANIFEST...``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "case_key",
    "format_shard",
    "manifest_stem",
    "merge_manifests",
    "parse_shard",
    "select_shard",
    "shard_sizes",
    "shards_of",
]


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``: shard ``I`` (0-based) of ``N``; e.g. ``f"{SLURM_ARRAY_TASK_ID}/{N}"``.

    Args:
        spec: the text of a ``--shard`` option.

    Raises:
        ValueError: not two integers separated by ``/`` (``"2-3"``, ``"a/b"``), ``N < 1``, or
            ``I`` outside ``0 .. N-1`` (``"3/3"``: indices are 0-based).
    """
    text = str(spec).strip()
    parts = text.split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    _check(index, count, text)
    return index, count


def format_shard(index: int, count: int) -> str:
    """``(I, N)`` -> ``"I/N"`` (checked like :func:`parse_shard`)."""
    _check(index, count, f"{index}/{count}")
    return f"{index}/{count}"


def _check(index: int, count: int, text: str) -> None:
    if count < 1:
        raise ValueError(f"shard {text!r}: the number of shards N must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(
            f"shard {text!r}: need 0 <= I < N (I is 0-based, so the last of {count} is {count - 1}/{count})"
        )


def manifest_stem(shard: tuple[int, int] | None) -> str:
    """The file stem of a batch run's manifest: ``manifest`` or ``manifest.shard-I-of-N`` for shard ``(I, N)``.

    ``brats-preprocess`` and ``brats-infer`` both name their per-shard manifests this way, so a
    job script finds shard ``I``'s manifest as ``OUT/manifest.shard-I-of-N.json`` for either.
    """
    if shard is None:
        return "manifest"
    index, count = shard
    _check(index, count, f"{index}/{count}")
    return f"manifest.shard-{index}-of-{count}"


def case_key(item: Any) -> str:
    """The case id of ``item``: its ``case_id`` attribute or key; a plain string or number is its own id.

    Raises:
        ValueError: ``item`` has no case id (a mapping without ``case_id``: pass ``key=``).
    """
    if isinstance(item, Mapping):
        if item.get("case_id") not in (None, ""):
            return str(item["case_id"])
        raise ValueError(f"cannot shard an entry without 'case_id': {dict(item)!r}")
    case_id = getattr(item, "case_id", None)
    if case_id is not None:
        return str(case_id)
    if isinstance(item, (str, int)):
        return str(item)
    raise ValueError(f"cannot shard {type(item).__name__} {item!r}: it has no case_id (pass key=)")


def select_shard(
    items: Iterable[T], index: int, count: int, key: Callable[[T], Hashable] | None = None
) -> list[T]:
    """The items of shard ``index`` of ``count``, in case-id order (see the module docstring).

    Args:
        items: the whole cohort (every array task sees the same cohort, in any order).
        index: 0-based shard index, ``0 <= index < count``.
        count: number of shards, ``>= 1``.
        key: the case id of an item (default :func:`case_key`: ``case_id`` attribute or key).

    Returns:
        ``sorted(items, key=key)[index::count]``.

    Raises:
        ValueError: a bad ``index``/``count``, an item without a case id, or a case id that
            appears twice (its copies would land in different shards).
    """
    _check(index, count, f"{index}/{count}")
    key = key or case_key
    keyed = [(str(key(item)), item) for item in items]
    keyed.sort(key=lambda pair: pair[0])
    for (a, _), (b, _) in zip(keyed, keyed[1:]):
        if a == b:
            raise ValueError(f"case id {a!r} appears twice in the cohort; shards would not be disjoint")
    return [item for _, item in keyed[index::count]]


def shard_sizes(total: int, count: int) -> list[int]:
    """How many of ``total`` cases each of ``count`` shards gets (``select_shard``'s sizes)."""
    _check(0, count, f"0/{count}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    return [len(range(i, total, count)) for i in range(count)]


def shards_of(items: Sequence[T], count: int, key: Callable[[T], Hashable] | None = None) -> list[list[T]]:
    """All ``count`` shards of ``items`` (``[select_shard(items, i, count) for i in range(count)]``)."""
    return [select_shard(items, i, count, key) for i in range(count)]


def merge_manifests(
    paths: Sequence[str | os.PathLike], expected_cases: Iterable[str] | None = None
) -> dict[str, Any]:
    """One manifest from the per-shard manifests of a batch run (``brats-preprocess``, ``brats-infer``).

    Every manifest is a JSON object with ``cases``: rows with ``case_id`` and ``status``
    (``ok``, ``skipped`` = done by an earlier run, or ``failed``).

    Args:
        paths: the shard manifests, one per shard (all ``N`` of them).
        expected_cases: case ids that must each appear in exactly one manifest (optional).

    Returns:
        ``{"shards": [...], "counts": {...}, "cases": [rows in case-id order, each with its
        "shard_manifest"], "problems": [...]}``; ``problems`` names every missing or unreadable
        manifest, case listed by two shards, failed case and expected case that no shard has.
        An empty ``problems`` means every case was done exactly once.
    """
    problems: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            cases = manifest["cases"]
        except FileNotFoundError:
            problems.append(f"{path}: missing (did that shard run?)")
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: not a manifest ({type(exc).__name__}: {exc})")
            continue
        for row in cases:
            cid = str(row.get("case_id"))
            if cid in rows:
                problems.append(f"case {cid!r} is in two shards: {rows[cid]['shard_manifest']} and {path}")
                continue
            rows[cid] = {**row, "shard_manifest": str(path)}
    for cid, row in sorted(rows.items()):
        if row.get("status") == "failed":
            error = str(row.get("error") or "").splitlines()
            problems.append(f"case {cid!r} failed: {error[0] if error else 'no reason given'}")
    if expected_cases is not None:
        missing = sorted(set(map(str, expected_cases)) - set(rows))
        problems += [f"case {cid!r} is in no shard manifest" for cid in missing]
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
    return {
        "shards": [str(p) for p in paths],
        "counts": counts,
        "cases": [rows[c] for c in sorted(rows)],
        "problems": problems,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m preprocessing.sharding merge -o OUT SHARD_MANIFEST...``: 0 if every case was done once, else 1."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m preprocessing.sharding", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge the shard manifests of a batch run into one", allow_abbrev=False)
    merge.add_argument("manifests", nargs="+", help="the N shard manifests (JSON)")
    merge.add_argument("-o", "--output", required=True, help="merged manifest to write (JSON)")
    merge.add_argument("--datalist", help="datalist whose cases must each be in exactly one manifest")
    args = parser.parse_args(argv)

    expected = None
    if args.datalist:
        try:
            datalist = json.loads(Path(args.datalist).read_text(encoding="utf-8"))
            expected = [str(e["case_id"]) for key in ("training", "testing") for e in datalist.get(key, [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"sharding merge: error: --datalist {args.datalist}: {exc}", file=sys.stderr)
            return 2
    merged = merge_manifests(args.manifests, expected)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(
        f"merged {len(args.manifests)} manifest(s): {len(merged['cases'])} case(s) {merged['counts']} -> {out}"
    )
    for problem in merged["problems"]:
        print(f"  PROBLEM {problem}", file=sys.stderr)
    return 1 if merged["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
