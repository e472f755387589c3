"""A real MONAI Label 0.8.5 server (its ``monaibundle`` sample app) serves our bundles from a local folder, offline.

Needs ``.venv-monailabel`` (``bash scripts/install_monailabel.sh``); skipped with that reason
otherwise. The server runs on 127.0.0.1 on a free port and is stopped by its PID. The
committed BraTS 3D U-Net and LGG (2.5D U-Net) bundles are served unchanged, with their shipped
weights (the LGG bundle's ``models/model.pt``) or else seeded random weights written as a plain
state dict; ``POST /infer/<model>`` on a stacked 4D NIfTI must return a label volume of the
input's shape and geometry with the task's labels, equal voxel for voxel to what
``monai.bundle run`` with ``inference.json`` writes for the same input and weights. An input the
bundle cannot take (one 3D modality) is answered with HTTP 422 and the reason, not a bare 500.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import brats_pipeline.bundle as bb
from brats_pipeline.constants import get_task
from brats_pipeline.data.synthetic import write_cohort

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ML_PYTHON = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel")) / "bin" / "python"
MODELS = {"brats_unet3d_segmentation": "brats2021", "lgg_flair_segmentation": "lgg"}
#: A copy of the BraTS bundle with a tiny network, 32³ patches and no loader workers, for a quick /train.
TINY_TRAIN = "brats_tiny_segmentation"
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 600) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.read()


def _multipart(fields: dict[str, str], file_path: Path) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_path.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + file_path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def ml_python() -> Path:
    if not ML_PYTHON.is_file():
        pytest.skip(f"MONAI Label environment absent ({ML_PYTHON}); create it with: bash scripts/install_monailabel.sh")
    return ML_PYTHON


@pytest.fixture(scope="module")
def workspace(ml_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample app with our two bundles (seeded random weights), and one stacked case per task in studies/."""
    root = tmp_path_factory.mktemp("monailabel")
    done = subprocess.run([str(ml_python), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
                           "--output", str(root / "apps")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.manual_seed(0)
    for name, task in MODELS.items():
        bundle = root / "apps" / "monaibundle" / "model" / name
        shutil.copytree(REPO / "bundles" / name, bundle)
        if not (bundle / "models" / "model.pt").is_file():  # no shipped weights: seeded random ones
            network = bb.bundle_parser(bundle).get_parsed_content("network_def")
            bb.save_state_dict(network.state_dict(), bundle / "models" / "model.pt")
        cohort = root / "cohorts" / task
        write_cohort(cohort, task, n_cases=1, shape=(64, 56, 40), seed=3)
        case = bb.inference_cases(cohort, task=task)[0]
        bb.stack_modalities(case["image"], root / "studies" / f"{task}_case.nii.gz", task=task)
        if task == "brats2021":  # a label, as a MONAI Label user would have saved it
            (root / "studies" / "labels" / "final").mkdir(parents=True)
            shutil.copy(case["label"], root / "studies" / "labels" / "final" / f"{task}_case.nii.gz")
    tiny = root / "apps" / "monaibundle" / "model" / TINY_TRAIN
    shutil.copytree(REPO / "bundles" / "brats_unet3d_segmentation", tiny)
    train = json.loads((tiny / "configs" / "train.json").read_text())
    train["network_def"]["features"] = [4, 4, 8, 16, 32, 4]
    train["roi_size"] = [32, 32, 32]
    train["train"]["datamodule"]["num_workers"] = 0
    train["train"]["trainer"].update(enable_progress_bar=False, logger=False)
    (tiny / "configs" / "train.json").write_text(json.dumps(train, indent=4))
    return root


@pytest.fixture(scope="module")
def server(ml_python: Path, workspace: Path) -> str:
    port = _free_port()
    log = (workspace / "server.log").open("w")
    cmd = [str(ml_python), "-m", "monailabel.main", "start_server", "--app", str(workspace / "apps" / "monaibundle"),
           "--studies", str(workspace / "studies"), "--conf", "models", ",".join([*MODELS, TINY_TRAIN]), "--conf", "zoo_source", "ngc",
           "--conf", "sam2", "false", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workspace, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{(workspace / 'server.log').read_text()[-4000:]}")
            try:
                _request(f"{url}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready in {START_TIMEOUT_S} s:\n{(workspace / 'server.log').read_text()[-4000:]}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the session we started: the server and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_server_lists_our_models_with_their_label_values(server: str) -> None:
    info = json.loads(_request(f"{server}/info/"))
    for name, task in MODELS.items():
        labels = {v.lower(): k for k, v in get_task(task).labels.items()}
        assert info["models"][name]["labels"] == labels
        meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text(encoding="utf-8"))
        assert info["models"][name]["version"] == meta["version"]
        assert name in info["trainers"]  # train.json was accepted by MONAI Label's bundle trainer


@pytest.mark.parametrize("name", list(MODELS))
def test_infer_returns_the_label_volume_that_monai_bundle_run_writes(name: str, server: str, workspace: Path) -> None:
    task = get_task(MODELS[name])
    image = workspace / "studies" / f"{task.name}_case.nii.gz"
    if name == "brats_unet3d_segmentation":  # an image of the studies folder, by id
        body = _request(f"{server}/infer/{name}?image={task.name}_case&output=image", data=b"")
    else:  # an uploaded file
        data, headers = _multipart({"params": "{}"}, image)
        body = _request(f"{server}/infer/{name}?output=image", data=data, headers=headers)
    result = workspace / f"ml_{name}.nii.gz"
    result.write_bytes(body)
    label, source = nib.load(result), nib.load(image)
    assert label.shape == source.shape[:3] and np.allclose(label.affine, source.affine, atol=1e-4)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values).tolist()) <= set(task.label_values)

    from monai.bundle import run

    bundle = workspace / "apps" / "monaibundle" / "model" / name
    inputs, out = workspace / f"inputs_{name}", workspace / f"ours_{name}"
    inputs.mkdir()
    shutil.copy(image, inputs / image.name)
    run(config_file=str(bundle / "configs" / "inference.json"), logging_file=False, bundle_root=str(bundle),
        dataset_dir=str(inputs), output_dir=str(out), device="cpu")
    ours = np.asarray(nib.load(out / f"{task.name}_case_seg.nii.gz").dataobj)
    assert np.array_equal(ours, values), f"{int((ours != values).sum())} of {ours.size} voxels differ"


def test_infer_with_one_3d_modality_answers_422_naming_the_problem(server: str, workspace: Path) -> None:
    """A single modality (3D) instead of the stacked 4D NIfTI: HTTP 422 whose JSON body says what is wrong, not a bare 500."""
    name, task = "brats_unet3d_segmentation", get_task("brats2021")
    t1 = bb.inference_cases(workspace / "cohorts" / task.name, task=task.name)[0]["image"][1]  # a 3D t1 file
    data, headers = _multipart({"params": "{}"}, Path(t1))
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        _request(f"{server}/infer/{name}?output=image", data=data, headers=headers)
    error = excinfo.value
    body = error.read().decode()
    assert error.code == 422, (error.code, body)
    detail = json.loads(body)["detail"]
    assert "expected 4 channels (t1c, t1, t2, flair)" in detail and "one 4D NIfTI" in detail, detail
    assert "(64, 56, 40)" in detail, detail  # the uploaded file's 3D shape
    # the server still works afterwards
    assert json.loads(_request(f"{server}/info/"))["models"][name]


def test_train_runs_our_lightning_train_json(server: str, workspace: Path) -> None:
    """MONAI Label's bundle trainer: its overrides (data, max_epochs, device, handlers) drive our Lightning run."""
    request = {"max_epochs": 1, "val_split": 0.0, "device": "cpu", "multi_gpu": False}
    _request(f"{server}/train/{TINY_TRAIN}?run_sync=true", data=json.dumps(request).encode(),
             headers={"Content-Type": "application/json"})
    bundle = workspace / "apps" / "monaibundle" / "model" / TINY_TRAIN
    split = json.loads((bundle / "runs" / "datalist_split.json").read_text())
    assert [Path(e["image"]).name for e in split["training"]] == ["brats2021_case.nii.gz"] * 2  # train, and validate
    network = bb.bundle_parser(bundle, "train.json").get_parsed_content("network_def")
    bb.load_network(network, bundle / "models" / "model.pt")  # strict: a plain state dict of that network
    assert (bundle / "runs" / "checkpoints" / "last.ckpt").is_file()
