"""Studies (``brats-study``): arms run with the same folds and seed, resume, keys, selection, the report's numbers, errors."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from brats_pipeline.cli.study import main as study_main
from brats_pipeline.study.runner import RunPaths, run_paths, run_status
from brats_pipeline.study.selection import RunCurves, select_epoch, smooth
from brats_pipeline.study.spec import STUDY_DIR, SelectionRule, StudyError, load_study
from brats_pipeline.study.summary import paired_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[2]
WINDOW = 2
STUDY = {
    "name": "two_losses",
    "description": "dice_ce vs dice <tiny>",
    "base_config": "tiny_cpu.yaml",
    "folds": [0, 1],
    "seed": 3,
    "selection": {"metric": "val_loss", "smoothing": "moving_average", "window": WINDOW},
    "common": {"trainer.max_epochs": 4, "model.network_kwargs": {"features": [4, 4, 8, 8, 16, 4]},
               "model.optimizer.init_args.lr": 0.01},
    "grid": {"model.loss": ["dice_ce", "dice"]},
}
ARMS = ["loss=dice_ce", "loss=dice"]


def _write_study(path: Path, dl: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**STUDY, "datalist": str(dl), **changes}, sort_keys=False), encoding="utf-8")
    return path


def _files(paths: RunPaths) -> dict[str, tuple[int, str]]:
    """(mtime_ns, sha256) of a run's checkpoints and its trained.json."""
    files = [*paths.checkpoints.glob("*.ckpt"), paths.trained]
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}


def _run(*args: str) -> int:
    return study_main(["run", *args, "--threads", "1"])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    root = tmp_path_factory.mktemp("study_cohort")
    write_cohort(root / "data", "brats2021", 6, (32, 32, 32), seed=0)
    return write_datalist(build_datalist(root / "data", "brats2021", folds=2, check="none"), root / "dl.json")


