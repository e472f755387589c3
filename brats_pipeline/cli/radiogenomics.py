"""``brats-radiogenomics``: tumour shape features from label maps, tested against genomic subtypes.

Examples::

    brats-radiogenomics --labels ../shared/data/lgg --clinical ../shared/data/lgg/clinical.csv -o rg_truth
    brats-radiogenomics --labels preds --from pred --clinical clinical.csv -o rg_pred --truth lgg.json

``--labels`` is a datalist, a dataset folder (``--task`` layout, default lgg) or a folder of
``<case_id>.nii.gz`` label maps (``brats-infer`` output). With ``--truth`` the features of
``--labels`` are also compared with those of the manual masks (correlation, Bland-Altman).
Writes into ``-o`` only (see :mod:`brats_pipeline.radiogenomics.analysis`) and prints the
summary. Exit status 0, 1 when some masks could not be measured (the rest are analysed),
2 for bad arguments or inputs (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "brats-radiogenomics"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated label values, got {text!r}") from None


def _split(text: str) -> str | float:
    if text in ("median", "mean"):
        return text
    try:
        q = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'median', 'mean' or a quantile in (0, 1), got {text!r}") from None
    if not 0 < q < 1:
        raise argparse.ArgumentTypeError(f"quantile must be in (0, 1), got {text!r}")
    return q


def build_parser() -> argparse.ArgumentParser:
    from brats_pipeline.radiogenomics.features import FEATURES

    p = _Parser(prog=PROG, allow_abbrev=False, description="Shape features (BEVR, margin fluctuation, angular SD, ...) of tumour masks "
                                        "and their Fisher exact tests against genomic subtypes.")
    p.add_argument("--labels", required=True, help="datalist JSON, dataset folder, or folder of <case_id>.nii.gz label maps")
    p.add_argument("--clinical", required=True, help="CSV with the patient id column and subtype columns")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--from", dest="source", choices=("truth", "pred"), default="truth",
                   help="what --labels are: manual masks (truth, default) or predictions (pred)")
    p.add_argument("--truth", help="manual masks (datalist or folder) to compare the --labels features with")
    p.add_argument("--task", help="layout of dataset folders (default lgg; a datalist names its own)")
    p.add_argument("--id-column", default="Patient", help="patient id column of the clinical CSV (default Patient)")
    p.add_argument("--subtypes", type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                   help="comma-separated subtype columns (default: every column ending in 'Cluster')")
    p.add_argument("--features", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=list(FEATURES),
                   help=f"comma-separated features to test (default {','.join(FEATURES)})")
    p.add_argument("--foreground", type=_int_list, help="label values making the tumour (default: any nonzero label)")
    p.add_argument("--split", type=_split, default="median", help="dichotomisation: median (default), mean or a quantile")
    p.add_argument("--family", choices=("feature", "all"), default="feature",
                   help="multiple-testing family: one feature's subtype tests (default) or all tests")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--sectors", type=int, default=12, help="angular sectors of ASD (default 12)")
    p.add_argument("--window", type=float, default=0.1, help="MF moving-average window, fraction of the boundary (default 0.1)")
    p.add_argument("--components", choices=("largest", "all"), default="largest",
                   help="measure the largest connected component of each mask (default, as the published pipeline) "
                        "or all components together")
    p.add_argument("--no-figures", action="store_true", help="tables and pages only")
    p.add_argument("--embed-images", action="store_true", help="embed the figures in report.html")
    p.add_argument("--workers", type=int, default=1, help="masks measured concurrently (threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brats-radiogenomics``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.truth and args.source != "pred":
        print(f"{PROG}: error: --truth compares predictions with manual masks; use it with --from pred", file=sys.stderr)
        return 2
    from brats_pipeline.radiogenomics.analysis import run_radiogenomics

    try:
        result = run_radiogenomics(
            args.labels, args.clinical, args.out, source=args.source, truth=args.truth, task=args.task,
            id_column=args.id_column, subtypes=args.subtypes, feature_names=args.features, foreground=args.foreground,
            split=args.split, family=args.family, alpha=args.alpha, n_sectors=args.sectors, window_fraction=args.window,
            components=args.components, figures=not args.no_figures, embed=args.embed_images, workers=args.workers, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(result.summary)
    print(f"written: {', '.join(str(p) for p in result.paths.values())}")
    for cid, why in result.failed.items():
        print(f"  FAILED {cid}: {why}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
