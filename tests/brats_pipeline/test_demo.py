"""``brats-demo --quick`` runs end to end: synthesise, preprocess, train, infer, evaluate, report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_pipeline.cli.demo import TrainingBudget
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


def test_training_budget_anneals_and_stops() -> None:
    class Trainer:
        def __init__(self) -> None:
            self.optimizers = [type("Opt", (), {"param_groups": [{"lr": 0.01}]})()]
            self.should_stop = False
            self.global_step = 0

    trainer, cb = Trainer(), TrainingBudget(steps=10, seconds=1000.0, floor=0.1)
    cb.on_train_start(trainer, None)
    cb.on_train_batch_start(trainer, None, None, 0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01, rel=1e-3)
    trainer.global_step = 5
    cb.on_train_batch_start(trainer, None, None, 5)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0055, rel=1e-2)  # half-way down the cosine
    cb.on_train_batch_end(trainer, None, None, None, 5)
    assert not trainer.should_stop
    trainer.global_step = 10
    cb.on_train_batch_end(trainer, None, None, None, 9)
    assert trainer.should_stop and cb.stopped_by == "steps"
    busy, slow = Trainer(), TrainingBudget(steps=10, seconds=1000.0)
    slow.on_train_start(busy, None)
    slow._start -= 1000.0  # the time budget is spent first
    slow.on_train_batch_end(busy, None, None, None, 0)
    assert busy.should_stop and slow.stopped_by == "time"
    with pytest.raises(ValueError, match="budget must be positive"):
        TrainingBudget(0, 10.0)