@pytest.fixture(scope="module")
def finished(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Arm 0 alone (as one Slurm array task), then the whole study: the second run must train arm 1 only."""
    root = tmp_path_factory.mktemp("study")
    path, out = _write_study(root / "study.yaml", cohort), root / "out"
    assert _run(str(path), "-o", str(out), "--arm-index", "0") == 0
    study = load_study(path)
    assert [a.name for a in study.arms] == ARMS
    assert [run_status(out, study, study.arms[1], f) for f in (0, 1)] == ["todo", "todo"]
    assert not (out / "report.html").exists()  # one arm of an array: no report
    arm0 = {f: _files(run_paths(out, study, study.arms[0], f)) for f in (0, 1)}
    assert _run(str(path), "-o", str(out)) == 0
    return {"path": path, "out": out, "study": study, "arm0": arm0, "datalist": cohort}


def test_rerun_of_a_partial_study_trains_only_the_unfinished_arm(finished: dict) -> None:
    study, out = finished["study"], finished["out"]
    for fold in (0, 1):
        assert _files(run_paths(out, study, study.arms[0], fold)) == finished["arm0"][fold]  # not trained again
        assert len(finished["arm0"][fold]) == 4 + 1  # a checkpoint per validation (4 epochs) + the marker
        for arm in study.arms:
            assert run_status(out, study, arm, fold) == "done"
    keys = [study.arm_key(a) for a in study.arms]
    assert len(set(keys)) == 2
    assert sorted(p.name for p in (out / "arms").iterdir()) == sorted(f"{a}-{k[:12]}" for a, k in zip(ARMS, keys))


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _smoothed_argmin(metrics_csv: Path) -> tuple[int, float, list[float]]:
    """The argmin epoch of the trailing mean (WINDOW) of val/loss, computed here from the raw CSV."""
    by_epoch = {int(r["epoch"]): float(r["val/loss"]) for r in _csv_rows(metrics_csv) if r.get("val/loss")}
    epochs = sorted(by_epoch)
    values = [by_epoch[e] for e in epochs]
    smoothed = [float(np.mean(values[max(0, i - WINDOW + 1): i + 1])) for i in range(len(values))]
    best = int(np.argmin(smoothed))
    return epochs[best], smoothed[best], values


class _Numbers(HTMLParser):
    """The report's numbers by (arm, region, metric, stat), and the selection table's by (arm, fold, stat)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.values: dict[tuple[str, ...], str] = {}
        self._key: tuple[str, ...] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "span" and "data-stat" in d:
            self._key = ((d["data-arm"], d["data-fold"], d["data-stat"]) if "data-fold" in d
                         else (d["data-arm"], d["data-region"], d["data-metric"], d["data-stat"]))

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self.values[self._key] = data
            self._key = None


def test_report_numbers_match_the_logs_and_the_per_case_metrics(finished: dict) -> None:
    from scipy.stats import wilcoxon

    study, out = finished["study"], finished["out"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    html = (out / "report.html").read_text(encoding="utf-8")
    page = _Numbers(html)
    assert [a["name"] for a in summary["arms"]] == ARMS and all(f">{a}<" in html for a in ARMS)
    assert "dice_ce vs dice &lt;tiny&gt;" in html  # the description, escaped
    assert (out / "figures" / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # the selected epoch: the argmin of the trailing mean of val/loss, computed from each run's metrics.csv
    selection = {(r["arm"], int(r["fold"])): r for r in _csv_rows(out / "selection.csv")}
    for arm in study.arms:
        for fold in study.folds:
            paths = run_paths(out, study, arm, fold)
            epoch, score, values = _smoothed_argmin(paths.metrics)
            row = selection[(arm.name, fold)]
            assert int(row["epoch"]) == epoch and math.isclose(float(row["score"]), score, rel_tol=1e-5)
            assert Path(row["checkpoint"]) == paths.checkpoint(epoch) and paths.checkpoint(epoch).is_file()
            assert page.values[(arm.name, str(fold), "epoch")] == str(epoch)
            assert page.values[(arm.name, str(fold), "score")] == f"{score:.4f}"
            assert summary["curves"][arm.name][str(fold)]["val"]["val/loss"] == pytest.approx(values)

    # per_case.csv is the runs' own evaluations (brats_pipeline.evaluation), pooled over the folds
    per_case = _csv_rows(out / "per_case.csv")
    for arm in study.arms:
        for fold in study.folds:
            sel = int(selection[(arm.name, fold)]["epoch"])
            own = _csv_rows(run_paths(out, study, arm, fold).evaluation(sel) / "metrics.csv")
            mine = [r for r in per_case if r["arm"] == arm.name and int(r["fold"]) == fold]
            assert len(own) == len(mine) == 3 * 3  # 3 validation cases x 3 regions
            for a, b in zip(sorted(own, key=lambda r: (r["case_id"], r["region"])),
                            sorted(mine, key=lambda r: (r["case_id"], r["region"]))):
                assert a["case_id"] == b["case_id"] and float(a["dice"]) == pytest.approx(float(b["dice"]), rel=1e-5)

    # the table: mean / median / min / max / 90 % interval of the per-case CSV, per arm and region
    stats = {(r["arm"], r["region"], r["metric"]): r for r in _csv_rows(out / "summary.csv")}
    for arm in ARMS:
        for region in ("TC", "WT", "ET"):
            for metric, digits in (("dice", 3), ("hd95", 2)):
                values = np.array([float(r[metric]) for r in per_case if r["arm"] == arm and r["region"] == region])
                assert len(values) == 6
                expected = {"mean": values.mean(), "median": np.median(values), "min": values.min(), "max": values.max(),
                            "p5": np.percentile(values, 5), "p95": np.percentile(values, 95)}
                for stat, value in expected.items():
                    assert float(stats[(arm, region, metric)][stat]) == pytest.approx(value, rel=1e-4, abs=1e-6)
                    assert page.values[(arm, region, metric, stat)] == f"{value:.{digits}f}"
                assert page.values[(arm, region, metric, "n")] == "6"

    # paired differences from the reference (the first arm): scipy's Wilcoxon on the per-case pairs
    paired = {(r["arm"], r["region"], r["metric"]): r for r in _csv_rows(out / "paired.csv")}
    assert {k[0] for k in paired} == {ARMS[1]} and all(r["reference"] == ARMS[0] for r in paired.values())
    tested = 0
    for (arm, region, metric), row in paired.items():
        ref = {r["case_id"]: float(r[metric]) for r in per_case if r["arm"] == ARMS[0] and r["region"] == region}
        other = {r["case_id"]: float(r[metric]) for r in per_case if r["arm"] == arm and r["region"] == region}
        diffs = [other[c] - ref[c] for c in sorted(ref)]
        assert int(row["n"]) == 6 and float(row["mean_difference"]) == pytest.approx(np.mean(diffs), rel=1e-4, abs=1e-9)
        if not any(diffs):
            assert row["p_value"] == "" and "zero" in row["note"] and page.values[(arm, region, metric, "p")] == "–"
            continue
        p = wilcoxon(diffs).pvalue
        assert float(row["p_value"]) == pytest.approx(p, rel=1e-5)
        assert page.values[(arm, region, metric, "p")] == f"{p:.4f}"
        tested += 1
    assert tested >= 1


def test_a_lost_done_marker_redoes_selection_and_evaluation_not_training(finished: dict) -> None:
    study, out = finished["study"], finished["out"]
    arm = study.arms[1]
    paths = run_paths(out, study, arm, 0)
    before = _files(paths)
    paths.done.unlink()
    assert run_status(out, study, arm, 0) == "trained"
    # the training marker lost too (killed between fit and marker): resumes from last.ckpt, trains no more epoch
    cut = run_paths(out, study, arm, 1)
    cut_before = {k: v for k, v in _files(cut).items() if k != "trained.json"}
    cut.done.unlink()
    cut.trained.unlink()
    assert run_status(out, study, arm, 1) == "partial"
    assert _run(str(finished["path"]), "-o", str(out), "--arm-index", "1") == 0
    assert _files(paths) == before and paths.done.is_file()
    assert {k: v for k, v in _files(cut).items() if k != "trained.json"} == cut_before
    assert json.loads(cut.trained.read_text())["resumed_from"].endswith("last.ckpt")


def test_an_edited_study_does_not_reuse_the_arms(finished: dict, tmp_path: Path) -> None:
    study, out = finished["study"], finished["out"]
    edited = _write_study(tmp_path / "edited.yaml", finished["datalist"], folds=[0],
                          common={**STUDY["common"], "model.optimizer.init_args.lr": 0.02})
    changed = load_study(edited)
    assert [a.name for a in changed.arms] == ARMS
    for old, new in zip(study.arms, changed.arms):
        assert changed.arm_key(new) != study.arm_key(old) and run_status(out, changed, new, 0) == "todo"
    seed = load_study(_write_study(tmp_path / "seed.yaml", finished["datalist"], seed=4))
    assert all(run_status(out, seed, a, 0) == "todo" for a in seed.arms)
    other_datalist = tmp_path / "dl.json"
    other_datalist.write_text(finished["datalist"].read_text() + "\n", encoding="utf-8")  # the same cases, other bytes
    assert run_status(out, load_study(finished["path"], other_datalist), study.arms[0], 0) == "todo"
    same = load_study(_write_study(tmp_path / "same.yaml", finished["datalist"], description="other words"))
    assert all(run_status(out, same, a, f) == "done" for a in same.arms for f in (0, 1))  # only what trains is keyed

    old = {f: _files(run_paths(out, study, study.arms[0], f)) for f in (0, 1)}
    assert _run(str(edited), "-o", str(out), "--arm-index", "0") == 0
    assert run_status(out, changed, changed.arms[0], 0) == "done"
    assert run_paths(out, changed, changed.arms[0], 0).root != run_paths(out, study, study.arms[0], 0).root
    assert {f: _files(run_paths(out, study, study.arms[0], f)) for f in (0, 1)} == old


def test_report_only_summarises_and_names_unfinished_runs(finished: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished["out"], out)
    study = finished["study"]
    run_paths(out, study, study.arms[1], 1).done.unlink()
    assert study_main(["report", str(finished["path"]), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not finished: arm 'loss=dice' fold 1 (trained)" in err
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["incomplete"] == [{"arm": "loss=dice", "fold": 1, "status": "trained", "error": ""}]
    assert summary["arms"][1]["n_cases"] == 3 and not run_paths(out, study, study.arms[1], 1).done.exists()
    assert "Not finished (1 run(s))" in (out / "report.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- selection and statistics
def _curves(losses: list[float], dice: list[float] | None = None, epochs: list[int] | None = None) -> RunCurves:
    epochs = epochs or list(range(len(losses)))
    val = {"val/loss": losses, "val/dice_mean": dice or [0.5] * len(losses)}
    return RunCurves(epochs=epochs, val_steps=[10 * (e + 1) for e in epochs], val=val)


def test_smoothing_and_selection_rules() -> None:
    losses = [1.0, 0.2, 0.9, 0.5, 0.4, 0.45]
    assert smooth(losses, "moving_average", 3)[2] == pytest.approx((1.0 + 0.2 + 0.9) / 3)
    assert smooth(losses, "moving_average", 3)[0] == 1.0
    ema = smooth(losses, "ema", 3)
    assert ema[1] == pytest.approx(0.5 * 0.2 + 0.5 * 1.0)
    # raw minimum is the spike at epoch 1; smoothed, a later plateau wins
    assert select_epoch(_curves(losses), SelectionRule("val_loss", "none", 1)).epoch == 1
    assert select_epoch(_curves(losses), SelectionRule("val_loss", "moving_average", 3)).epoch == 5
    dice = select_epoch(_curves(losses, [0.1, 0.3, 0.8, 0.8, 0.2, 0.4]), SelectionRule("val_dice", "none", 1))
    assert (dice.epoch, dice.step, dice.val_dice) == (2, 30, 0.8)  # a tie goes to the earlier epoch
    only = select_epoch(_curves(losses, epochs=[0, 5, 10, 15, 20, 25]), SelectionRule("val_loss", "none", 1), [0, 10])
    assert only.epoch == 10  # among epochs with a checkpoint
    nan = select_epoch(_curves([math.nan, 0.7, 0.6]), SelectionRule("val_loss", "moving_average", 2))
    assert nan.epoch == 2 and nan.score == pytest.approx(0.65)
    with pytest.raises(ValueError, match="no validated epoch"):
        select_epoch(_curves([]), SelectionRule())


def test_paired_test_edge_cases() -> None:
    from scipy.stats import wilcoxon

    one = paired_test({"a": 0.5}, {"a": 0.7, "b": 0.1})
    assert one["n"] == 1 and one["p_value"] is None and "too few" in one["note"]
    zero = paired_test({"a": 0.5, "b": 0.4}, {"a": 0.5, "b": 0.4})
    assert zero["n"] == 2 and zero["p_value"] is None and "zero" in zero["note"] and zero["mean_difference"] == 0
    ref, other = {"a": 0.5, "b": 0.4, "c": 0.9, "d": float("nan")}, {"a": 0.6, "b": 0.1, "c": 0.95, "d": 0.3}
    done = paired_test(ref, other)
    assert done["cases"] == ["a", "b", "c"] and done["p_value"] == pytest.approx(wilcoxon([0.1, -0.3, 0.05]).pvalue)


# ----------------------------------------------------------------------------- shipped studies, errors, Slurm
@pytest.fixture(scope="module")
def lgg_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.synthetic import write_cohort

    root = tmp_path_factory.mktemp("lgg_cohort")
    write_cohort(root / "data", "lgg", 2, (32, 32, 24), seed=0)
    return write_datalist(build_datalist(root / "data", "lgg", folds=2, check="none"), root / "dl.json")


def test_shipped_studies_resolve_against_their_base_configs(cohort: Path, lgg_datalist: Path) -> None:
    from brats_pipeline.losses import LOSSES
    from brats_pipeline.study.runner import check_arm

    shipped = sorted(STUDY_DIR.glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"loss", "lr_batch", "networks", "lgg_loss"}
    for path in shipped:
        study = load_study(path.stem, lgg_datalist if path.stem.startswith("lgg") else cohort)
        assert study.path == path and study.reference in [a.name for a in study.arms]
        for arm in study.arms:
            if study.resolved_overrides(arm).get("model.loss", "dice_ce") not in LOSSES:
                assert arm.name == "loss=ce"  # plain CE: arriving in brats_pipeline/losses.py separately
                continue
            cli = check_arm(study, arm)  # LightningCLI accepts the overrides; trainer, model, data module built
            for key, value in study.resolved_overrides(arm).items():
                section, _, rest = key.partition(".")
                if section == "model" and "." not in rest:
                    assert cli.model.hparams[rest] == value, (path.name, arm.name, key)
                if section == "data" and "." not in rest:
                    assert cli.datamodule.hparams[rest] == value, (path.name, arm.name, key)
    assert [a.name for a in load_study("loss", cohort).arms] == ["loss=ce", "loss=dice", "loss=dice_ce", "loss=dice_focal"]
    assert len(load_study("lr_batch", cohort).arms) == 9
    lgg = load_study("lgg_loss", lgg_datalist)
    assert lgg.base_config.name == "lgg_cpu.yaml" and lgg.common["trainer.max_steps"] <= 1000


@pytest.mark.parametrize(
    ("content", "key", "problem"),
    [
        ({"grid": {"model.loss": ["dice"]}}, "base_config", "missing"),
        ({"base_config": "nope.yaml", "grid": {"model.loss": ["dice"]}}, "base_config", "no such file"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"model.loss": ["dice"]}, "epochs": 3}, "epochs", "unknown key"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"model.loss": "dice"}}, "grid.model.loss", "non-empty list"),
        ({"base_config": "tiny_cpu.yaml"}, "grid/arms", "exactly one"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"data.fold": [0, 1]}}, "grid.data.fold", "set by the study itself"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"model.loss": ["dice"]}, "selection": {"metric": "val_hd95"}},
         "selection.metric", "unknown metric"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"model.loss": ["dice"]}, "selection": {"window": 0}},
         "selection.window", "positive integer"),
        ({"base_config": "tiny_cpu.yaml", "arms": [{"name": "a", "overrides": {}}, {"name": "a", "overrides": {}}]},
         "arms", "used twice"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"model.loss": ["dice"]}, "reference": "x"}, "reference", "no arm 'x'"),
        ({"base_config": "tiny_cpu.yaml", "grid": {"model.loss": ["dice"]}, "folds": [0, 0]}, "folds", "distinct"),
    ],
)
def test_a_bad_study_file_is_named_with_its_key(tmp_path: Path, content: dict, key: str, problem: str,
                                                capsys: pytest.CaptureFixture[str], cohort: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    with pytest.raises(StudyError, match=f"{path}: {key}: .*{problem}"):
        load_study(path, cohort)
    assert study_main(["list", str(path), "--datalist", str(cohort)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("brats-study: error: ") and str(path) in err and key in err


def test_overrides_brats_train_refuses_are_named(tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_study(tmp_path / "s.yaml", cohort)
    assert study_main(["check", str(path), "--set", "trainer.max_epochs=many"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "arm 'loss=dice_ce'" in err and "trainer.max_epochs" in err and "many" in err
    assert study_main(["check", str(path), "--set", "model.network=unet4d"]) == 2
    assert "unknown network 'unet4d'" in capsys.readouterr().err
    assert study_main(["check", str(path), "--set", "model.no_such_option=1"]) == 2
    assert "model.no_such_option" in capsys.readouterr().err
    assert _run(str(path), "-o", str(tmp_path / "out"), "--set", "data.batch_size=many") == 2  # refused before training
    assert "data.batch_size" in capsys.readouterr().err and not (tmp_path / "out" / "arms").exists()
    (tmp_path / "broken.yaml").write_text("base_config: [unclosed", encoding="utf-8")
    assert study_main(["list", str(tmp_path / "broken.yaml"), "--datalist", str(cohort)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert study_main(["list", str(_write_study(tmp_path / "n.yaml", cohort, datalist=None))]) == 2
    assert "no datalist: give --datalist" in capsys.readouterr().err


def test_arm_index_outside_the_study_is_a_usage_error(tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_study(tmp_path / "s.yaml", cohort)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert study_main(["run", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "arm index 2 out of range: the study has 2 arm(s), 0..1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_study_array_script_runs_one_arm_per_task_and_the_report_without_an_array(tmp_path: Path) -> None:
    script = REPO / "docker" / "slurm" / "study_array.sbatch"
    text = script.read_text(encoding="utf-8")
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=SIGUSR1@90" in text
    fake = tmp_path / "bin" / "brats-study"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\n', encoding="utf-8")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STUDY"))}
    env.update(PATH=f"{fake.parent}:{env['PATH']}", STUDY="loss", STUDY_OUT="out", STUDY_DATALIST="dl.json")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={**env, "SLURM_ARRAY_TASK_ID": "3", "SLURM_CPUS_PER_TASK": "8"})
    assert done.returncode == 0, done.stderr
    assert "ARGS run loss -o out --datalist dl.json --device auto --threads 8 --arm-index 3" in done.stdout
    report = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert report.returncode == 0 and "ARGS report loss -o out --datalist dl.json" in report.stdout
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in env.items() if k != "STUDY"})
    assert missing.returncode != 0 and "set STUDY" in missing.stderr
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout
