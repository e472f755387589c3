"""``brats-evaluate``: per-case, per-region metrics of predicted label maps, summaries and the HTML report.

Examples::

    brats-evaluate --pred preds --truth demo_data/datalist.json -o eval
    brats-evaluate --pred preds --truth brats21.json --task brats2021 -o eval --report --workers 4
    brats-evaluate --pred cv_preds --truth brats20.json --external-pred preds21 --external-truth brats21_external.json -o eval

Writes ``OUT/metrics.csv`` (per region), ``OUT/label_metrics.csv`` (per label of the scheme, e.g.
NCR, ED, ET, and voxel accuracy; :mod:`brats_pipeline.evaluation`), ``OUT/summary.json``, ``OUT/summary.md`` and, with ``--report``,
``OUT/report.html`` + ``OUT/figures/`` (summary, best/median/worst case per region, box plot,
per-case figures; :mod:`brats_pipeline.reports`). Exit status 0 when every truth case had a prediction
and was evaluated, 1 otherwise (the rest are still evaluated), 2 for bad arguments.

With ``--external-pred`` and ``--external-truth`` it evaluates two pairs, the internal one
(``--pred``/``--truth``, e.g. the cross-validation folds' predictions on the training cohort;
``--fold`` applies to it) and the external one (another cohort), into ``OUT/internal/`` and
``OUT/external/`` (each as above), and writes ``OUT/report.html`` with both summaries side by
side and their differences, and ``OUT/comparison.md`` (:mod:`brats_pipeline.reports.comparison`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brats-evaluate", description="Evaluate predicted label maps against a datalist's labels.",
                                allow_abbrev=False)
    p.add_argument("--pred", required=True, help="folder of <case_id>.nii.gz predictions (brats-infer output)")
    p.add_argument("--truth", required=True, help="datalist JSON whose entries have 'label'")
    p.add_argument("--task", help="task (default: the datalist's)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--fold", type=int, help="only training entries of this fold")
    p.add_argument("--empty-hd95", type=float, help="HD95 (mm) when exactly one of prediction/truth is empty (default 373.13)")
    p.add_argument("--workers", type=int, default=1, help="cases evaluated concurrently (threads)")
    p.add_argument("--allow-missing", action="store_true", help="exit 0 even if some cases have no prediction")
    p.add_argument("--report", action="store_true", help="also write report.html with figures")
    p.add_argument("--max-figures", type=int, default=50,
                   help="cases with per-case figures in the report, worst first (default 50); the best, median and "
                        "worst case of each region always get an overlay")
    p.add_argument("--no-surfaces", action="store_true", help="no 3D surface renderings in the report")
    p.add_argument("--embed-images", action="store_true", help="embed the report's images (one self-contained HTML file)")
    p.add_argument("--training-curves", help="PNG of training curves to include in the report")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ext = p.add_argument_group("internal vs external", "evaluate a second pair (another cohort) and write both summaries "
                               "side by side: OUT/internal/, OUT/external/, OUT/report.html, OUT/comparison.md")
    ext.add_argument("--external-pred", metavar="DIR", help="predictions on the external cohort")
    ext.add_argument("--external-truth", metavar="DATALIST", help="the external cohort's datalist (brats-datalist "
                     "--exclude-overlap: without the training cohort's cases)")
    ext.add_argument("--names", nargs=2, metavar=("INTERNAL", "EXTERNAL"), default=None,
                     help="headings of the two evaluations (default: internal external)")
    return p


def background_image(entry: dict[str, Any], task: Any) -> str:
    """The image file shown behind overlays: FLAIR if the task has it, else the first modality."""
    image = entry["image"]
    files = [image] if isinstance(image, str) else list(image)
    if len(files) == 1:
        return files[0]
    contrasts = [m.contrast for m in task.modalities]
    return files[contrasts.index("flair")] if "flair" in contrasts else files[0]


def make_report(
    result: Any,
    entries: Sequence[dict[str, Any]],
    out_dir: str | Path,
    max_figures: int = 50,
    surfaces: bool = True,
    training_curves: str | Path | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
    embed: bool = False,
) -> Path:
    """``report.html`` of an :class:`EvaluationResult` with its figures in ``out_dir/figures``.

    Per region the best, median and worst case by Dice
    (:func:`brats_pipeline.reports.evaluation.pick_cases`) get the region's TP/FP/FN overlay;
    the worst ``max_figures`` cases (by the outermost region's Dice) get the per-case 3-plane
    figure (and, with ``surfaces``, the 3D surfaces). Cases whose entry has no image have no figures.
    """
    from brats_pipeline.reports.evaluation import outer_region, pick_cases, write_report
    from brats_pipeline.viz import case_figures, region_overlays

    task = result.task
    by_id = {str(e["case_id"]): e for e in entries}
    figures_dir = Path(out_dir) / "figures"

    def files(cid: str) -> tuple[str, str, str] | None:
        entry = by_id.get(cid)
        if entry is None or "image" not in entry:
            return None
        return background_image(entry, task), result.pred_paths[cid], result.truth_paths[cid]

    regions_of: dict[str, list[str]] = {}  # case -> the regions it is picked in
    for region, chosen in pick_cases(result.per_case).items():
        for cid in dict.fromkeys(chosen.values()):
            regions_of.setdefault(cid, []).append(region)
    overlays: dict[str, dict[str, Path]] = {}
    for cid, regions in regions_of.items():
        if (paths := files(cid)) is not None:
            for region, png in region_overlays(cid, *paths, task, regions, figures_dir).items():
                overlays.setdefault(region, {})[cid] = png

    regions = list(next(iter(result.per_case.values()), {}))
    outer = outer_region(task, regions) if regions else None
    ordered = sorted(result.per_case, key=lambda c: result.per_case[c][outer]["dice"])[: max(0, max_figures)] if outer else []
    images: dict[str, list[Path]] = {}
    for cid in ordered:
        if (paths := files(cid)) is not None:
            images[cid] = case_figures(cid, *paths, task, figures_dir, surfaces=surfaces)
    return write_report(
        out_dir, result.per_case, result.summary(), task, images, training_curves,
        title=title or f"{task.name} segmentation report", notes=notes, missing=result.missing, failed=result.failed,
        embed=embed, overlays=overlays,
    )


def _load_truth(truth: str, task_name: str | None, fold: int | None) -> tuple[Any, list[dict[str, Any]]]:
    """The task and the labelled entries (of ``fold``) of a datalist; ValueError when there are none."""
    from brats_pipeline.constants import get_task
    from brats_pipeline.data.cases import read_cases
    from brats_pipeline.data.datalist import load_datalist

    task = get_task(task_name or load_datalist(truth)["task"])
    entries = read_cases(truth, task, labelled=True, fold=fold, consumer="evaluation")  # ValueError when there are none
    return task, [dict(e) for e in entries]


def _evaluate(pred: str, entries: Sequence[dict[str, Any]], task: Any, args: argparse.Namespace) -> Any:
    from brats_pipeline.evaluation import evaluate_folder
    from brats_pipeline.metrics import BRATS_EMPTY_HD95

    return evaluate_folder(pred, entries, task, BRATS_EMPTY_HD95 if args.empty_hd95 is None else args.empty_hd95,
                           workers=args.workers, progress=not args.no_progress)


def _write(result: Any, entries: Sequence[dict[str, Any]], out: str | Path, args: argparse.Namespace,
           title: str | None) -> tuple[dict[str, Path], Path | None]:
    """``metrics.csv``, ``summary.json``, ``summary.md`` and (``--report``) ``report.html`` of one evaluation."""
    from brats_pipeline.evaluation import label_summary_markdown, summary_markdown, write_evaluation

    paths = write_evaluation(result, out)
    print(summary_markdown(result.summary(), title or f"{result.task.name}: {len(result.per_case)} case(s)"))
    print(label_summary_markdown(result))
    report = None
    if args.report and result.per_case:
        report = make_report(result, entries, out, args.max_figures, not args.no_surfaces, args.training_curves,
                             title or args.title, embed=args.embed_images)
        print(f"report: {report}")
    print(f"metrics: {paths['csv']} (per label: {paths['labels_csv']})  summary: {paths['json']}, {paths['markdown']}")
    for cid in result.missing:
        print(f"  MISSING prediction for {cid}", file=sys.stderr)
    for cid, why in result.failed.items():
        print(f"  FAILED {cid}: {why}", file=sys.stderr)
    return paths, report


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brats-evaluate``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    external = args.external_pred is not None or args.external_truth is not None
    if external and (args.external_pred is None or args.external_truth is None):
        parser.error("--external-pred and --external-truth go together")
    if args.names is not None and not external:
        parser.error("--names names the two evaluations of --external-pred/--external-truth; give those too")
    args.names = tuple(args.names or ("internal", "external"))
    if external and args.names[0] == args.names[1]:
        parser.error(f"--names: the two evaluations need different names, got {args.names[0]!r} twice")
    from preprocessing.outputs import prepare_output_folder

    pairs = [(args.pred, args.truth, args.fold)] + ([(args.external_pred, args.external_truth, None)] if external else [])
    folders = [Path(args.out) / "internal", Path(args.out) / "external"] if external else [Path(args.out)]
    try:
        truths = [_load_truth(truth, args.task, fold) for _, truth, fold in pairs]
        if external and [r.name for r in truths[0][0].regions] != [r.name for r in truths[1][0].regions]:
            raise ValueError(f"{args.external_truth}: task {truths[1][0].name}'s regions differ from {truths[0][0].name}'s "
                             f"({args.truth}); name one --task for both")
        for folder in dict.fromkeys([Path(args.out), *folders]):  # an existing file, under a file, not writable: before any metric
            prepare_output_folder(folder)
        results = [_evaluate(pred, entries, task, args) for (pred, _, _), (task, entries) in zip(pairs, truths)]
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"brats-evaluate: error: {exc}", file=sys.stderr)
        return 2
    try:
        written = []
        for i, (result, (_, entries), folder) in enumerate(zip(results, truths, folders)):
            title = f"{args.names[i]}: {result.task.name}, {len(result.per_case)} case(s)" if external else None
            written.append(_write(result, entries, folder, args, title))
        if external:
            from brats_pipeline.reports.comparison import EvaluationSummary, write_comparison

            summaries = [
                EvaluationSummary(name, result.summary(), len(result.per_case), result.missing, result.failed,
                                  {"predictions": pred, "truth": truth}, report, paths["json"])
                for name, result, (pred, truth, _), (paths, report) in zip(args.names, results, pairs, written)
            ]
            notes = [f"{args.names[0]}: fold {args.fold} only."] if args.fold is not None else []
            compared = write_comparison(args.out, summaries, results[0].task, args.title, notes)
            print(f"side by side: {compared['html']}, {compared['markdown']}")
    except OSError as exc:  # the disk filled up (the message names the file)
        print(f"brats-evaluate: error: {exc}", file=sys.stderr)
        return 1
    bad = any(r.failed or (r.missing and not args.allow_missing) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
