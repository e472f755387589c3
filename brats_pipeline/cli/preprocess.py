"""``brats-preprocess``: the ITK stage (:mod:`preprocessing`) over a cohort or one explicitly named case.

The task-aware glue around the task-free ``preprocessing`` package: a task name becomes the
modality names, label values and file naming of a :class:`~preprocessing.config.PreprocessConfig`
(:func:`config_for_task`), a dataset folder in the task's layout or a datalist becomes
:class:`~preprocessing.case.Case` objects (:func:`cases_from_input`), and
:func:`preprocessing.batch.run_batch` does the rest.

Batch form (a datalist JSON, or a dataset folder in the task's layout)::

    brats-preprocess -i DATALIST_OR_DIR -o OUT --task brats2021 [--workers 4] [--shard 0/8]

Single-case form (any file names; ``--task`` checks the modality names)::

    brats-preprocess --case-id ID --case t1=PATH t1c=PATH t2=PATH flair=PATH -o OUT [--reference t1c]

Exit status: 0 when every case finished (now or before), 1 when any case failed (see
``OUT/manifest.csv``), 2 for a usage error (bad option, unreadable datalist, modality names
that do not match the task, a case id that is not a safe file name or appears twice
(:mod:`preprocessing.identity`), an output folder that cannot be written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brats_pipeline.constants import Task, get_task
from preprocessing.batch import CaseStatus, run_batch
from preprocessing.case import Case, case_from_entry
from preprocessing.config import PreprocessConfig
from preprocessing.n4 import N4Config
from preprocessing.outputs import prepare_output_folder
from preprocessing.register import RegistrationConfig
from preprocessing.sharding import parse_shard


class UsageError(ValueError):
    """A problem with the command line or the input description (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brats-preprocess",
        allow_abbrev=False,
        description="ITK preprocessing: N4 bias correction, reorientation, rigid alignment to a reference "
        "modality, resampling, cropping and z-score normalisation; batch, parallel and resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = parser.add_argument_group("input (one of)")
    src.add_argument("-i", "--input", type=Path, help="datalist JSON or dataset folder in the task's layout")
    src.add_argument("--case-id", help="single-case form: the case's id (used for output names)")
    src.add_argument(
        "--case", nargs="+", metavar="NAME=PATH", help="single-case form: modality files (or DICOM folders)"
    )
    src.add_argument("--label", type=Path, help="single-case form: label map on the reference modality's grid")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--task", help="task (brats2021, brats2023, msd_task01, lgg); default: the datalist's")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds when -i is a dataset folder")

    steps = parser.add_argument_group("steps")
    steps.add_argument("--reference", default="t1c", help="modality defining the output grid; others are registered to it")
    steps.add_argument("--orientation", default="RAS", choices=("RAS", "LPS", "keep"), help="output orientation")
    steps.add_argument("--spacing", nargs=3, type=float, default=(1.0, 1.0, 1.0), metavar=("X", "Y", "Z"), help="output spacing (mm)")
    steps.add_argument("--resample", action=argparse.BooleanOptionalAction, default=True, help="resample to --spacing (off: keep the reference grid)")
    steps.add_argument("--n4", action=argparse.BooleanOptionalAction, default=True, help="N4 bias-field correction")
    steps.add_argument("--register", action=argparse.BooleanOptionalAction, default=True, help="register modalities to the reference")
    steps.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True, help="crop to the foreground and z-score")
    steps.add_argument("--transform", default="rigid", choices=("rigid", "affine"), help="registration transform")
    steps.add_argument("--mask", default="auto", choices=("auto", "otsu", "nonzero"), help="foreground mask method")
    steps.add_argument("--crop-margin", type=int, default=5, help="voxels kept around the foreground; -1: no crop")
    steps.add_argument("--clip-percentiles", nargs=2, type=float, metavar=("LOW", "HIGH"), help="clip intensities in the mask before z-scoring")
    steps.add_argument("--n4-shrink", type=int, default=N4Config.shrink_factor, help="N4 shrink factor")
    steps.add_argument("--n4-iterations", type=int, nargs="+", default=list(N4Config.iterations), help="N4 iterations per level")
    steps.add_argument("--n4-control-points", type=int, default=N4Config.control_points, help="N4 control points per axis")

    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=1, help="cases processed in parallel (processes)")
    run.add_argument("--threads", type=int, help="ITK threads per worker (default: cores / workers)")
    run.add_argument("--shard", help="process only shard I of N (0-based, e.g. $SLURM_ARRAY_TASK_ID/8)")
    run.add_argument("--overwrite", action="store_true", help="redo cases that already finished")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_for_task(task: str | Task | None, **settings: Any) -> PreprocessConfig:
    """A :class:`PreprocessConfig` with ``task``'s modality names (channel order), label values and file naming.

    Args:
        task: task name (``brats2021`` ...); ``None``: any modality names, labels unchecked,
            ``<case>_<modality>.nii.gz`` names.
        settings: the other :class:`PreprocessConfig` fields (``reference``, ``spacing`` ...).

    Raises:
        ValueError: an unknown task name (listing the known ones), or bad settings.
    """
    if task is None:
        return PreprocessConfig(**settings)
    t = get_task(task)
    return PreprocessConfig(
        modalities=t.modality_names,
        label_values=t.label_values,
        separator=t.separator,
        label_suffix=t.label_suffixes[0],
        **settings,
    )


