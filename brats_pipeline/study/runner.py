"""Run a study's arms: train each arm on each fold, choose an epoch, evaluate it; resumable, one arm per job if wanted.

Layout under the output folder ``OUT`` (everything the study writes is under it; every file is
written atomically)::

    OUT/study.json                              the resolved study: arms, overrides, keys, folders
    OUT/arms/<arm>-<key[:12]>/fold_<k>/         one run (arm x fold)
        logs/version_0/metrics.csv              the CSV log (ResumableCSVLogger), config.yaml, hparams.yaml
        logs/version_0/checkpoints/last.ckpt    every epoch (for resuming a killed run)
        checkpoints/epoch<EEE>.ckpt             one checkpoint per validation
        trained.json                            marker: training finished (written last)
        predictions/epoch<EEE>/                 the selected checkpoint's labels of the fold's validation cases
        evaluation/epoch<EEE>/                  metrics.csv, summary.json, summary.md (brats_pipeline.evaluation)
        done.json                               marker: selection + evaluation finished (written last)
        failed.json                             the last error, if the run failed (removed when it succeeds)

**Resume.** A run whose ``done.json`` carries the arm's key and the study's selection rule is
skipped. One with ``trained.json`` (same key) is not trained again: only the selection and the
evaluation are redone (e.g. after the rule changed). A run without it was killed while training:
it resumes from its newest readable ``last.ckpt`` or Slurm HPC checkpoint (``hpc_ckpt_*.ckpt``,
:class:`~brats_pipeline.callbacks.SlurmRequeue`), else it starts again from nothing. An arm whose
key changed (an edited override, base config, datalist or seed) has another folder: nothing of the
old one is reused.

**Training** is ``brats-train``'s own CLI, built in-process (:func:`brats_pipeline.training_cli.build_cli`
with ``run=False``, then ``trainer.fit``): ``--config BASE``, the arm's overrides, then the
study's ``data.datalist``, ``data.fold``, ``seed_everything``, output folders, a
``ResumableCSVLogger`` and ``--checkpoint.save_top_k -1`` (a checkpoint at every validation).
One device per run (a multi-device config is refused): arms run in parallel as separate jobs.

**Evaluation** of the selected checkpoint on the fold's validation cases (those the data module
validated on) is the project's: :meth:`Predictor.from_checkpoint`, :func:`~brats_pipeline.inference.run_batch`,
:func:`~brats_pipeline.evaluation.evaluate_folder` and :func:`~brats_pipeline.evaluation.write_evaluation`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import time
import traceback
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brats_pipeline.study.selection import Selection, read_curves, select_epoch
from brats_pipeline.study.spec import Arm, Study, StudyError

#: Statuses of a run (arm x fold).
STATUSES = ("done", "trained", "partial", "failed", "todo")
_CHECKPOINT = re.compile(r"^epoch(\d+)\.ckpt$")


class StudyInterrupted(RuntimeError):
    """Training stopped for a Slurm requeue (an HPC checkpoint was saved): the requeued job resumes the run."""


def safe_name(name: str) -> str:
    """``name`` as a folder name: characters other than letters, digits and ``._=+-`` become ``_`` (at most 60)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._")[:60] or "arm"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run (arm x fold) under ``root`` (see the module docstring)."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs" / "version_0"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def trained(self) -> Path:
        return self.root / "trained.json"

    @property
    def done(self) -> Path:
        return self.root / "done.json"

    @property
    def failed(self) -> Path:
        return self.root / "failed.json"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch{epoch:03d}.ckpt"

    def predictions(self, epoch: int) -> Path:
        return self.root / "predictions" / f"epoch{epoch:03d}"

    def evaluation(self, epoch: int) -> Path:
        return self.root / "evaluation" / f"epoch{epoch:03d}"

    def checkpoint_epochs(self) -> list[int]:
        """Epochs with a checkpoint in ``checkpoints/``, ascending."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.checkpoints.iterdir() if (m := _CHECKPOINT.match(p.name)))


def arm_folder(out: str | Path, study: Study, arm: Arm) -> Path:
    """``OUT/arms/<arm name as a folder name>-<first 12 hex digits of the arm's key>``."""
    return Path(out) / "arms" / f"{safe_name(arm.name)}-{study.arm_key(arm)[:12]}"


def run_paths(out: str | Path, study: Study, arm: Arm, fold: int) -> RunPaths:
    """The :class:`RunPaths` of ``arm`` on ``fold``."""
    return RunPaths(arm_folder(out, study, arm) / f"fold_{fold}")


