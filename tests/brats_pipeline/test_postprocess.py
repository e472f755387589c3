"""Post-processing steps on hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest

from brats_pipeline.constants import get_task
from brats_pipeline.inference.postprocess import (
    PostprocessConfig,
    binary_close,
    binary_open,
    keep_largest_component,
    postprocess,
    postprocess_regions,
    relabel_small_et,
    remove_small_components,
    threshold_regions,
)

BRATS = get_task("brats2021")


def _cube(shape=(20, 20, 20), lo=(5, 5, 5), hi=(15, 15, 15)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def test_threshold_per_region() -> None:
    probs = np.full((3, 4, 4, 4), 0.6, dtype=np.float32)
    out = threshold_regions(probs, (0.5, 0.7, 0.55))
    assert out.dtype == bool
    assert out[0].all() and not out[1].any() and out[2].all()
    assert threshold_regions(probs, 0.5).all()


def test_threshold_rejects_wrong_count() -> None:
    with pytest.raises(ValueError, match="2 thresholds for 3 regions"):
        threshold_regions(np.zeros((3, 2, 2, 2)), (0.5, 0.5))


def test_remove_small_components_keeps_big_drops_small() -> None:
    m = _cube()
    m[0, 0, 0] = True  # an isolated voxel
    m[18:20, 18:20, 18:20] = True  # 8 voxels
    out = remove_small_components(m, min_voxels=9)
    assert out.sum() == 1000 and out[5:15, 5:15, 5:15].all()
    assert remove_small_components(m, 0).sum() == m.sum()  # 0 = off


def test_connectivity_decides_what_is_one_component() -> None:
    m = np.zeros((5, 5, 5), dtype=bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner neighbours
    assert remove_small_components(m, 2, connectivity=26).sum() == 2
    assert remove_small_components(m, 2, connectivity=6).sum() == 0


def test_keep_largest_component() -> None:
    m = _cube()
    m[0:2, 0:2, 0:2] = True
    out = keep_largest_component(m)
    assert out.sum() == 1000 and not out[0, 0, 0]
    assert not keep_largest_component(np.zeros((4, 4, 4), bool)).any()


def test_opening_removes_specks_and_bridges() -> None:
    m = _cube()
    m[0, 0, 0] = True
    m[15:19, 10, 10] = True  # a one-voxel-thin spur
    out = binary_open(m, 1)
    assert not out[0, 0, 0] and not out[17, 10, 10]
    assert out[10, 10, 10]


def test_closing_fills_holes_without_eating_the_border() -> None:
    m = _cube(lo=(0, 0, 0), hi=(12, 12, 12))
    m[6, 6, 6] = False  # a pin-hole
    out = binary_close(m, 1)
    assert out[6, 6, 6]
    assert out[0, 0, 0] and out.sum() == 12**3  # the block touching the border keeps its corner


def test_relabel_small_et_turns_et_into_necrosis() -> None:
    regions = np.zeros((3, 10, 10, 10), dtype=bool)
    regions[1, 2:8, 2:8, 2:8] = True  # WT
    regions[0, 4:6, 4:6, 4:6] = True  # TC
    regions[2, 4:6, 4:6, 4] = True  # ET: 4 voxels
    out = relabel_small_et(regions, BRATS, min_voxels=5)
    assert not out[2].any() and out[0][4:6, 4:6, 4].all()
    labels = BRATS.regions_to_labels(out)
    assert set(np.unique(labels)) == {0, 1, 2} and labels[4, 4, 4] == 1
    kept = relabel_small_et(regions, BRATS, min_voxels=4)  # not below the threshold
    assert kept[2].sum() == 4


def test_relabel_small_et_needs_an_et_region() -> None:
    with pytest.raises(ValueError, match="no region 'ET'"):
        relabel_small_et(np.zeros((1, 4, 4, 4), bool), "lgg", 10)


def test_keep_largest_clips_inner_regions() -> None:
    regions = np.zeros((3, 20, 20, 20), dtype=bool)
    regions[1] = _cube()
    regions[1, 0:2, 0:2, 0:2] = True
    regions[0, 0:2, 0:2, 0:2] = True  # TC only in the small component
    regions[2, 8:10, 8:10, 8:10] = True
    out = postprocess_regions(regions, BRATS, {"keep_largest": True})
    assert not out[0].any() and out[2].sum() == 8 and out[1].sum() == 1000


def test_postprocess_gives_the_tasks_labels() -> None:
    probs = np.zeros((3, 12, 12, 12), dtype=np.float32)
    probs[1, 2:10, 2:10, 2:10] = 0.9  # WT
    probs[0, 4:8, 4:8, 4:8] = 0.8  # TC
    probs[2, 5:7, 5:7, 5:7] = 0.7  # ET
    labels = postprocess(probs, "brats2021")
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    assert labels[5, 5, 5] == 4 and labels[4, 4, 4] == 1 and labels[2, 2, 2] == 2
    labels23 = postprocess(probs, "brats2023")
    assert set(np.unique(labels23)) == {0, 1, 2, 3}


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="min_component_voxels"):
        PostprocessConfig(min_component_voxels=-1)
    with pytest.raises(ValueError, match="connectivity"):
        PostprocessConfig(connectivity=8)
    with pytest.raises(ValueError, match="threshold"):
        PostprocessConfig(threshold=1.5)
    with pytest.raises(ValueError, match="unknown postprocess options"):
        PostprocessConfig.from_any({"min_size": 3})
    assert PostprocessConfig.from_any({"threshold": [0.4, 0.5, 0.6]}).to_dict()["threshold"] == [0.4, 0.5, 0.6]
