"""Fixtures of the preprocessing tests: small phantoms, cheap settings, file hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from preprocessing.config import PreprocessConfig
from preprocessing.n4 import N4Config
from preprocessing.register import RegistrationConfig

#: Small synthetic volumes: 48 x 48 x 40 voxels of 3 mm (a head-sized 144 mm field of view).
SHAPE = (48, 48, 40)
SPACING = (3.0, 3.0, 3.0)
#: The brats2021 scheme, as the task-free package takes it: modality names in channel order, label values.
BRATS2021 = {"modalities": ("t1c", "t1", "t2", "flair"), "label_values": (0, 1, 2, 4)}


@pytest.fixture(autouse=True, scope="session")
def _two_itk_threads() -> None:
    """The test machines have 2 cores; keep ITK from oversubscribing them."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)


@pytest.fixture
def fast_config() -> PreprocessConfig:
    """Every step on, with settings cheap enough for 48^3 volumes (seconds per case)."""
    return PreprocessConfig(
        **BRATS2021,
        spacing=(4.0, 4.0, 4.0),
        n4_config=N4Config(shrink_factor=2, iterations=(10, 10), fit_margin_mm=None),
        registration=RegistrationConfig(shrink_factors=(2, 1), smoothing_sigmas_mm=(6.0, 0.0), iterations=30),
    )


@pytest.fixture
def cheap_cli_args() -> list[str]:
    """CLI options for quick batch tests: a little N4, no registration, 4 mm output."""
    return ["--n4-shrink", "2", "--n4-iterations", "5", "5", "--no-register", "--spacing", "4", "4", "4", "--no-progress"]


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Three labelled brats2021 phantoms and one unlabelled, 48x48x40 at 3 mm, in BraTS 2021 layout."""
    from brats_pipeline.data.synthetic import write_cohort

    root = tmp_path / "cohort"
    write_cohort(root, "brats2021", n_cases=3, n_unlabelled=1, shape=SHAPE, spacing=SPACING, seed=7)
    return root


@pytest.fixture
def one_case(tmp_path: Path) -> Path:
    """One labelled brats2021 phantom (``BraTS2021_00000``), 48x48x40 at 3 mm: for bad-input tests."""
    from brats_pipeline.data.synthetic import write_cohort

    root = tmp_path / "one"
    write_cohort(root, "brats2021", n_cases=1, shape=SHAPE, spacing=SPACING, seed=7)
    return root


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def tree_hashes() -> Callable[[Path], dict[str, str]]:
    """``tree_hashes(folder)`` -> relative path -> sha256 of every file below it (inputs untouched?)."""
    return _tree_hashes


@pytest.fixture
def write_volume() -> Callable[..., Path]:
    """``write_volume(path, array, spacing=(3, 3, 3), dtype=None)``: a NIfTI with a centred RAS affine."""
    from preprocessing.io import write_nifti

    def write(path: Path, array: np.ndarray, spacing=SPACING, dtype=None) -> Path:
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -(np.array(array.shape[:3]) - 1) / 2.0 * np.asarray(spacing)
        return write_nifti(array, affine, path, dtype=dtype)

    return write