def read_marker(path: Path) -> dict[str, Any] | None:
    """A JSON marker, or ``None`` when absent or unreadable (a marker is written atomically, so that is rare)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_status(out: str | Path, study: Study, arm: Arm, fold: int) -> str:
    """``done`` (selected and evaluated under this rule), ``trained``, ``partial`` (training was cut),
    ``failed`` (the last attempt raised) or ``todo``."""
    paths, key = run_paths(out, study, arm, fold), study.arm_key(arm)
    done = read_marker(paths.done)
    if done and done.get("key") == key and done.get("selection_rule") == study.selection.as_dict():
        return "done"
    if paths.failed.is_file():
        return "failed"
    trained = read_marker(paths.trained)
    if trained and trained.get("key") == key:
        return "trained"
    return "partial" if paths.root.is_dir() else "todo"


def readable_checkpoint(path: Path) -> bool:
    """A checkpoint file that is a complete zip (``torch.save``'s format): not one cut short by a kill."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resume_checkpoint(paths: RunPaths) -> Path | None:
    """The newest readable ``hpc_ckpt_*.ckpt`` or ``last.ckpt`` of a cut run, or ``None``."""
    found = [*paths.root.glob("hpc_ckpt_*.ckpt"), *(paths.logs / "checkpoints").glob("last.ckpt")]
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if readable_checkpoint(path):
            return path
    return None


def train_argv(study: Study, arm: Arm, fold: int, paths: RunPaths, accelerator: str | None = None,
               progress: bool = False) -> list[str]:
    """``brats-train`` arguments (no subcommand) of one run: base config, the arm's overrides, the study's settings."""
    logger = [{"class_path": "brats_pipeline.callbacks.ResumableCSVLogger",
               "init_args": {"save_dir": str(paths.root), "name": "logs", "version": 0}}]
    return [
        "--config", str(study.base_config),
        "--trainer.enable_progress_bar", "true" if progress else "false",
        *study.train_overrides_argv(arm),
        *(["--trainer.accelerator", accelerator] if accelerator else []),
        "--data.datalist", str(study.require_datalist()), "--data.fold", str(fold),
        "--seed_everything", str(study.seed),
        "--trainer.default_root_dir", str(paths.root), "--trainer.logger", json.dumps(logger),
        "--checkpoint.dirpath", str(paths.checkpoints), "--checkpoint.filename", "epoch{epoch:03d}",
        "--checkpoint.auto_insert_metric_name", "false", "--checkpoint.save_top_k", "-1",
        "--checkpoint.save_on_train_epoch_end", "false", "--checkpoint.enable_version_counter", "false",
    ]


@contextlib.contextmanager
def _program_name_only() -> Any:
    """``sys.argv`` cut to the program name for the block (restored after)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def build_arm_cli(study: Study, arm: Arm, argv: Sequence[str]) -> Any:
    """``brats-train``'s CLI for ``argv``, not run; a refused option is a :class:`StudyError` naming the study and the arm."""
    from brats_pipeline.training_cli import build_cli

    captured = io.StringIO()
    try:  # sys.argv is brats-study's, not these arguments: LightningCLI would warn that both are given
        with contextlib.redirect_stderr(captured), _program_name_only():
            cli = build_cli(argv, run=False)
    except SystemExit:
        lines = captured.getvalue().strip().splitlines()
        first = next((i for i, line in enumerate(lines) if "error:" in line), max(0, len(lines) - 3))
        problem = " ".join(line.strip() for line in lines[first:]).split("error: ", 1)[-1]
        raise StudyError(f"{study.path}: arm {arm.name!r}: brats-train refused the arm's configuration: "
                         f"{problem[:800]}") from None
    except (ValueError, TypeError) as exc:  # a value the model or data module refuses (unknown loss, network ...)
        sys.stderr.write(captured.getvalue())
        raise StudyError(f"{study.path}: arm {arm.name!r}: {exc}") from exc
    sys.stderr.write(captured.getvalue())
    if cli.trainer.world_size > 1:
        raise StudyError(f"{study.path}: arm {arm.name!r}: a study trains each run in this process on one device "
                         f"(trainer.devices x num_nodes = {cli.trainer.world_size}); set trainer.devices: 1 and spread "
                         "the arms over jobs (--arm-index) instead")
    return cli


def check_arm(study: Study, arm: Arm, accelerator: str | None = "cpu") -> Any:
    """Build the arm's trainer, model and data module for its first fold without training (a config check).

    Raises:
        StudyError: LightningCLI refuses an override; the message names the study and the arm.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="brats-study-check-") as tmp:
        paths = RunPaths(Path(tmp) / "run")
        return build_arm_cli(study, arm, train_argv(study, arm, study.folds[0], paths, accelerator))


def train_run(study: Study, arm: Arm, fold: int, paths: RunPaths, accelerator: str | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Train one run (resuming a cut one); writes ``trained.json`` last and returns its content.

    Raises:
        StudyError: the arm's configuration is refused.
        StudyInterrupted: training stopped for a Slurm requeue.
        RuntimeError: training did not finish, or no validation (so no checkpoint) ran.
    """
    from pytorch_lightning.trainer.states import TrainerStatus

    from preprocessing.outputs import write_json

    resume = resume_checkpoint(paths) if paths.root.is_dir() else None
    if resume is None and paths.root.is_dir():
        shutil.rmtree(paths.root)  # cut before its first checkpoint: start again from nothing
    paths.root.mkdir(parents=True, exist_ok=True)
    argv = train_argv(study, arm, fold, paths, accelerator, progress)
    cli = build_arm_cli(study, arm, argv)
    validation = cli.datamodule.split()[1]
    started = time.time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(resume) if resume else None)
    if any(p.stat().st_mtime >= started for p in paths.root.glob("hpc_ckpt_*.ckpt")):
        raise StudyInterrupted(f"{paths.root}: training stopped for a Slurm requeue; the requeued job resumes it")
    if cli.trainer.state.status != TrainerStatus.FINISHED:
        raise RuntimeError(f"{paths.root}: training did not finish ({cli.trainer.state.status})")
    epochs = paths.checkpoint_epochs()
    if not epochs:
        raise RuntimeError(f"{paths.root}: no validation ran, so there is no epoch to choose: the study needs "
                           "validation (trainer.check_val_every_n_epoch, trainer.limit_val_batches)")
    info = {"key": study.arm_key(arm), "arm": arm.name, "fold": fold, "overrides": study.resolved_overrides(arm),
            "argv": argv, "resumed_from": str(resume) if resume else None, "epochs_checkpointed": epochs,
            "global_step": int(cli.trainer.global_step), "train_seconds": round(time.time() - started, 2),
            "task": cli.datamodule.task_name, "validation": validation}
    write_json(info, paths.trained)
    return info


