"""Sharding for job arrays: disjoint, covering, balanced, independent of input order; bad specs named."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from preprocessing.sharding import (
    case_key,
    format_shard,
    parse_shard,
    select_shard,
    shard_sizes,
    shards_of,
)


@dataclass
class _Case:
    case_id: str


IDS = [f"BraTS2021_{i:05d}" for i in range(37)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 8, 37, 50])
def test_shards_are_disjoint_covering_and_balanced(count: int) -> None:
    parts = shards_of(IDS, count)
    flat = [c for part in parts for c in part]
    assert len(flat) == len(set(flat)) == len(IDS)  # disjoint
    assert set(flat) == set(IDS)  # covering
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced
    assert sizes == shard_sizes(len(IDS), count)


def test_shards_do_not_depend_on_input_order() -> None:
    cases = [_Case(i) for i in IDS]
    shuffled = cases[:]
    random.Random(0).shuffle(shuffled)
    reversed_ = cases[::-1]
    for i in range(4):
        mine = [c.case_id for c in select_shard(cases, i, 4)]
        assert mine == [c.case_id for c in select_shard(shuffled, i, 4)]
        assert mine == [c.case_id for c in select_shard(reversed_, i, 4)]
        assert mine == sorted(mine)  # case-id order within a shard


def test_objects_mappings_and_custom_keys() -> None:
    entries = [{"case_id": c, "image": [f"/d/{c}_t1.nii.gz"]} for c in IDS[:6]]
    assert [e["case_id"] for e in select_shard(entries, 1, 3)] == [IDS[1], IDS[4]]
    assert [c.case_id for c in select_shard([_Case(c) for c in IDS[:6]], 0, 3)] == [IDS[0], IDS[3]]
    paths = [f"/data/{c}.nii.gz" for c in reversed(IDS[:4])]
    assert select_shard(paths, 0, 2, key=lambda p: p.rsplit("/", 1)[1]) == [f"/data/{IDS[0]}.nii.gz", f"/data/{IDS[2]}.nii.gz"]
    assert select_shard([], 0, 3) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1", "must look like I/N"),
        ("2-3", "must look like I/N"),
        ("a/b", "must look like I/N"),
        ("1/2/3", "must look like I/N"),
        ("", "must look like I/N"),
        ("3/3", "0 <= I < N"),
        ("-1/3", "0 <= I < N"),
        ("0/0", "N must be >= 1"),
        ("1/-2", "N must be >= 1"),
    ],
)
def test_bad_shard_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_shard(spec)
    assert repr(spec.strip()) in str(info.value) or repr(spec) in str(info.value)


def test_good_shard_specs() -> None:
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3/4 ") == (3, 4)
    assert format_shard(3, 4) == "3/4"


def test_select_shard_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="0 <= I < N"):
        select_shard(IDS, 4, 4)
    with pytest.raises(ValueError, match="N must be >= 1"):
        select_shard(IDS, 0, 0)


def test_duplicate_case_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="'BraTS2021_00001' appears twice"):
        select_shard([IDS[0], IDS[1], IDS[1]], 0, 2)


def test_entries_without_a_case_id_are_refused() -> None:
    with pytest.raises(ValueError, match="without 'case_id'"):
        case_key({"image": "x.nii.gz"})
    with pytest.raises(ValueError, match="no case_id"):
        select_shard([1.5], 0, 1)


def test_both_batch_commands_use_the_same_shards() -> None:
    from brats_pipeline.inference.batch import select_shard as infer_select
    from preprocessing.batch import select_shard as preprocess_select
    from preprocessing.case import Case

    entries = [{"case_id": c, "image": [f"/d/{c}/{c}_t1.nii.gz"]} for c in IDS]
    random.Random(1).shuffle(entries)
    cases = [Case(c, {"t1": f"/d/{c}/{c}_t1.nii.gz"}) for c in reversed(IDS)]
    for i in range(3):
        assert [e["case_id"] for e in infer_select(entries, i, 3)] == [c.case_id for c in preprocess_select(cases, (i, 3))]
    assert preprocess_select(cases, None) == cases  # no shard: everything, input order


def test_inference_shards_name_entries_without_a_case_id_by_their_files() -> None:
    from brats_pipeline.inference.batch import select_shard as infer_select

    entries = [{"image": [f"/d/{c}/{c}_t1.nii.gz", f"/d/{c}/{c}_t2.nii.gz"]} for c in IDS[:4]]
    assert [e["image"][0] for e in infer_select(entries[::-1], 0, 2)] == [entries[0]["image"][0], entries[2]["image"][0]]


# ------------------------------------------------------------------------------- merging manifests
def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"settings": {}, "counts": {}, "cases": rows}))
    return path


def test_merge_manifests_of_complete_shards(tmp_path: Path) -> None:
    from preprocessing.sharding import merge_manifests

    a = _write(tmp_path / "m0.json", [{"case_id": "c2", "status": "ok"}, {"case_id": "c0", "status": "skipped"}])
    b = _write(tmp_path / "m1.json", [{"case_id": "c1", "status": "ok"}])
    merged = merge_manifests([a, b], expected_cases=["c0", "c1", "c2"])
    assert merged["problems"] == []
    assert [r["case_id"] for r in merged["cases"]] == ["c0", "c1", "c2"]
    assert merged["counts"] == {"ok": 2, "skipped": 1}
    assert merged["cases"][1]["shard_manifest"] == str(b)


def test_merge_manifests_names_every_problem(tmp_path: Path) -> None:
    from preprocessing.sharding import merge_manifests

    a = _write(tmp_path / "m0.json", [{"case_id": "c0", "status": "ok"}, {"case_id": "c1", "status": "failed", "error": "bad header\nmore"}])
    b = _write(tmp_path / "m1.json", [{"case_id": "c0", "status": "ok"}])
    (tmp_path / "m3.json").write_text("{not json")
    merged = merge_manifests([a, b, tmp_path / "m2.json", tmp_path / "m3.json"], expected_cases=["c0", "c1", "c9"])
    problems = "\n".join(merged["problems"])
    assert f"case 'c0' is in two shards: {a} and {b}" in problems
    assert "m2.json: missing (did that shard run?)" in problems
    assert "m3.json: not a manifest" in problems
    assert "case 'c1' failed: bad header" in problems
    assert "case 'c9' is in no shard manifest" in problems


def test_merge_command_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from preprocessing.sharding import main

    a = _write(tmp_path / "m0.json", [{"case_id": "c0", "status": "ok"}])
    b = _write(tmp_path / "m1.json", [{"case_id": "c1", "status": "ok"}])
    (tmp_path / "dl.json").write_text(json.dumps({"training": [{"case_id": "c0"}], "testing": [{"case_id": "c1"}]}))
    out = tmp_path / "out" / "manifest.json"
    assert main(["merge", "-o", str(out), "--datalist", str(tmp_path / "dl.json"), str(a), str(b)]) == 0
    assert json.loads(out.read_text())["counts"] == {"ok": 2}
    assert main(["merge", "-o", str(out), str(a)]) == 0
    assert main(["merge", "-o", str(out), "--datalist", str(tmp_path / "dl.json"), str(a)]) == 1
    assert "case 'c1' is in no shard manifest" in capsys.readouterr().err
    assert main(["merge", "-o", str(out), "--datalist", str(tmp_path / "nope.json"), str(a)]) == 2
