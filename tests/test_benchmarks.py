"""Smoke tests of benchmarks/bench_networks.py and benchmarks/bench_lgg.py on tiny budgets.

They run the real scripts' ``main`` (real networks, real MONAI transforms, real LGG files)
and check that the figures they print and write agree with each other and with the files
they saved: the Dice in ``results.json``, the CSV and the printed lines equals
2|A∩B|/(|A|+|B|) recomputed from the saved prediction NIfTI and the patient's ``_seg`` file.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Import a benchmark script by name, with its folder on ``sys.path`` (as when run)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_dice_definition(bench) -> None:
    dice = bench("_lgg_common").dice
    a = np.zeros((4, 4, 2), np.uint8)
    b = a.copy()
    assert dice(a, b) == 1.0  # both empty
    b[0, 0, 0] = 1
    assert dice(a, b) == 0.0
    a[0, :2, 0] = 1  # |A| = 2, |B| = 1, |A∩B| = 1
    assert dice(a, b) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[..., :1])


def test_bench_networks_tiny(bench, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mod = bench("bench_networks")
    out = tmp_path / "nets.json"
    argv = ["--dims", "2", "3", "--networks", "residual_unet", "--steps", "2", "--warmup", "1", "--batch2d", "2",
            "--shape2d", "32", "32", "--batch3d", "1", "--shape3d", "32", "32", "32", "--precision", "fp32", "--out", str(out)]
    assert mod.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["machine"]["cpu_model"] in printed
    names = [(r["name"], r["dims"]) for r in result["results"]]
    assert names == [("peer2d UNet 32-256 res2", 2), ("peer3d UNet 16-256 res2 BN", 3), ("residual_unet", 2), ("residual_unet", 3)]
    for r in result["results"]:
        assert "error" not in r, r
        assert len(r["wall_s_all"]) == 2 and r["wall_s"] == pytest.approx(statistics.median(r["wall_s_all"]))
        assert r["samples_per_s"] == pytest.approx(r["batch"] / r["wall_s"])
        assert r["parameters"] > 0
        assert f"{r['wall_s']:.3f}" in printed
    assert result["machine"]["precision"] == "fp32"


def test_precision_rule(bench) -> None:
    common = bench("_bench_common")
    cpu = common.resolve_device("cpu")
    native = bool(common.cpu_flags() & {"amx_bf16", "avx512_bf16"})
    assert common.resolve_precision(cpu, "auto") == ("bf16" if native else "fp32")
    assert common.resolve_precision(cpu, "fp32") == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        common.resolve_precision(cpu, "fp16")


def test_bench_networks_rejects_unknown_network(bench) -> None:
    with pytest.raises(SystemExit):
        bench("bench_networks").parse_args(["--networks", "unet4d"])


def _check_lgg_outputs(out: Path, printed: str, lgg: Path, methods: list[str], folds: list[int], budget_s: float) -> None:
    result = json.loads((out / "results.json").read_text())
    assert result["folds_run"] == folds and sorted(result["methods"]) == sorted(methods)
    held_out = sorted(c for c, f in result["fold_of"].items() if f in folds)
    for method in methods:
        res = result["methods"][method]
        seen = []
        for fold in folds:
            fr = res["folds"][str(fold)]
            assert fr["steps"] >= 1
            # stops at the first step past the budget: spent it all, and not much more
            assert fr["train_cpu_s"] >= budget_s
            assert fr["train_cpu_s"] < budget_s + 30
            with open(out / method / f"fold{fold}.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            assert sorted(r["case_id"] for r in rows) == sorted(fr["dice"])
            for row in rows:
                case = row["case_id"]
                assert result["fold_of"][case] == fold
                pred_img = nib.load(out / method / f"fold{fold}" / f"{case}.nii.gz")
                truth_img = nib.load(lgg / case / f"{case}_seg.nii.gz")
                pred, truth = np.asarray(pred_img.dataobj) > 0, np.asarray(truth_img.dataobj) > 0
                assert pred.shape == truth.shape and np.allclose(pred_img.affine, truth_img.affine)
                expected = 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) if pred.sum() + truth.sum() else 1.0
                assert fr["dice"][case] == pytest.approx(expected, abs=1e-9)
                assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
                assert int(row["pred_voxels"]) == pred.sum() and int(row["truth_voxels"]) == truth.sum()
                assert re.search(rf"{case}\s+Dice {expected:.4f}", printed)
                seen.append(case)
        assert sorted(seen) == held_out
        dices = [d for f in res["folds"].values() for d in f["dice"].values()]
        s = res["summary"]
        assert s["mean"] == pytest.approx(statistics.fmean(dices)) and s["min"] == pytest.approx(min(dices))
        assert s["below_0.5"] == sum(d < 0.5 for d in dices)
        assert f"Dice mean {s['mean']:.4f}  median {s['median']:.4f}" in printed


def test_bench_lgg_peer2d_two_folds(bench, lgg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mod = bench("bench_lgg")
    out = tmp_path / "cv"
    argv = ["--data", str(lgg_dir), "--methods", "peer2d", "--patients-limit", "4", "--num-folds", "2",
            "--budget-minutes", "0.03", "--precision", "fp32", "--out", str(out)]
    assert mod.main(argv) == 0
    printed = capsys.readouterr().out
    assert "CPU: " in printed
    _check_lgg_outputs(out, printed, lgg_dir, ["peer2d"], [0, 1], 0.03 * 60)


def test_bench_lgg_peer3d_one_fold(bench, lgg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mod = bench("bench_lgg")
    out = tmp_path / "cv"
    argv = ["--data", str(lgg_dir), "--methods", "peer3d", "--patients-limit", "3", "--num-folds", "3", "--folds", "0",
            "--budget-minutes", "0.03", "--precision", "fp32", "--out", str(out)]
    assert mod.main(argv) == 0
    _check_lgg_outputs(out, capsys.readouterr().out, lgg_dir, ["peer3d"], [0], 0.03 * 60)


def test_bench_lgg_skips_without_shared_data(bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    mod = bench("bench_lgg")
    monkeypatch.setenv("BRATS_SHARED_DATA", str(tmp_path / "no_shared_data"))
    out = tmp_path / "cv"
    assert mod.main(["--out", str(out)]) == 0
    assert "SKIPPED: no LGG data at" in capsys.readouterr().out
    assert not out.exists()
    # a folder named explicitly that does not exist is an error, not a skip
    assert mod.main(["--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing: LGG data folder not found" in capsys.readouterr().err


def test_bench_lgg_recipe_one_fold(bench, lgg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The project's recipe (brats-train's CLI, BratsDataModule, Predictor.from_checkpoint) under the same budget rule."""
    mod = bench("bench_lgg")
    assert mod.DEFAULT_METHODS[0] == "recipe"
    out = tmp_path / "cv"
    argv = ["--data", str(lgg_dir), "--methods", "recipe", "--num-folds", "3", "--folds", "0", "--patients-limit", "3",
            "--budget-minutes", "0.1", "--precision", "fp32", "--out", str(out)]
    assert mod.main(argv) == 0
    _check_lgg_outputs(out, capsys.readouterr().out, lgg_dir, ["recipe"], [0], 6.0)


