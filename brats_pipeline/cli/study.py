"""``brats-study``: run the arms of a study file and compare them in one report.

Examples::

    brats-study list loss --datalist brats21.json -o runs/studies/loss        # arms, keys, status
    brats-study check loss --datalist brats21.json                            # every arm through brats-train's parser
    brats-study run loss --datalist brats21.json -o runs/studies/loss         # every arm, then the report
    brats-study run loss --datalist brats21.json -o runs/studies/loss --arm-index 2   # one arm (a Slurm array task)
    brats-study report loss --datalist brats21.json -o runs/studies/loss      # summarise what is finished

``STUDY`` is a study file, or the name of a shipped one (``brats_pipeline/studies/<name>.yaml``).
``run`` runs every arm x fold in this process, one after the other, skipping finished runs, and
then writes the report; ``--arm-index N`` (default: ``$SLURM_ARRAY_TASK_ID`` when set) runs one
arm's folds and no report (``report`` summarises after the array). ``--set KEY=VALUE`` adds a
common override (it changes the arms' keys, e.g. ``--set trainer.max_epochs=2`` for a smoke run).

Outputs (all under ``-o OUT``, default ``runs/studies/<study name>``): the runs
(:mod:`brats_pipeline.study.runner`), ``study.json``, and from ``report``: ``report.html``,
``figures/``, ``summary.json``, ``per_case.csv``, ``summary.csv``, ``paired.csv``, ``selection.csv``
(:mod:`brats_pipeline.study.summary`).

Exit status: 0 when every run asked for is done (``report``: every run of the study), 1 when a
run failed or is not finished (the others still ran; the report is still written), 2 for a bad
study file or bad arguments (the message names the file and the key).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brats-study", description="Train the arms of a study file and compare them.",
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("study", help="study file (YAML) or the name of a shipped one (brats_pipeline/studies/NAME.yaml)")
    common.add_argument("--datalist", help="datalist JSON (replaces the study file's 'datalist')")
    common.add_argument("-o", "--out", help="output folder (default runs/studies/<study name>)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a common override of every arm, e.g. trainer.max_epochs=2 (repeatable; changes the keys)")
    sub.add_parser("list", parents=[common], help="the arms, their keys and the status of their runs")
    check = sub.add_parser("check", parents=[common], help="build every arm's trainer, model and data module (no training)")
    check.add_argument("--accelerator", default="cpu", help="trainer.accelerator for the check (default cpu)")
    run = sub.add_parser("run", parents=[common], help="train, select and evaluate every unfinished run, then report")
    run.add_argument("--arm-index", type=int, default=None,
                     help="run only this arm (0-based; default $SLURM_ARRAY_TASK_ID when set); no report")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="evaluation device")
    run.add_argument("--accelerator", default=None, help="replace the base config's trainer.accelerator (cpu, gpu, auto)")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores this process may use)")
    run.add_argument("--progress", action="store_true", help="progress bars")
    run.add_argument("--embed-images", action="store_true", help="embed the report's figures in report.html")
    report = sub.add_parser("report", parents=[common], help="summarise the finished runs: report.html, JSON, CSV")
    report.add_argument("--embed-images", action="store_true", help="embed the report's figures in report.html")
    return p


def _write_report(study, out: Path, embed: bool) -> int:  # noqa: ANN001
    from brats_pipeline.reports.study import write_study_report
    from brats_pipeline.study.summary import summarise, write_summary

    summary = summarise(study, out)
    paths = write_summary(summary, out)
    html = write_study_report(out, summary, embed=embed)
    print(f"brats-study: report {html} ({paths['json'].name}, {', '.join(p.name for k, p in paths.items() if k != 'json')})")
    for run in summary["incomplete"]:
        print(f"brats-study: not finished: arm {run['arm']!r} fold {run['fold']} ({run['status']})", file=sys.stderr)
    return 1 if summary["incomplete"] else 0


def _list(study, out: Path) -> int:  # noqa: ANN001
    from brats_pipeline.study.runner import run_status

    print(f"{study.name}: {len(study.arms)} arm(s) x fold(s) {study.folds}, seed {study.seed}, "
          f"selection: {study.selection.describe()}; base {study.base_config}")
    print(f"Slurm: sbatch --array=0-{len(study.arms) - 1} docker/slurm/study_array.sbatch")
    for i, arm in enumerate(study.arms):
        status = ", ".join(f"fold {f}: {run_status(out, study, arm, f)}" for f in study.folds)
        overrides = " ".join(f"{k}={v}" for k, v in study.resolved_overrides(arm).items())
        print(f"  [{i}] {arm.name}{' (reference)' if arm.name == study.reference else ''}  key "
              f"{study.arm_key(arm)[:12]}  {status}\n      {overrides}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brats-study``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from brats_pipeline.study.runner import StudyInterrupted, check_arm, run_study
    from brats_pipeline.study.spec import StudyError, load_study, parse_set

    try:
        study = load_study(args.study, args.datalist, parse_set(args.set))
        study.require_datalist()
        out = Path(args.out or Path("runs") / "studies" / study.name).resolve()
        if args.command == "list":
            return _list(study, out)
        if args.command == "check":
            for arm in study.arms:
                check_arm(study, arm, args.accelerator)
                print(f"brats-study: arm {arm.name!r}: brats-train accepts its configuration")
            return 0
        if args.command == "report":
            return _write_report(study, out, args.embed_images)
        index = args.arm_index
        if index is None and os.environ.get("SLURM_ARRAY_TASK_ID"):
            index = int(os.environ["SLURM_ARRAY_TASK_ID"])
        if index is not None:
            study.arm(index)  # an index outside the study: a usage error before anything runs
    except (StudyError, IndexError, KeyError, ValueError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"brats-study: error: {message}", file=sys.stderr)
        return 2
    import torch

    from brats_pipeline.devices import cores_available

    torch.set_num_threads(max(1, args.threads or cores_available()))
    try:
        outcomes = run_study(study, out, None if index is None else [index], args.device, args.accelerator, args.progress)
    except StudyInterrupted as exc:
        print(f"brats-study: {exc}", file=sys.stderr)
        return 0
    except StudyError as exc:  # an override brats-train refuses (checked before anything trains)
        print(f"brats-study: error: {exc}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"brats-study: FAILED arm {o.arm!r} fold {o.fold}: {o.detail}", file=sys.stderr)
    status = 1 if failed else 0
    if index is None:
        status = max(status, _write_report(study, out, args.embed_images))
    return status


if __name__ == "__main__":
    sys.exit(main())
