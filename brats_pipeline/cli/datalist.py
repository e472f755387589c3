"""``brats-datalist``: scan a dataset folder, check every case, write a MONAI datalist with folds."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from brats_pipeline.constants import TASK_ALIASES, TASKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brats-datalist",
        allow_abbrev=False,  # --fold must not mean --folds
        description="Scan ROOT laid out as the task's source ships it (BraTS 2020/2021/2023 case folders, "
        "MSD Task01 imagesTr/labelsTr + dataset.json, TCGA LGG), check every case and write a MONAI "
        "decathlon-style datalist with patient-level cross-validation folds.",
    )
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--task", required=True, choices=sorted([*TASKS, *TASK_ALIASES]), help="label scheme and layout")
    parser.add_argument("-o", "--output", required=True, help="datalist JSON to write")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="fold seed (default 0)")
    parser.add_argument("--strict", action="store_true", help="fail if any case is unusable (default: skip and list it)")
    parser.add_argument(
        "--check",
        choices=("none", "header", "full"),
        default="full",
        help="how deeply to check files: full (default) also reads every voxel (truncation, NaN, constant, label values)",
    )
    parser.add_argument("--workers", type=int, default=2, help="threads reading files (default 2)")
    parser.add_argument("--relative", action="store_true", help="write paths relative to the datalist's folder")
    parser.add_argument("--modalities", nargs="+", metavar="NAME",
                        help="only these of the task's modalities (e.g. t2 t1c flair): cases need only these files, "
                             "and training on the datalist reads only them (default: all the task's)")
    overlap = parser.add_argument_group(
        "external cohort", "leave out every case that is also in a training cohort (e.g. the BraTS 2020 cases inside "
        "BraTS 2021): by the official name-mapping CSV when given, otherwise by image content")
    overlap.add_argument("--exclude-overlap", action="append", metavar="COHORT", default=[],
                         help="training cohort: its datalist JSON or dataset folder (in --task's layout); repeatable")
    overlap.add_argument("--name-mapping", metavar="CSV",
                         help="mapping of case ids between releases (BraTS21-17_Mapping.csv, name_mapping.csv)")
    overlap.add_argument("--mapping-columns", nargs=2, metavar=("TRAIN", "TEST"),
                         help="the CSV's columns of the training and the test cohort's ids (default: the columns "
                              "holding most of each cohort's ids)")
    overlap.add_argument("--content-match", choices=("any", "all"), default="any",
                         help="without a CSV, a case is the training case whose images equal any (default) or all of its images")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.name_mapping or args.mapping_columns) and not args.exclude_overlap:
        parser.error("--name-mapping and --mapping-columns need --exclude-overlap COHORT (the training cohort)")
    if args.mapping_columns and not args.name_mapping:
        parser.error("--mapping-columns needs --name-mapping CSV")
    from brats_pipeline.data.datalist import DatasetError, build_datalist, write_datalist

    try:
        from brats_pipeline.data.modalities import select_modalities

        task = select_modalities(args.task, args.modalities, "--modalities")
        datalist = build_datalist(
            args.root, task, folds=args.folds, seed=args.seed, strict=args.strict,
            check=args.check, workers=args.workers, progress=sys.stderr.isatty(),
        )
        overlap = None
        if args.exclude_overlap:
            from brats_pipeline.data.overlap.removal import remove_overlap

            datalist, overlap = remove_overlap(
                datalist, args.exclude_overlap, args.name_mapping, args.mapping_columns, args.content_match,
                workers=args.workers, progress=sys.stderr.isatty(),
            )
    except (DatasetError, ValueError, FileNotFoundError) as err:
        print(f"brats-datalist: error: {err}", file=sys.stderr)
        return 1
    path = write_datalist(datalist, args.output, relative=args.relative)
    sizes = Counter(e["fold"] for e in datalist["training"])
    patients = len({e["patient_id"] for e in datalist["training"]})
    print(
        f"{path}: {datalist['numTraining']} labelled case(s) from {patients} patient(s), "
        f"{datalist['numTest']} unlabelled, {len(datalist['skipped'])} skipped"
    )
    if sizes:
        print("folds: " + ", ".join(f"{f}: {sizes[f]}" for f in sorted(sizes)))
    for skipped in datalist["skipped"]:
        print(f"skipped {skipped['case_id']}: {skipped['file']}: {skipped['reason']}")
    if overlap is not None:
        print(overlap.describe())
        for match in overlap.matches:
            print(f"removed {match.case_id}: also {match.training_case} of {match.cohort} ({match.evidence})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
