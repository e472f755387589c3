"""Shared fixtures: where the real data lives, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real data beside the checkout (``../shared/data``); override with BRATS_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("BRATS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (expected ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def lgg_dir() -> Path:
    """``../shared/data/lgg``: the real TCGA LGG patients (50 today) (t1, flair, t1c, seg)."""
    return _shared("lgg")


@pytest.fixture(scope="session")
def raw_study_dir() -> Path:
    """``../shared/data/raw_tcga_fg_6692``: one raw clinical study (t1, t1c, t2, fla), not aligned."""
    return _shared("raw_tcga_fg_6692")


@pytest.fixture(scope="session")
def brats_case_dir() -> Path:
    """``../shared/data/brats_case``: one BraTS-2023-style case (t1c, t1n, t2f, t2w), no labels."""
    return _shared("brats_case")


@pytest.fixture(scope="session")
def bundle_schema_dir() -> Path:
    """``../shared/data/monai_bundle_schema``: MONAI bundle metadata schemas for offline verification."""
    return _shared("monai_bundle_schema")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-tensor tests (on a shared 2-core machine one thread
    beats two competing ones); the previous count is restored. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
