"""``brats-demo``: end to end (``--quick``), fixed work whatever the load, and what it records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_pipeline.cli import demo
from brats_pipeline.cli.demo import main as demo_main


def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert demo_main(["--quick", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = out / "evaluation" / "report.html"
    assert f"report: {report.resolve()}" in printed and "mean Dice on held-out phantoms: TC" in printed
    HTMLParser().feed(report.read_text())
    assert (out / "evaluation" / "figures" / "dice_boxplot.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "train" / "model.ckpt").is_file()
    result = json.loads((out / "demo_result.json").read_text())
    assert set(result["dice_mean"]) == {"TC", "WT", "ET"}
    # the work done, the time it took and where it ran are recorded (and printed)
    assert result["steps"] == result["steps_planned"] == demo.QUICK["steps"]
    assert 0 < result["train_wall_minutes"] < result["wall_minutes"] and result["cpu_minutes"] > 0
    compute = result["compute"]
    assert compute["accelerator"] == "cpu" and compute["device"] == demo.cpu_name() and compute["device"]
    assert compute["precision"] == "32-true"  # auto: fp32 (see plan_compute)
    assert compute["threads"] * (compute["workers"] + 1) <= compute["cores"] == len(os.sched_getaffinity(0))
    assert f"done: {demo.QUICK['steps']} steps;" in printed and compute["device"] in printed
    test_cases = json.loads((out / "test_datalist.json").read_text())["testing"]
    assert len(test_cases) == 2
    train_cases = json.loads((out / "train_datalist.json").read_text())["training"]
    manifest = json.loads((out / "preprocessed" / "manifest.json").read_text())["cases"]  # run_batch's
    assert sorted(r["case_id"] for r in manifest) == sorted(c["case_id"] for c in train_cases + test_cases)
    assert {r["status"] for r in manifest} == {"ok"}
    for case in test_cases:
        pred = nib.load(str(out / "predictions" / f"{case['case_id']}.nii.gz"))
        ref = nib.load(str(out / case["image"][0]) if not Path(case["image"][0]).is_absolute() else case["image"][0])
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_demo_rejects_bad_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert demo_main(["--quick", "--steps", "0", "-o", str(tmp_path / "x")]) == 2
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
    assert demo_main(["--quick", "--threads", "0", "-o", str(tmp_path / "x")]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo_main(["--train-minutes", "5"])  # no wall-clock cap any more


def test_compute_plan_never_oversubscribes_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    try:
        for cores in (1, 2, 3, 4, 16):
            monkeypatch.setattr(demo, "cores_available", lambda n=cores: n)
            plan = demo.plan_compute("cpu")
            assert plan.threads * (plan.workers + 1) <= cores and plan.threads >= 1, plan
            assert torch.get_num_threads() == plan.threads
        monkeypatch.setattr(demo, "cores_available", lambda: 2)
        assert (demo.plan_compute("cpu").threads, demo.plan_compute("cpu").workers) == (2, 0)  # data cached: no worker
        # fp32 unless bf16 is asked for, and bf16 only on a CPU with native bf16 (emulated: 25-35x slower)
        assert demo.plan_compute("cpu").precision == "32-true"
        from brats_pipeline import devices

        monkeypatch.setattr(devices, "_cpuinfo", lambda: "model name\t: Some CPU\nflags\t: fpu sse avx2 fma\n")
        with pytest.raises(ValueError, match="Some CPU, which has no native bf16"):
            demo.plan_compute("cpu", precision="bf16")
        for flags in ("avx2 avx512f avx512_bf16", "avx2 amx_bf16 amx_tile"):
            monkeypatch.setattr(devices, "_cpuinfo", lambda f=flags: f"model name\t: X\nflags\t: {f}\n")
            assert demo.plan_compute("cpu", precision="bf16").precision == "bf16-mixed"
        with pytest.raises(ValueError, match="unknown device 'tpu'"):
            demo.plan_compute("tpu")
        with pytest.raises(ValueError, match="unknown precision 'fp8'"):
            demo.plan_compute("cpu", precision="fp8")
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- fixed work
TINY = {**demo.QUICK, "cases": 4, "steps": 5, "val_every": 100}


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_demo")
    demo.synthesise(root / "preprocessed", TINY["cases"] + 1, TINY["shape"], seed=0)
    demo.make_datalists(root / "preprocessed", root, TINY["cases"], seed=0)
    return root


def _busy_processes(n: int = 2) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _train(cohort: Path, run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    threads = torch.get_num_threads()
    try:
        ckpt, info = demo.train(cohort / "train_datalist.json", run, TINY, seed=0, plan=demo.plan_compute("cpu"))
    finally:
        torch.set_num_threads(threads)
    return info, torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_demo_training_is_fixed_work_whatever_the_load(tiny_cohort: Path, tmp_path: Path) -> None:
    """The same seed trains the same steps to the same weights, bit for bit, on an idle and on a loaded CPU."""
    idle, idle_weights = _train(tiny_cohort, tmp_path / "idle")
    busy = _busy_processes(2)
    try:
        time.sleep(0.5)
        loaded, loaded_weights = _train(tiny_cohort, tmp_path / "loaded")
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert idle["steps"] == loaded["steps"] == TINY["steps"]
    assert idle_weights.keys() == loaded_weights.keys()
    changed = [k for k, v in idle_weights.items() if not torch.equal(loaded_weights[k], v)]
    assert not changed, f"weights differ between the idle and the loaded run: {changed[:5]}"


@pytest.mark.slow
def test_full_demo_reaches_the_documented_dice(tmp_path: Path) -> None:
    """The default demo (seed 0): held-out Dice >= 0.90 for TC, WT and ET (README's table)."""
    out = tmp_path / "demo"
    assert demo_main(["-o", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "demo_result.json").read_text())
    assert result["steps"] == demo.DEFAULTS["steps"]
    assert min(result["dice_mean"].values()) >= 0.90, result["dice_mean"]
