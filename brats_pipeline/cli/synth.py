"""``brats-synth``: write a synthetic BraTS-like cohort in a task's real folder layout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brats_pipeline.constants import TASK_ALIASES, TASKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brats-synth",
        allow_abbrev=False,
        description="Write synthetic head phantoms with nested tumours (necrosis / enhancing rim / oedema), "
        "every modality with its contrast, bias field and Rician noise, in the task's real file layout.",
    )
    parser.add_argument("out", help="dataset folder to write")
    parser.add_argument("--cases", type=int, default=8, help="labelled cases (default 8)")
    parser.add_argument("--unlabelled", type=int, default=0, help="extra cases without segmentation (default 0)")
    parser.add_argument("--task", default="brats2021", choices=sorted([*TASKS, *TASK_ALIASES]), help="default brats2021")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 64), metavar=("X", "Y", "Z"), help="voxels (default 96 96 64)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("SX", "SY", "SZ"), help="mm (default 1 1 1)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--skull-strip", action="store_true", help="zero everything outside the brain, as BraTS ships data")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from brats_pipeline.data.synthetic import write_cohort

    try:
        written = write_cohort(
            args.out, task=args.task, n_cases=args.cases, shape=args.shape, seed=args.seed,
            n_unlabelled=args.unlabelled, spacing=args.spacing, skull_stripped=args.skull_strip,
            progress=sys.stderr.isatty(),
        )
    except ValueError as err:
        print(f"brats-synth: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: wrote {len(written)} {args.task} case(s) ({args.cases} labelled, {args.unlabelled} unlabelled)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
