"""Tasks and label schemes: labels -> regions -> labels is exact for every scheme."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_pipeline.constants import TASKS, Modality, Region, Task, get_task


def _random_labels(task: Task, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(task.label_values, size=(6, 7, 5)).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_labels_regions_round_trip_numpy(name: str) -> None:
    task = get_task(name)
    labels = _random_labels(task)
    regions = task.labels_to_regions(labels)
    assert regions.shape == (len(task.regions), *labels.shape)
    assert regions.dtype == bool
    np.testing.assert_array_equal(task.regions_to_labels(regions), labels)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_labels_regions_round_trip_torch_with_channel(name: str) -> None:
    task = get_task(name)
    labels = torch.from_numpy(_random_labels(task, seed=1))[None]  # (1, X, Y, Z) like MONAI
    regions = task.labels_to_regions(labels)
    assert isinstance(regions, torch.Tensor) and regions.dtype == torch.bool
    probabilities = regions.float() * 0.9 + 0.05  # as a sigmoid output would be
    np.testing.assert_array_equal(task.regions_to_labels(probabilities).numpy(), labels[0].numpy())


def test_brats2021_regions_are_tc_wt_et_with_the_challenge_definitions() -> None:
    task = get_task("brats2021")
    assert task.region_names == ("TC", "WT", "ET")
    labels = np.array([0, 1, 2, 4]).reshape(4, 1, 1)
    tc, wt, et = task.labels_to_regions(labels)[:, :, 0, 0]
    assert tc.tolist() == [False, True, False, True]  # NCR + ET
    assert wt.tolist() == [False, True, True, True]  # NCR + ED + ET
    assert et.tolist() == [False, False, False, True]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("brats2015", {"TC": {1, 3, 4}, "WT": {1, 2, 3, 4}, "ET": {4}, "NCR": {1}}),
        ("brats2021", {"TC": {1, 4}, "WT": {1, 2, 4}, "ET": {4}}),
        ("brats2023", {"TC": {1, 3}, "WT": {1, 2, 3}, "ET": {3}}),
        ("msd_task01", {"TC": {2, 3}, "WT": {1, 2, 3}, "ET": {3}}),
        ("lgg", {"WT": {1}}),
    ],
)
def test_region_definitions_per_scheme(name: str, expected: dict[str, set[int]]) -> None:
    assert {r.name: set(r.labels) for r in get_task(name).regions} == expected


def test_brats2015_regions_follow_the_2015_challenge_and_round_trip_every_label() -> None:
    """BraTS 2015 (Menze et al.): complete = 1-4, core = all but oedema (1, 3, 4), enhancing = 4; the
    fourth channel (necrosis, 1) tells necrosis from non-enhancing tumour, so regions -> labels is exact."""
    task = get_task("brats2015")
    assert task.region_names == ("TC", "WT", "ET", "NCR") and task.label_values == (0, 1, 2, 3, 4)
    labels = np.array([0, 1, 2, 3, 4]).reshape(5, 1, 1)
    tc, wt, et, ncr = task.labels_to_regions(labels)[:, :, 0, 0].tolist()
    assert tc == [False, True, False, True, True] and wt == [False, True, True, True, True]
    assert et == [False, False, False, False, True] and ncr == [False, True, False, False, False]
    np.testing.assert_array_equal(task.regions_to_labels(task.labels_to_regions(labels)), labels)
    assert task.patient_id("brats_tcia_pat153_0109") == "brats_tcia_pat153"
    assert task.modality_names == ("t1c", "t1", "t2", "flair")


def test_brats2015_phantoms_are_written_and_discovered(tmp_path) -> None:
    """The phantom paints necrosis 1, oedema 2, enhancing 4 (no non-enhancing 3); the cohort is written in
    the task's case-folder layout and discovery finds every modality and the label."""
    from brats_pipeline.data.datalist import build_datalist
    from brats_pipeline.data.synthetic import make_phantom, write_cohort

    task = get_task("brats2015")
    ph = make_phantom(task, (32, 32, 32), seed=1)
    assert set(np.unique(ph.label).tolist()) == {0, 1, 2, 4}
    tc, wt, et, ncr = task.labels_to_regions(ph.label)
    assert not (et & ~tc).any() and not (tc & ~wt).any() and not (ncr & ~tc).any()
    write_cohort(tmp_path, "brats2015", n_cases=2, shape=(32, 32, 32))
    assert (tmp_path / "brats_2013_pat0000_1" / "brats_2013_pat0000_1_flair.nii.gz").is_file()
    datalist = build_datalist(tmp_path, "brats2015", folds=2, check="none")
    entries = datalist["training"]
    assert datalist["task"] == "brats2015" and len(entries) == 2
    assert all(len(e["image"]) == 4 and e["label"].endswith("_seg.nii.gz") for e in entries)


def test_inconsistent_region_prediction_paints_smallest_region_last() -> None:
    task = get_task("brats2021")
    regions = np.zeros((3, 1, 1, 1), dtype=bool)
    regions[2] = True  # ET predicted although TC and WT are not
    assert task.regions_to_labels(regions)[0, 0, 0] == 4


def test_modality_orders_and_suffixes() -> None:
    assert get_task("brats2021").modality_names == ("t1c", "t1", "t2", "flair")
    assert get_task("brats2021").modality("t1c").suffixes[0] == "t1ce"
    assert get_task("brats2023").modality_names == ("t1c", "t1n", "t2w", "t2f")
    assert get_task("lgg").modality_names == ("t1", "flair", "t1c")
    assert get_task("msd_task01").modality_names == ("flair", "t1", "t1c", "t2")
    assert get_task("brats2020") is get_task("brats2021")


def test_patient_ids_group_timepoints() -> None:
    assert get_task("brats2023").patient_id("BraTS-GLI-00005-001") == "BraTS-GLI-00005"
    assert get_task("lgg").patient_id("TCGA_CS_4942_19970222") == "TCGA_CS_4942"
    assert get_task("brats2021").patient_id("BraTS2021_00000") == "BraTS2021_00000"


def test_unknown_label_value_is_named() -> None:
    with pytest.raises(ValueError, match=r"label values \[3\] are not in the brats2021 scheme"):
        get_task("brats2021").labels_to_regions(np.array([[[0, 3]]]))


def test_unknown_task_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown task 'brats2019'; choose one of .*brats2021.*lgg"):
        get_task("brats2019")


def test_wrong_region_map_shape() -> None:
    with pytest.raises(ValueError, match=r"expected a region map of shape \(3,X,Y,Z\)"):
        get_task("brats2021").regions_to_labels(np.zeros((2, 4, 4, 4)))


def test_overlapping_regions_rejected() -> None:
    with pytest.raises(ValueError, match="overlap without nesting"):
        Task(
            name="bad",
            description="",
            modalities=(Modality("t1", "t1", ("t1",)),),
            labels={1: "a", 2: "b", 3: "c"},
            regions=(Region("A", frozenset({1, 2})), Region("B", frozenset({2, 3}))),
            compartment_labels={"necrosis": 1, "edema": 2, "enhancing": 3},
        )


def test_region_without_own_label_rejected() -> None:
    with pytest.raises(ValueError, match="must own exactly one label"):
        Task(
            name="bad",
            description="",
            modalities=(Modality("t1", "t1", ("t1",)),),
            labels={1: "a", 2: "b"},
            regions=(Region("A", frozenset({1, 2})),),
            compartment_labels={"necrosis": 1, "edema": 2, "enhancing": 2},
        )
