"""Foreground masks, cropping with a margin, z-scoring in the mask, percentile clipping."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from brats_pipeline.data.synthetic import make_phantom
from preprocessing.io import array_to_sitk_ras, sitk_to_array
from preprocessing.normalize import (
    bounding_box,
    crop,
    foreground_mask,
    normalize_images,
    resolve_mask_method,
    zscore,
)


@pytest.fixture(scope="module")
def head():
    phantom = make_phantom("brats2021", (48, 48, 40), seed=1, spacing=(3.0, 3.0, 3.0))
    return phantom, array_to_sitk_ras(phantom.images["t1c"], phantom.affine)


def test_otsu_mask_is_the_filled_head(head) -> None:
    phantom, image = head
    mask = sitk_to_array(foreground_mask(image, "otsu")).astype(bool)
    truth = phantom.tissue > 0
    overlap = (mask & truth).sum() / truth.sum()
    assert overlap > 0.95 and (mask & ~truth).sum() < 0.05 * truth.sum()
    # dark CSF and ventricles inside the head are filled in
    assert mask[phantom.tissue == 3].mean() > 0.95


def test_auto_picks_nonzero_for_skull_stripped_data() -> None:
    phantom = make_phantom("brats2021", (48, 48, 40), seed=1, spacing=(3.0, 3.0, 3.0), skull_stripped=True)
    image = array_to_sitk_ras(phantom.images["t1"], phantom.affine)
    assert resolve_mask_method(image, "auto") == "nonzero"
    np.testing.assert_array_equal(sitk_to_array(foreground_mask(image)).astype(bool), phantom.images["t1"] != 0)


def test_auto_picks_otsu_for_raw_data(head) -> None:
    assert resolve_mask_method(head[1], "auto") == "otsu"


def test_unknown_mask_method() -> None:
    with pytest.raises(ValueError, match="unknown mask method 'brain'"):
        foreground_mask(sitk.Image([4, 4, 4], sitk.sitkFloat32), "brain")


def test_bounding_box_margin_is_clipped_to_the_image() -> None:
    array = np.zeros((20, 20, 10), np.uint8)
    array[5:9, 2:4, 1:3] = 1
    mask = array_to_sitk_ras(array, np.eye(4))
    index, size = bounding_box(mask, 3)
    assert index == (2, 0, 0) and size == (10, 7, 6)
    with pytest.raises(ValueError, match="empty foreground mask"):
        bounding_box(mask * 0)


def test_crop_keeps_world_positions(head) -> None:
    _, image = head
    cropped = crop(image, (3, 4, 5), (10, 11, 12))
    assert cropped.GetSize() == (10, 11, 12)
    point = cropped.TransformIndexToPhysicalPoint((0, 0, 0))
    assert image.TransformPhysicalPointToIndex(point) == (3, 4, 5)


def test_zscore_in_mask(head) -> None:
    _, image = head
    mask = foreground_mask(image, "otsu")
    out, stats = zscore(image, mask)
    values, inside = sitk_to_array(out), sitk_to_array(mask).astype(bool)
    assert values[inside].mean() == pytest.approx(0.0, abs=1e-4)
    assert values[inside].std() == pytest.approx(1.0, abs=1e-4)
    assert (values[~inside] == 0).all()
    assert stats.std > 0 and stats.clip_low is None


def test_percentile_clipping(head) -> None:
    _, image = head
    mask = foreground_mask(image, "otsu")
    raw = sitk_to_array(image)[sitk_to_array(mask).astype(bool)]
    out, stats = zscore(image, mask, clip_percentiles=(1.0, 99.0))
    assert stats.clip_low == pytest.approx(np.percentile(raw, 1.0), rel=1e-5)
    assert stats.clip_high == pytest.approx(np.percentile(raw, 99.0), rel=1e-5)
    top = (stats.clip_high - stats.mean) / stats.std
    assert sitk_to_array(out).max() == pytest.approx(top, rel=1e-4)


@pytest.mark.parametrize("clip", [(50.0, 10.0), (-1.0, 99.0), (1.0, 101.0)])
def test_bad_percentiles(head, clip) -> None:
    _, image = head
    with pytest.raises(ValueError, match="clip percentiles"):
        zscore(image, foreground_mask(image, "otsu"), clip_percentiles=clip)


def test_constant_in_mask_cannot_be_normalised() -> None:
    image = sitk.Image([8, 8, 8], sitk.sitkFloat32) + 3.0
    with pytest.raises(ValueError, match="constant inside the foreground mask"):
        zscore(image, sitk.Image([8, 8, 8], sitk.sitkUInt8) + 1)


def test_normalize_images_crops_everything_alike(head) -> None:
    phantom, image = head
    mask = foreground_mask(image, "otsu")
    label = array_to_sitk_ras(phantom.label, phantom.affine)
    images, cropped_label, cropped_mask, record = normalize_images({"t1c": image, "t2": image * 2}, mask, 2, label=label)
    sizes = {im.GetSize() for im in (*images.values(), cropped_label, cropped_mask)}
    assert len(sizes) == 1 and sizes.pop() == tuple(record["crop_size_xyz"])
    assert sitk_to_array(cropped_label).sum() == phantom.label.sum()  # the tumour is inside the crop
    np.testing.assert_allclose(sitk_to_array(images["t1c"]), sitk_to_array(images["t2"]), atol=1e-5)