def evaluate_run(paths: RunPaths, trained: dict[str, Any], selection: Selection, device: str = "auto",
                 progress: bool = False) -> dict[str, Any]:
    """Predict the fold's validation cases with the selected checkpoint and score them; returns the evaluation's summary.

    Writes ``predictions/epoch<E>/`` (:func:`~brats_pipeline.inference.run_batch`, which skips
    cases already predicted by this checkpoint) and ``evaluation/epoch<E>/`` (metrics.csv,
    summary.json with ``per_case``, summary.md).
    """
    from brats_pipeline.evaluation import evaluate_folder, write_evaluation
    from brats_pipeline.inference import Predictor, run_batch

    checkpoint = paths.checkpoint(selection.epoch)
    entries = trained["validation"]
    with Predictor.from_checkpoint(checkpoint, device=None if device == "auto" else device) as predictor:
        run_batch(predictor, entries, paths.predictions(selection.epoch), progress=progress, loader_threads=1,
                  writer_threads=1)
        task = predictor.task
    result = evaluate_folder(paths.predictions(selection.epoch), entries, task)
    files = write_evaluation(result, paths.evaluation(selection.epoch))
    return {"summary_json": str(files["json"]), "n_cases": len(result.per_case), "missing": result.missing,
            "failed": result.failed, "ok": result.ok}


@dataclass
class RunOutcome:
    """What :func:`run_one` did to a run: ``skipped`` (already done), ``done`` or ``failed`` (with the error)."""

    arm: str
    fold: int
    status: str
    detail: str = ""