@pytest.mark.slow
def test_lgg_recipe_learns_on_real_patients(bench, lgg_dir: Path, tmp_path: Path) -> None:
    """The CPU recipe, a few CPU minutes on 8 real LGG patients, beats the same recipe barely trained on 2 held-out ones.

    Same folds, same seed, same code path (brats-train's CLI, BratsDataModule, Predictor); only
    the compute budget differs: ~2 steps (the network is as good as untrained) against 3 CPU
    minutes (a few hundred steps, 1 thread). Per-patient Dice on the held-out patients must rise clearly.
    """
    mod = bench("bench_lgg")
    means = {}
    for name, minutes in (("untrained", "0.02"), ("trained", "3")):
        out = tmp_path / name
        argv = ["--data", str(lgg_dir), "--methods", "recipe", "--num-folds", "5", "--folds", "0",
                "--patients-limit", "10", "--budget-minutes", minutes, "--threads", "1", "--out", str(out), "--no-predictions"]
        assert mod.main(argv) == 0
        result = json.loads((out / "results.json").read_text())["methods"]["recipe"]
        assert len(result["folds"]["0"]["dice"]) == 2
        means[name] = result["summary"]["mean"]
    # measured (AMD EPYC, 2 threads at load ~4: 255 steps): untrained 0.02, trained 0.29; 1 thread
    # makes a CPU-minute buy about twice the steps on a busy machine
    assert means["trained"] >= means["untrained"] + 0.15, means


def test_bench_lgg_postprocess_on_kept_fold_models(bench, lgg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Inference settings compared on bench_lgg's kept fold models: ``plain`` is the Dice bench_lgg scored, to the digit."""
    out = tmp_path / "cv"
    argv = ["--data", str(lgg_dir), "--methods", "recipe", "--num-folds", "3", "--folds", "0", "--patients-limit", "3",
            "--budget-minutes", "0.05", "--precision", "fp32", "--threads", "1", "--keep-checkpoints", "--out", str(out)]
    assert bench("bench_lgg").main(argv) == 0
    assert (out / "recipe" / "fold0.ckpt").is_file()
    scored = json.loads((out / "results.json").read_text())["methods"]["recipe"]["folds"]["0"]["dice"]
    capsys.readouterr()
    mod = bench("bench_lgg_postprocess")
    assert mod.main(["--checkpoints", str(out / "recipe"), "--data", str(lgg_dir), "--num-folds", "3",
                     "--patients-limit", "3", "--threads", "1", "--variants", "plain", "largest"]) == 0
    printed = capsys.readouterr().out
    rows = {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^(\S+)\s+([\d.]+)\s+([\d.]+)$", printed, re.M)}
    assert set(scored) <= set(rows)
    for case_id, d in scored.items():
        assert rows[case_id][0] == pytest.approx(d, abs=5e-5)  # same model, same predictor, same patients
        assert 0.0 <= rows[case_id][1] <= 1.0
    assert rows["mean"][0] == pytest.approx(statistics.mean(scored.values()), abs=5e-5)
    assert mod.main(["--checkpoints", str(tmp_path / "none"), "--data", str(lgg_dir)]) == 2
