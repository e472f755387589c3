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


@pytest.fixture(scope="session")
def brats_cohort():
    """A factory: ``make(root, n=2)`` writes ``n`` labelled brats2021 phantoms (32³) under ``root/data``
    and their datalist ``root/dl.json``; returns ``(datalist path, datalist)``."""
    def make(root: Path, n: int = 2) -> tuple[Path, dict]:
        from brats_pipeline.data.datalist import build_datalist, write_datalist
        from brats_pipeline.data.synthetic import write_cohort

        write_cohort(root / "data", "brats2021", n, (32, 32, 32), seed=0)
        datalist = build_datalist(root / "data", "brats2021", folds=n, check="none")
        write_datalist(datalist, root / "dl.json")
        return root / "dl.json", datalist

    return make


#: The tiny 3D U-Net of the hostile-input tests' bundle.
TINY_UNET3D = {"features": [4, 4, 8, 16, 32, 4]}


@pytest.fixture(scope="session")
def make_tiny_bundle():
    """A factory: ``make(dest, weights=True)`` copies ``bundles/brats_unet3d_segmentation`` to ``dest``
    with a tiny network and a 32³ roi, and (untrained, seeded) weights in ``models/model.pt``."""
    def make(dest: Path, weights: bool = True) -> Path:
        import json
        import shutil

        import torch

        from brats_pipeline.networks import build_network

        bundle = dest / "brats_unet3d_segmentation"
        shutil.copytree(REPO_ROOT / "bundles" / bundle.name, bundle, ignore=shutil.ignore_patterns("*.pt", "*.ts", "runs", "eval"))
        for name in ("inference.json", "train.json"):
            path = bundle / "configs" / name
            config = json.loads(path.read_text(encoding="utf-8"))
            if name == "train.json":  # the one network definition (inference.json builds train.json's)
                config["network_def"].update(TINY_UNET3D)
            config["roi_size"] = [32, 32, 32]
            path.write_text(json.dumps(config, indent=4), encoding="utf-8")
        if weights:
            torch.manual_seed(0)
            network = build_network("unet3d", 4, 3, spatial_dims=3, **TINY_UNET3D)
            (bundle / "models").mkdir(exist_ok=True)
            torch.save(network.state_dict(), bundle / "models" / "model.pt")
        return bundle

    return make


@pytest.fixture(scope="module")
def tiny_bundle(make_tiny_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny brats2021 bundle of :func:`make_tiny_bundle`, once per module."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="session")
def make_tiny_checkpoint():
    """A factory: ``make(path, seed=0)`` writes a Lightning-format checkpoint of a tiny brats2021
    unet3d (untrained, seeded) to ``path`` and returns it."""
    def make(path: Path, seed: int = 0) -> Path:
        import pytorch_lightning as pl
        import torch

        from brats_pipeline.module import BratsSegmentationModule

        torch.manual_seed(seed)
        module = BratsSegmentationModule("unet3d", {"features": [4, 4, 8, 8, 16, 4]}, task="brats2021",
                                         roi_size=(32, 32, 32), sw_batch_size=2, overlap=0.25, lr_scheduler=None)
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                    "pytorch-lightning_version": pl.__version__,
                    "datamodule_hyper_parameters": {"spacing": None, "orientation": "RAS", "crop_foreground": True}}, path)
        return path

    return make


@pytest.fixture(scope="session")
def unusable_output():
    """A factory: ``make(tmp_path, where, leaf, as_root)`` returns an output folder a tool cannot use.

    ``where``: ``"a file"`` (``tmp_path/afile``, written here), ``"under a file"``
    (``tmp_path/afile/<leaf>``) or ``"read-only"`` (a 0555 folder; as root, who writes into any
    folder of a normal file system, ``as_root`` under sysfs; skipped where there is none).
    """
    def make(tmp_path: Path, where: str, leaf: str, as_root: str) -> Path:
        import sys

        (tmp_path / "afile").write_text("not a folder")
        if where == "read-only" and os.geteuid() != 0:
            out = tmp_path / "ro"
            out.mkdir()
            out.chmod(0o555)
            return out
        if where == "read-only":
            if not (sys.platform.startswith("linux") and Path("/sys").is_dir()):
                pytest.skip("no folder that root cannot write into")
            return Path(as_root)
        return tmp_path / "afile" if where == "a file" else tmp_path / "afile" / leaf

    return make
