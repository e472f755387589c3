"""preprocess_case: all steps on a synthetic case, switchable steps, sidecar, and one test per bad input."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing.case import Case, case_from_entry, finished_record, output_paths, sidecar_path
from preprocessing.config import PreprocessConfig
from preprocessing.io import ImageFileError, sitk_to_array
from preprocessing.itk_io import check_same_grid
from preprocessing.pipeline import preprocess_case

MODALITIES = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair"}


def _case(cohort: Path, index: int = 0) -> Case:
    case_id = f"BraTS2021_{index:05d}"
    folder = cohort / case_id
    images = {m: str(folder / f"{case_id}_{s}.nii.gz") for m, s in MODALITIES.items()}
    label = folder / f"{case_id}_seg.nii.gz"
    return Case(case_id, images, str(label) if label.exists() else None, fold=1)


def test_all_steps_on_a_synthetic_case(one_case: Path, tmp_path: Path, fast_config: PreprocessConfig, tree_hashes) -> None:
    cohort = one_case
    before = tree_hashes(cohort)
    case = _case(cohort)
    result = preprocess_case(case, fast_config, tmp_path / "out")
    assert tree_hashes(cohort) == before  # inputs untouched

    # files: OUT/<id>/<id>_<modality>.nii.gz, _seg, sidecar
    folder = tmp_path / "out" / case.case_id
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [f"{case.case_id}_{m}.nii.gz" for m in MODALITIES] + [f"{case.case_id}_seg.nii.gz", f"{case.case_id}_preprocess.json"]
    )
    check_same_grid({**result.images, "label": result.label, "mask": result.mask})
    for modality in MODALITIES:
        img = nib.load(str(folder / f"{case.case_id}_{modality}.nii.gz"))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (4.0, 4.0, 4.0), atol=1e-5)
        assert img.get_data_dtype() == np.float32
        data = np.asarray(img.dataobj)
        inside = sitk_to_array(result.mask).astype(bool)
        assert data[inside].mean() == pytest.approx(0.0, abs=1e-3) and data[inside].std() == pytest.approx(1.0, abs=1e-3)
    label = np.asarray(nib.load(str(folder / f"{case.case_id}_seg.nii.gz")).dataobj)
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 4} and (label > 0).any()

    sidecar = json.loads((folder / f"{case.case_id}_preprocess.json").read_text())
    assert [s["step"] for s in sidecar["steps"]] == ["read", "reorient", "mask", "n4", "register", "resample", "normalize"]
    assert sidecar["status"] == "ok" and sidecar["fold"] == 1
    assert sidecar["config"]["n4_config"]["iterations"] == [10, 10]
    assert set(sidecar["steps"][4]["modalities"]) == {"t1", "t2", "flair"}  # registered to t1c
    assert sidecar["outputs"]["label"] == f"{case.case_id}_seg.nii.gz"
    assert finished_record(tmp_path / "out", case, fast_config) is not None


def test_steps_switched_off_only_reorient(one_case: Path) -> None:
    """With every step off, the output is the input on its own grid, reoriented to RAS (already RAS here)."""
    case = _case(one_case)
    config = PreprocessConfig(modalities=tuple(MODALITIES), spacing=None, n4=False, register=False, normalize=False)
    result = preprocess_case(case, config)
    assert [s["step"] for s in result.record["steps"]] == ["read", "reorient", "mask", "resample"]
    for modality, path in case.images.items():
        np.testing.assert_allclose(sitk_to_array(result.images[modality]), nib.load(path).get_fdata(), atol=1e-3)
    np.testing.assert_array_equal(sitk_to_array(result.label), np.asarray(nib.load(case.label).dataobj))


def test_lps_orientation_and_clipping(one_case: Path, fast_config: PreprocessConfig) -> None:
    config = replace(fast_config, orientation="LPS", register=False, clip_percentiles=(1.0, 99.0), n4=False)
    result = preprocess_case(_case(one_case), config)
    assert result.record["output_grid"]["orientation"] == "LPS"
    stats = next(s for s in result.record["steps"] if s["step"] == "normalize")["stats"]
    assert all(v["clip_low"] is not None for v in stats.values())


def test_msd_style_4d_input(tmp_path: Path, fast_config: PreprocessConfig) -> None:
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(tmp_path / "msd", "msd_task01", n_cases=1, shape=(48, 48, 40), spacing=(3.0, 3.0, 3.0))
    image = str(tmp_path / "msd" / "imagesTr" / "BRATS_000.nii.gz")
    entry = {"case_id": "BRATS_000", "image": image, "label": str(tmp_path / "msd" / "labelsTr" / "BRATS_000.nii.gz")}
    case = case_from_entry(entry, ["flair", "t1", "t1c", "t2"])
    assert case.channels == {"flair": 0, "t1": 1, "t1c": 2, "t2": 3}
    config = replace(fast_config, modalities=("flair", "t1", "t1c", "t2"), label_values=(0, 1, 2, 3), register=False)
    result = preprocess_case(case, config, tmp_path / "out")
    assert sorted(p.name for p in result.outputs.values()) == sorted(
        [f"BRATS_000_{m}.nii.gz" for m in ("flair", "t1", "t1c", "t2")] + ["BRATS_000_seg.nii.gz"]
    )


def test_output_names_follow_the_separator_and_label_suffix(tmp_path: Path) -> None:
    case = Case("BraTS-GLI-00000-000", {m: "x" for m in ("t2f", "t1c", "t1n", "t2w")}, label="y")
    config = PreprocessConfig(modalities=("t1c", "t1n", "t2w", "t2f"), separator="-", label_suffix="mask")
    paths = output_paths(case, tmp_path, config)
    assert list(paths) == ["t1c", "t1n", "t2w", "t2f", "label"]  # the configured channel order
    assert paths["t2f"].name == "BraTS-GLI-00000-000-t2f.nii.gz"
    assert paths["label"].name == "BraTS-GLI-00000-000-mask.nii.gz"
    assert sidecar_path(tmp_path, case.case_id).name == "BraTS-GLI-00000-000_preprocess.json"
    assert [p.name for p in output_paths(case, tmp_path).values()][:2] == [  # no config: the case's own order, "_"
        "BraTS-GLI-00000-000_t2f.nii.gz", "BraTS-GLI-00000-000_t1c.nii.gz"]


# --------------------------------------------------------------------------------- bad inputs
# Each one: a clear error naming the file or case, inputs untouched, nothing left in the output.


@pytest.fixture
def bad_case(one_case: Path, tmp_path: Path, tree_hashes):
    """A copy-free way to break one file of case 0 and check the aftermath."""
    cohort = one_case
    case = _case(cohort)
    out = tmp_path / "out"

    def run(config: PreprocessConfig, error: type[Exception], match: str, case_: Case | None = None) -> None:
        before = tree_hashes(cohort)
        with pytest.raises(error, match=match):
            preprocess_case(case_ or case, config, out)
        assert tree_hashes(cohort) == before
        assert not out.exists() or not any(out.rglob("*")), "partial output left behind"

    return case, run


def test_truncated_modality(bad_case, fast_config) -> None:
    case, run = bad_case
    path = Path(case.images["t2"])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    run(fast_config, ImageFileError, r"_t2\.nii\.gz: .*truncated or corrupt")


def test_corrupt_modality(bad_case, fast_config) -> None:
    case, run = bad_case
    Path(case.images["flair"]).write_bytes(gzip.compress(os.urandom(4096)))
    run(fast_config, ImageFileError, r"_flair\.nii\.gz: unreadable, truncated or corrupt")


def test_non_3d_modality(bad_case, fast_config) -> None:
    case, run = bad_case
    nib.save(nib.Nifti1Image(np.ones((48, 48, 40, 2), np.float32), np.eye(4)), case.images["t1"])
    run(fast_config, ImageFileError, r"_t1\.nii\.gz: expected a 3D image, got 4D")


def test_nan_modality(bad_case, fast_config) -> None:
    case, run = bad_case
    data = nib.load(case.images["t1c"]).get_fdata().astype(np.float32)
    data[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(case.images["t1c"]).affine), case.images["t1c"])
    run(fast_config, ImageFileError, r"_t1ce\.nii\.gz: 1 voxels are NaN or Inf")


def test_constant_modality(bad_case, fast_config) -> None:
    case, run = bad_case
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 40), np.int16), nib.load(case.images["t2"]).affine), case.images["t2"])
    run(fast_config, ImageFileError, r"_t2\.nii\.gz: constant image")


def test_modality_names_not_of_the_task(bad_case, fast_config) -> None:
    case, run = bad_case
    renamed = Case(case.case_id, {("t2w" if k == "t2" else k): v for k, v in case.images.items()}, case.label)
    run(fast_config, ValueError, r"BraTS2021_00000: missing modalities \['t2'\] and unknown modalities \['t2w'\]; "
                                r"expected the modalities \['t1c', 't1', 't2', 'flair'\]", renamed)


def test_missing_modality(bad_case, fast_config) -> None:
    case, run = bad_case
    partial = Case(case.case_id, {k: v for k, v in case.images.items() if k != "flair"}, case.label)
    run(fast_config, ValueError, r"missing modalities \['flair'\]", partial)


def test_missing_modality_file(bad_case, fast_config) -> None:
    case, run = bad_case
    Path(case.images["flair"]).unlink()
    run(fast_config, ImageFileError, r"_flair\.nii\.gz: file not found")


def test_label_values_outside_the_configured_ones(bad_case, fast_config) -> None:
    case, run = bad_case
    label = nib.load(case.label)
    data = np.asarray(label.dataobj).copy()
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, label.affine), case.label)
    run(fast_config, ImageFileError, r"_seg\.nii\.gz: label values \[3\] are not among the expected values \[0, 1, 2, 4\]")
    unchecked = replace(fast_config, label_values=None, n4=False, register=False)
    assert 3 in np.unique(sitk_to_array(preprocess_case(case, unchecked).label))


def test_label_on_another_grid(bad_case, fast_config) -> None:
    case, run = bad_case
    label = nib.load(case.label)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-2], label.affine), case.label)
    run(fast_config, ImageFileError, r"_seg\.nii\.gz: label size")


def test_reference_not_among_modalities(bad_case, fast_config) -> None:
    _, run = bad_case
    run(replace(fast_config, modalities=None, reference="t1gd"), ValueError, "reference modality 't1gd' is not among")


def test_unsafe_case_id(bad_case, fast_config) -> None:
    case, run = bad_case
    run(fast_config, ValueError, "not a safe file name", Case("../escape", case.images, case.label))


def test_failed_write_removes_what_it_wrote(one_case: Path, tmp_path: Path, fast_config, monkeypatch) -> None:
    """A case killed half-way through writing leaves no output file and no sidecar."""
    import preprocessing.pipeline as pipeline

    calls = {"n": 0}
    real = pipeline.write_image

    def flaky(image, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(image, path)

    monkeypatch.setattr(pipeline, "write_image", flaky)
    config = replace(fast_config, register=False, n4=False)
    with pytest.raises(OSError, match="disk full"):
        preprocess_case(_case(one_case), config, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.nii.gz"))
    assert not any((tmp_path / "out").rglob("*.json"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be three positive"),
        ({"orientation": "RAI"}, "unknown orientation"),
        ({"mask_method": "brain"}, "unknown mask method"),
        ({"clip_percentiles": (99.0, 1.0)}, "clip_percentiles"),
        ({"modalities": ("t1c", "t1", "t1c")}, "modalities must be distinct"),
        ({"modalities": ("t1", "t2")}, "reference modality 't1c' is not among the modalities"),
        ({"separator": "/"}, "separator is part of a file name"),
        ({"label_suffix": ""}, "label_suffix is part of a file name"),
        ({"image_interpolator": "cubic"}, "unknown image interpolator"),
    ],
)
def test_bad_config_is_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**settings)


def test_config_round_trip_and_fingerprint() -> None:
    config = PreprocessConfig(modalities=["t1", "flair", "t1c"], label_values=[1, 0], spacing=(1.0, 1.0, 3.0),
                              clip_percentiles=(0.5, 99.5))
    assert config.modalities == ("t1", "flair", "t1c") and config.label_values == (0, 1)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert replace(config, crop_margin=0).fingerprint() != config.fingerprint()


def test_datalist_entry_with_wrong_number_of_images() -> None:
    with pytest.raises(ValueError, match=r"case c1: 3 image files for 4 modalities"):
        case_from_entry({"case_id": "c1", "image": ["a", "b", "c"]}, ["t1c", "t1", "t2", "flair"])


def test_voxels_a_sequence_never_imaged_are_zero(one_case: Path, fast_config: PreprocessConfig) -> None:
    """A T2 slab covering half the reference's slices: the rest is 0, not a z-scored fake intensity."""
    case = _case(one_case)
    t2 = nib.load(case.images["t2"])
    affine = t2.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([0, 0, 10])  # keep slices 10..29 where they were
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj)[:, :, 10:30], affine), case.images["t2"])
    result = preprocess_case(case, replace(fast_config, crop_margin=None))
    stats = next(s for s in result.record["steps"] if s["step"] == "normalize")["stats"]
    assert 0.3 < stats["t2"]["mask_coverage"] < 0.8 and stats["t1"]["mask_coverage"] > 0.99
    values = sitk_to_array(result.images["t2"])
    inside = sitk_to_array(result.mask).astype(bool)
    covered = values[inside] != 0
    assert 0.3 < covered.mean() < 0.8  # the uncovered part of the head is exactly 0
    assert values[inside][covered].mean() == pytest.approx(0.0, abs=0.05)