def config_from_args(args: argparse.Namespace, task: str | None) -> PreprocessConfig:
    """The :class:`PreprocessConfig` an argument namespace asks for."""
    return config_for_task(
        task,
        reference=args.reference,
        orientation=None if args.orientation == "keep" else args.orientation,
        spacing=tuple(args.spacing) if args.resample else None,
        n4=args.n4,
        n4_config=N4Config(
            shrink_factor=args.n4_shrink, iterations=tuple(args.n4_iterations), control_points=args.n4_control_points
        ),
        register=args.register,
        registration=RegistrationConfig(transform=args.transform),
        normalize=args.normalize,
        mask_method=args.mask,
        crop_margin=None if args.crop_margin < 0 else args.crop_margin,
        clip_percentiles=None if args.clip_percentiles is None else tuple(args.clip_percentiles),
    )


def parse_case_spec(case_id: str, items: Sequence[str], label: Path | None) -> Case:
    """``["t1=a.nii.gz", "t1c=b.nii.gz"]`` -> :class:`Case` (paths made absolute)."""
    images: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--case expects NAME=PATH items, got {item!r}")
        if name in images:
            raise UsageError(f"--case names modality {name!r} twice")
        images[name] = str(Path(path).expanduser().resolve())
    return Case(case_id, images, None if label is None else str(label.expanduser().resolve()))


def cases_from_input(
    path: Path, task: str | None, folds: int = 5
) -> tuple[str, list[Case], list[CaseStatus], dict[str, Any], list[dict]]:
    """Read a datalist JSON or scan a dataset folder.

    Args:
        path: datalist JSON or dataset folder.
        task: task name; required for a folder, checked against a datalist's own.
        folds: cross-validation folds assigned to a folder's labelled cases (at most one per patient).

    Returns:
        ``(task, cases, bad_inputs, datalist_header, skipped_inputs)``.

    Raises:
        UsageError: missing input, no task, or a datalist whose modalities differ from the task's.
    """
    from brats_pipeline.data.datalist import build_datalist, load_datalist
    from brats_pipeline.data.discovery import discover_cases

    bad: list[CaseStatus] = []
    skipped: list[dict] = []
    if path.is_dir():
        if task is None:
            raise UsageError(f"{path}: a dataset folder needs --task to know its layout")
        try:
            found = discover_cases(path, task)
            patients = {get_task(task).patient_id(c.case_id) for c in found if c.ok and c.label}
            folds = max(1, min(folds, len(patients)))
            datalist = build_datalist(path, task, folds=folds, check="none")  # files are checked per case, in the pipeline
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from exc
        bad = [
            CaseStatus(s["case_id"], "failed", 0.0, f"{s.get('file') or path}: {s.get('reason')}")
            for s in datalist.get("skipped", [])
        ]
    elif path.is_file():
        try:
            datalist = load_datalist(path)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from exc
        if task is not None and get_task(task).name != get_task(datalist["task"]).name:
            raise UsageError(f"{path}: datalist is for task {datalist['task']!r}, but --task is {task!r}")
        task = datalist["task"]
        skipped = list(datalist.get("skipped", []))
    else:
        raise UsageError(f"{path}: no such datalist file or dataset folder")
    task_obj = get_task(task)
    modalities = [datalist["modality"][k] for k in sorted(datalist.get("modality", {}), key=int)]
    if modalities and modalities != list(task_obj.modality_names):
        raise UsageError(
            f"{path}: datalist modalities {modalities} do not match task {task_obj.name!r} modalities "
            f"{list(task_obj.modality_names)}"
        )
    cases: list[Case] = []
    for key in ("training", "testing"):
        for entry in datalist.get(key, []):
            try:
                cases.append(case_from_entry(entry, task_obj.modality_names))
            except ValueError as exc:
                bad.append(CaseStatus(str(entry.get("case_id", "?")), "failed", 0.0, str(exc)))
    header = {k: v for k, v in datalist.items() if k not in ("training", "testing", "skipped")}
    return task_obj.name, cases, bad, header, skipped