def run_one(study: Study, arm: Arm, fold: int, out: str | Path, device: str = "auto", accelerator: str | None = None,
            progress: bool = False, log: Callable[[str], None] = print) -> RunOutcome:
    """Train (unless trained), select and evaluate (unless done) one run; errors are recorded in ``failed.json``.

    Raises:
        StudyInterrupted: training stopped for a Slurm requeue (nothing more should run in this job).
    """
    from preprocessing.outputs import write_json

    paths, key = run_paths(out, study, arm, fold), study.arm_key(arm)
    where = f"arm {arm.name!r} fold {fold}"
    if run_status(out, study, arm, fold) == "done":
        log(f"brats-study: {where}: done, skipped ({paths.root})")
        return RunOutcome(arm.name, fold, "skipped")
    try:
        trained = read_marker(paths.trained)
        if not trained or trained.get("key") != key:
            log(f"brats-study: {where}: training ({paths.root})")
            trained = train_run(study, arm, fold, paths, accelerator, progress)
            log(f"brats-study: {where}: trained in {trained['train_seconds']:.1f} s, checkpoints of epochs "
                f"{trained['epochs_checkpointed']}")
        selection = select_epoch(read_curves(paths.metrics), study.selection, paths.checkpoint_epochs())
        evaluation = evaluate_run(paths, trained, selection, device, progress)
        if not evaluation["ok"]:
            raise RuntimeError(f"evaluation of epoch {selection.epoch}: missing {evaluation['missing']}, "
                               f"failed {evaluation['failed']}")
        paths.failed.unlink(missing_ok=True)
        write_json({"key": key, "arm": arm.name, "fold": fold, "selection_rule": study.selection.as_dict(),
                    "selection": {**selection.as_dict(), "checkpoint": str(paths.checkpoint(selection.epoch))},
                    "evaluation": evaluation}, paths.done)
        log(f"brats-study: {where}: epoch {selection.epoch} selected ({study.selection.describe()}: "
            f"{selection.score:.4f}), {evaluation['n_cases']} case(s) evaluated")
        return RunOutcome(arm.name, fold, "done")
    except StudyInterrupted:
        raise
    except Exception as exc:  # one failed run must not stop the others
        detail = f"{type(exc).__name__}: {exc}"
        paths.root.mkdir(parents=True, exist_ok=True)
        write_json({"key": key, "arm": arm.name, "fold": fold, "error": detail,
                    "traceback": traceback.format_exc(limit=6)}, paths.failed)
        log(f"brats-study: {where}: FAILED: {detail}")
        return RunOutcome(arm.name, fold, "failed", detail)


def write_study_json(study: Study, out: str | Path) -> Path:
    """``OUT/study.json``: the resolved study (base config, datalist, folds, seed, rule, arms with overrides, keys, folders)."""
    from preprocessing.outputs import write_json

    return write_json({
        "study": str(study.path), "name": study.name, "description": study.description,
        "base_config": str(study.base_config), "datalist": str(study.require_datalist()), "folds": study.folds,
        "seed": study.seed, "selection_rule": study.selection.as_dict(), "reference": study.reference,
        "arms": [{"index": i, "name": a.name, "overrides": study.resolved_overrides(a), "key": study.arm_key(a),
                  "folder": str(arm_folder(out, study, a))} for i, a in enumerate(study.arms)],
    }, Path(out) / "study.json")


def run_study(study: Study, out: str | Path, arm_indices: Sequence[int] | None = None, device: str = "auto",
              accelerator: str | None = None, progress: bool = False, log: Callable[[str], None] = print,
              check: bool = True) -> list[RunOutcome]:
    """Run the study's arms (all, or those of ``arm_indices``) on every fold, one after the other, in this process.

    Every arm x fold uses the study's folds and seed; finished runs are skipped (module docstring).
    A failed run is recorded and the others go on. Before anything trains, every arm to run is
    checked (:func:`check_arm`, a fraction of a second each), so that an override ``brats-train``
    refuses is a :class:`StudyError` up front, not a failed run hours later.

    Args:
        study: the study (with a datalist).
        out: the output folder.
        arm_indices: 0-based arms to run (a Slurm array task runs one); default all.
        device: evaluation device: ``auto``, ``cpu``, ``cuda``.
        accelerator: replaces the base config's ``trainer.accelerator`` (``cpu``, ``gpu``, ``auto``).
        progress: progress bars.
        log: where progress lines go.
        check: check the arms first (see above).

    Returns:
        One :class:`RunOutcome` per run, in order.

    Raises:
        StudyError: no datalist, or an arm's override refused by ``brats-train``.
        IndexError: an arm index outside the study.
        StudyInterrupted: a Slurm requeue stopped training.
    """
    from preprocessing.outputs import prepare_output_folder

    study.require_datalist()
    arms = [study.arm(int(i)) for i in arm_indices] if arm_indices is not None else list(study.arms)
    for arm in arms if check else []:
        if any(run_status(out, study, arm, fold) != "done" for fold in study.folds):
            check_arm(study, arm)
    prepare_output_folder(out)
    write_study_json(study, out)
    return [run_one(study, arm, fold, out, device, accelerator, progress, log) for arm in arms for fold in study.folds]
