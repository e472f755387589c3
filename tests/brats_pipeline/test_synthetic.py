"""Synthetic phantoms: nested tumour compartments, per-modality contrast, determinism, layouts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brats_pipeline.constants import get_task
from brats_pipeline.data.synthetic import (
    CSF,
    EDEMA,
    ENHANCING,
    GM,
    NECROSIS,
    WM,
    make_phantom,
    write_cohort,
)

SHAPE = (64, 64, 48)


@pytest.fixture(scope="module", params=[0, 1, 2])
def phantom(request: pytest.FixtureRequest):
    return make_phantom("brats2021", SHAPE, seed=request.param)


def _touching(mask: np.ndarray) -> np.ndarray:
    """Voxels face-adjacent to ``mask`` but not in it."""
    return ndimage.binary_dilation(mask) & ~mask


def test_labels_are_the_scheme_and_every_compartment_is_present(phantom) -> None:
    assert phantom.label.dtype == np.uint8
    assert set(np.unique(phantom.label)) == {0, 1, 2, 4}
    assert phantom.label.shape == SHAPE


def test_compartments_are_nested(phantom) -> None:
    label = phantom.label
    necrosis, enhancing, edema = label == 1, label == 4, label == 2
    core = necrosis | enhancing
    # the necrotic core is wrapped in enhancing tumour, the core in oedema (within the brain)
    assert enhancing[_touching(necrosis)].mean() > 0.98
    around_core = _touching(core)
    assert (edema | (phantom.tissue == CSF))[around_core].mean() > 0.95
    regions = get_task("brats2021").labels_to_regions(label)
    tc, wt, et = regions
    assert (et <= tc).all() and (tc <= wt).all()
    assert wt.sum() > tc.sum() > et.sum() > 0


def test_contrasts_per_modality(phantom) -> None:
    def mean(modality: str, tissue: int) -> float:
        mask = ndimage.binary_erosion(phantom.tissue == tissue)  # avoid partial-volume edges
        if not mask.any():
            mask = phantom.tissue == tissue
        return float(phantom.images[modality][mask].mean())

    # enhancing tumour bright on T1c, necrosis dark on T1c
    assert mean("t1c", ENHANCING) > mean("t1c", WM) > mean("t1c", NECROSIS)
    assert mean("t1c", ENHANCING) > 1.3 * mean("t1", ENHANCING)
    # oedema bright on T2 and FLAIR
    for modality in ("t2", "flair"):
        assert mean(modality, EDEMA) > mean(modality, GM) > mean(modality, WM)
    # CSF bright on T2, suppressed on FLAIR; WM brighter than GM on T1
    assert mean("t2", CSF) > mean("t2", EDEMA)
    assert mean("flair", CSF) < mean("flair", WM)
    assert mean("t1", WM) > mean("t1", GM) > mean("t1", CSF)


def test_bias_field_and_rician_noise_present(phantom) -> None:
    wm = ndimage.binary_erosion(phantom.tissue == WM, iterations=2)

    seed = phantom.meta["seed"]
    flat = make_phantom("brats2021", SHAPE, seed=seed, bias=0.0)  # same draws, no bias field
    for modality in phantom.images:
        ratio = (
            ndimage.uniform_filter(phantom.images[modality], 3)[wm]
            / ndimage.uniform_filter(flat.images[modality], 3)[wm]
        )
        # a smooth multiplicative field spanning well over ±5 % across the white matter
        assert np.percentile(ratio, 95) / np.percentile(ratio, 5) > 1.1
    background = phantom.images["t1"][phantom.tissue == 0]
    assert background.min() >= 0 and background.mean() > 0  # Rician magnitude floor


@pytest.mark.parametrize("task", ["brats2023", "msd_task01", "lgg"])
def test_other_tasks_use_their_modalities_and_labels(task: str) -> None:
    t = get_task(task)
    ph = make_phantom(task, (32, 32, 32), seed=1)
    assert list(ph.images) == list(t.modality_names)
    assert set(np.unique(ph.label)) == set(t.label_values)
    flair = next(m.name for m in t.modalities if m.contrast == "flair")
    t1c = next(m.name for m in t.modalities if m.contrast == "t1c")
    tumour = ph.label > 0
    assert ph.images[flair][tumour].mean() > ph.images[flair][ph.tissue == WM].mean()
    assert ph.images[t1c][ph.tissue == ENHANCING].mean() > ph.images[t1c][ph.tissue == WM].mean()


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_identical_bytes_other_seed_differs(tmp_path: Path) -> None:
    write_cohort(tmp_path / "a", "brats2021", n_cases=2, shape=(32, 32, 32), seed=7)
    write_cohort(tmp_path / "b", "brats2021", n_cases=2, shape=(32, 32, 32), seed=7)
    write_cohort(tmp_path / "c", "brats2021", n_cases=2, shape=(32, 32, 32), seed=8)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(a) == 10 and a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)


def test_case_does_not_depend_on_cohort_size(tmp_path: Path) -> None:
    write_cohort(tmp_path / "one", "brats2021", n_cases=1, shape=(32, 32, 32), seed=3)
    write_cohort(tmp_path / "three", "brats2021", n_cases=3, shape=(32, 32, 32), seed=3)
    one = _digest(tmp_path / "one")
    three = _digest(tmp_path / "three")
    assert all(three[k] == v for k, v in one.items())


def test_brats2021_layout_and_file_format(tmp_path: Path) -> None:
    write_cohort(
        tmp_path, "brats2021", n_cases=1, n_unlabelled=1, shape=(32, 32, 24), seed=0, spacing=(1.0, 1.0, 1.5)
    )
    case = tmp_path / "BraTS2021_00000"
    names = sorted(p.name for p in case.iterdir())
    assert names == [f"BraTS2021_00000_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    img = nib.load(case / "BraTS2021_00000_t1ce.nii.gz")
    assert img.shape == (32, 32, 24) and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.5))
    assert nib.load(case / "BraTS2021_00000_seg.nii.gz").get_data_dtype() == np.uint8
    assert not any("seg" in p.name for p in (tmp_path / "BraTS2021_00001").iterdir())


def test_brats2023_and_msd_layouts(tmp_path: Path) -> None:
    write_cohort(tmp_path / "b23", "brats2023", n_cases=1, shape=(32, 32, 32))
    assert (tmp_path / "b23/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz").is_file()
    write_cohort(tmp_path / "msd", "msd_task01", n_cases=2, n_unlabelled=1, shape=(32, 32, 32))
    meta = json.loads((tmp_path / "msd/dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["numTraining"] == 2 and meta["test"] == ["./imagesTs/BRATS_002.nii.gz"]
    assert nib.load(tmp_path / "msd/imagesTr/BRATS_000.nii.gz").shape == (32, 32, 32, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (16, 32, 32)}, "at least 24 voxels"),
        ({"spacing": (1.0, 0.0, 1.0)}, "positive sizes"),
        ({"task": "brats2019"}, "unknown task"),
    ],
)
def test_bad_phantom_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_phantom(**kwargs)