def _single_case_header(case: Case, task: str | None) -> dict[str, Any]:
    if task is not None:
        t = get_task(task)
        return {
            "name": case.case_id,
            "description": t.description,
            "task": t.name,
            "modality": {str(i): name for i, name in enumerate(t.modality_names)},
            "labels": {"0": "background", **{str(k): v for k, v in t.labels.items()}},
            "regions": {r.name: sorted(r.labels) for r in t.regions},
        }
    return {"name": case.case_id, "task": None, "modality": {str(i): name for i, name in enumerate(case.images)}}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brats-preprocess``; returns the exit status (module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        single = args.case_id is not None or args.case is not None
        if single == (args.input is not None):
            raise UsageError("give either -i DATALIST_OR_DIR, or --case-id ID --case NAME=PATH ...")
        if args.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {args.workers}")
        shard = None if args.shard is None else parse_shard(args.shard)
        bad: list[CaseStatus] = []
        skipped: list[dict] = []
        if single:
            if not args.case_id or not args.case:
                raise UsageError("the single-case form needs both --case-id and --case NAME=PATH ...")
            task = args.task
            cases = [parse_case_spec(args.case_id, args.case, args.label)]
            header = _single_case_header(cases[0], task)
        else:
            if args.label is not None:
                raise UsageError("--label belongs to the single-case form; a datalist names its labels")
            task, cases, bad, header, skipped = cases_from_input(args.input, args.task, args.folds)
        names = None if task is None else list(get_task(task).modality_names)
        if names is not None and args.reference not in names:
            raise UsageError(f"--reference {args.reference!r} is not a modality of task {task!r} {names}")
        config = config_from_args(args, task)
        for case in cases if single else []:
            case.validate(config.modalities, config.reference)  # the explicit case: wrong names are a usage error
        prepare_output_folder(args.output, depth=1)  # an existing file, under a file, not writable: OutputFolderError
    except ValueError as exc:  # UsageError, bad settings, unsafe or repeated case ids, an unusable -o alike
        parser.print_usage(sys.stderr)
        print(f"brats-preprocess: error: {exc}", file=sys.stderr)
        return 2

    try:
        result = run_batch(
            cases,
            config,
            args.output,
            workers=args.workers,
            threads=args.threads,
            shard=shard,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            bad_inputs=bad,
            datalist_header=header,
            skipped_inputs=skipped,
        )
    except OSError as exc:  # the manifest or datalist could not be written (a full disk): the message names the file
        print(f"brats-preprocess: error: {exc}", file=sys.stderr)
        return 1
    counts = {s: sum(r.status == s for r in result.statuses) for s in ("ok", "skipped", "failed")}
    print(
        f"brats-preprocess: {counts['ok']} done, {counts['skipped']} already finished, {counts['failed']} failed; "
        f"manifest {result.manifest_csv}" + (f", datalist {result.datalist}" if result.datalist else ""),
        file=sys.stderr,
    )
    return 1 if result.n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
