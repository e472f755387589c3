"""``brats-infer``: batch sliding-window inference into label NIfTIs in each input's own geometry.

Examples::

    brats-infer -i demo_data/datalist.json -o preds --checkpoint runs/x/last.ckpt
    brats-infer -i /data/BraTS2021 --task brats2021 -o preds --checkpoint f0.ckpt f1.ckpt f2.ckpt --tta
    brats-infer -i brats21.json -o preds --bundle bundles/brats_unet3d --shard $SLURM_ARRAY_TASK_ID/8

Writes ``OUT/<case_id>.nii.gz`` (uint8, the task's labels), optionally
``OUT/probabilities/<case_id>.nii.gz``, and ``OUT/manifest.json`` (per shard:
``manifest.shard-I-of-N.json``, as brats-preprocess). A re-run skips the cases whose outputs
were made from the same input contents by the same model with the same settings
(:mod:`brats_pipeline.inference.batch`). Exit status 0 when every case succeeded (or was
already done), 1 when any case failed (the others are still written), 2 for bad arguments:
among them a case id that is not a safe file name or appears twice
(:mod:`preprocessing.identity`), ``--fold``/``--split`` on a folder without ``datalist.json``, an output folder that cannot be written and a ``--task``
other than the one the checkpoint or bundle was trained for. A modality file that cannot be
used (truncated, NaN, constant: an empty scan) fails its case. A model trained on a modality
subset (``data.modalities``) reads only those modalities' files: the others need not exist, and a
case lacking a used one fails naming the case and the modality.

The cases come from the project's one case reader, :func:`brats_pipeline.data.cases.read_cases`, as
the bundles' do: ``-i`` is a datalist JSON, or a dataset folder (its ``datalist.json`` if it holds one,
else the 4D stacked NIfTI files directly in it and the cases in the task's layout).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPLITS = ("all", "training", "testing")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="brats-infer",
        allow_abbrev=False,
        description="Sliding-window inference over a datalist or a dataset folder; labels written in each input's geometry.",
    )
    p.add_argument("-i", "--input", required=True, help="datalist JSON (brats-datalist) or dataset folder in the task's layout")
    p.add_argument("-o", "--out", required=True, help="output folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", nargs="+", metavar="CKPT", help="Lightning checkpoint(s); several = an ensemble")
    src.add_argument("--bundle", metavar="DIR", help="MONAI bundle folder (configs/inference.json + models/model.pt)")
    src.add_argument("--weights", nargs="+", metavar="PT", help="plain state-dict file(s) of --network")
    p.add_argument("--network", default="unet3d", help="registry network for --weights (default unet3d)")
    p.add_argument("--network-kwargs", default="{}", help="JSON options of --network, e.g. '{\"features\": [8,16,32,64,128,16]}'")
    p.add_argument("--task", help="task (needed for a dataset folder or --weights; default: the model's, "
                   "and with --checkpoint/--bundle it must be the model's)")
    p.add_argument("--modalities", nargs="+", metavar="NAME", help="--weights: the modalities the network reads, a subset "
                   "of the task's (e.g. t2 t1c flair; default all); checkpoints and bundles record their own")
    p.add_argument("--split", choices=SPLITS, default="all", help="datalist entries to predict (default all)")
    p.add_argument("--fold", type=int, help="only training entries of this fold (e.g. a validation fold)")
    p.add_argument("--tta", action="store_true", help="test-time mirroring on all three axes (8 passes per model)")
    p.add_argument("--tta-axes", type=int, nargs="+", metavar="AXIS", help="mirror only these axes (0=x, 1=y, 2=z)")
    p.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="sliding-window size (default: the model's)")
    p.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the model's)")
    p.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    p.add_argument("--blend", choices=("gaussian", "constant"), help="window blending (default: the model's)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the network(s)")
    p.add_argument("--threshold", type=float, nargs="+", help="probability threshold, one or one per region (default 0.5)")
    p.add_argument("--min-component", type=int, default=0, metavar="N", help="remove components smaller than N voxels")
    p.add_argument("--keep-largest", action="store_true", help="keep only the largest whole-tumour component")
    p.add_argument("--opening", type=int, default=0, metavar="R", help="binary opening radius (voxels)")
    p.add_argument("--closing", type=int, default=0, metavar="R", help="binary closing radius (voxels)")
    p.add_argument("--et-min-voxels", type=int, default=0, metavar="N", help="relabel ET smaller than N voxels as necrosis")
    p.add_argument("--save-probabilities", action="store_true", help="also write OUT/probabilities/<case>.nii.gz")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist (default: skip = resume)")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="shard I of N (0 <= I < N) for job arrays: the cases sorted by case id, every N-th from position I; "
        "the manifest is then OUT/manifest.shard-I-of-N.json (merge: python -m preprocessing.sharding merge)",
    )
    p.add_argument("--loader-threads", type=int, default=2, help="cases read ahead concurrently (default 2)")
    p.add_argument("--writer-threads", type=int, default=2, help="cases written concurrently (default 2)")
    p.add_argument("--read-threads", type=int, default=4, help="modality files decoded concurrently per case (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _postprocess_options(args: argparse.Namespace) -> dict[str, Any]:
    """The post-processing options given on the command line (a bundle's own ``postprocess`` keeps the others)."""
    given: dict[str, Any] = {
        "min_component_voxels": args.min_component, "keep_largest": args.keep_largest,
        "opening_radius": args.opening, "closing_radius": args.closing, "et_min_voxels": args.et_min_voxels,
    }
    opts = {k: v for k, v in given.items() if v}
    if args.threshold:
        opts["threshold"] = args.threshold[0] if len(args.threshold) == 1 else tuple(args.threshold)
    return opts


def check_task(given: str | None, recorded: str, model: str) -> None:
    """Refuse a ``--task`` that is not the task ``model`` was trained for (aliases such as brats2020 are the same task).

    A model writes the labels of its own task: a brats2021 model run as ``--task brats2023``
    would write 2023 label values for 2021 predictions.

    Raises:
        ValueError: ``given`` names another task (one line naming the model and both tasks).
    """
    from brats_pipeline.constants import get_task

    if given is not None and get_task(given).name != get_task(recorded).name:
        raise ValueError(f"--task {given}: {model} was trained for task {recorded!r}, not {given!r}; "
                         f"leave out --task (the model's task is used) or give a model of task {given!r}")


def build_predictor(args: argparse.Namespace) -> Any:
    """The :class:`~brats_pipeline.inference.Predictor` the arguments describe."""
    import json

    from brats_pipeline.inference import Predictor

    overrides: dict[str, Any] = {"amp": not args.no_amp, "read_threads": args.read_threads, "compile": args.compile}
    if postprocess := _postprocess_options(args):
        overrides["postprocess"] = postprocess
    if args.tta or args.tta_axes:
        overrides["tta_axes"] = tuple(args.tta_axes) if args.tta_axes else (0, 1, 2)
    for name, value in (("roi_size", args.roi), ("overlap", args.overlap), ("sw_batch_size", args.sw_batch_size),
                        ("blend_mode", args.blend)):
        if value is not None:
            overrides[name] = tuple(value) if name == "roi_size" else value
    device = None if args.device == "auto" else args.device
    if args.modalities and not args.weights:
        raise ValueError("--modalities is for --weights: a checkpoint or bundle records the modalities it reads")
    if args.checkpoint:  # the task is the model's (an ensemble's members agree on it); --task must not contradict it
        predictor = Predictor.from_checkpoint(args.checkpoint, device=device, **overrides)
        check_task(args.task, predictor.task.name, f"checkpoint {args.checkpoint[0]}")
        return predictor
    if args.bundle:
        predictor = Predictor.from_bundle(args.bundle, device=device, **overrides)
        check_task(args.task, predictor.task.name, f"bundle {args.bundle}")
        return predictor
    if not args.task:
        raise ValueError("--weights needs --task")
    if args.modalities:
        overrides["modalities"] = args.modalities
    try:
        kwargs = json.loads(args.network_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--network-kwargs is not valid JSON: {exc}") from exc
    return Predictor.from_state_dict(args.network, args.weights, args.task, network_kwargs=kwargs, device=device, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brats-infer``; returns the exit status (0 all done, 1 some case failed, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    from brats_pipeline.data.cases import read_cases
    from brats_pipeline.inference.batch import run_batch, select_shard
    from preprocessing.outputs import prepare_output_folder
    from preprocessing.sharding import manifest_stem, parse_shard

    try:
        shard = parse_shard(args.shard) if args.shard else None
        predictor = build_predictor(args)
        cases = read_cases(args.input, predictor.task, split=args.split, fold=args.fold)
        prepare_output_folder(args.out, depth=1)  # an existing file, under a file, not writable: a usage error
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"brats-infer: error: {exc}", file=sys.stderr)
        return 2
    manifest = "manifest.json"
    if shard is not None:
        cases = select_shard(cases, *shard)
        manifest = f"{manifest_stem(shard)}.json"
    if not cases:
        print(f"brats-infer: error: no cases to predict in {args.input}", file=sys.stderr)
        return 2
    try:
        with predictor:
            rows = run_batch(
                predictor, cases, args.out, save_probabilities=args.save_probabilities, overwrite=args.overwrite, manifest_name=manifest,
                loader_threads=args.loader_threads, writer_threads=args.writer_threads, progress=not args.no_progress,
            )
    except OSError as exc:  # the manifest could not be written (a full disk): the message names the file
        print(f"brats-infer: error: {exc}", file=sys.stderr)
        return 1
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(f"brats-infer: {counts['ok']} predicted, {counts['skipped']} already done, {counts['failed']} failed "
          f"-> {Path(args.out) / manifest}")
    for row in rows:
        if row["status"] == "failed":
            print(f"  FAILED {row['case_id']}: {row['error']}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
