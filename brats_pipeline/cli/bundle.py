"""``brats-bundle``: run a bundle, export weights into it, verify it, stack modalities.

    brats-bundle run --config_file bundles/brats_unet3d_segmentation/configs/inference.json --dataset_dir data --output_dir preds
    brats-bundle export --checkpoint runs/.../best.ckpt --bundle bundles/brats_unet3d_segmentation
    brats-bundle verify bundles/brats_unet3d_segmentation --schema bundles/brats_unet3d_segmentation/docs/meta_schema_20240725.json
    brats-bundle stack t1c.nii.gz t1.nii.gz t2.nii.gz flair.nii.gz -o case.nii.gz --task brats2021
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brats_pipeline.constants import TASK_ALIASES, TASKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brats-bundle", description="MONAI bundle tools for brats-pipeline.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", allow_abbrev=False, help="python -m monai.bundle run, with every override checked against the config "
                   "(a misspelt --ouput_dir is an error naming the closest key); same arguments", add_help=False)

    exp = sub.add_parser("export", allow_abbrev=False, help="copy a Lightning checkpoint's network weights into <bundle>/models/model.pt")
    exp.add_argument("--checkpoint", required=True, help="Lightning .ckpt (brats-train or the bundle's training)")
    exp.add_argument("--bundle", required=True, help="bundle folder (with configs/inference.json)")
    exp.add_argument("--datalist", help="also validate on --fold of this datalist and record per-region Dice/HD95")
    exp.add_argument("--fold", type=int, default=0, help="validation fold for --datalist (default 0)")
    exp.add_argument("--device", default="cpu", help="device for the validation run (default cpu)")

    ver = sub.add_parser("verify", allow_abbrev=False, help="metadata schema, MONAI property ids, network in/out, strict weights, TorchScript")
    ver.add_argument("bundle", help="bundle folder")
    ver.add_argument("--schema", help="local metadata schema file (offline); default: download the URL in metadata.json")
    ver.add_argument("--device", default="cpu", help="device for the network checks (default cpu)")
    ver.add_argument("--atol", type=float, default=1e-4, help="TorchScript vs eager tolerance (default 1e-4)")
    ver.add_argument("--require-weights", action="store_true", help="fail (not skip) when models/model.pt is absent")

    stk = sub.add_parser("stack", allow_abbrev=False, help="write one 4D NIfTI (modalities on the last axis) from per-modality files")
    stk.add_argument("files", nargs="*", help="modality files in the bundle's channel order")
    stk.add_argument("--case-dir", help="instead of FILES: a case folder in the task's layout (needs --task)")
    stk.add_argument("--task", choices=sorted([*TASKS, *TASK_ALIASES]), help="check the number of files / find them")
    stk.add_argument("-o", "--output", required=True, help="4D NIfTI to write (.nii.gz)")
    return parser


def _export(args: argparse.Namespace) -> int:
    from brats_pipeline.bundle import export_checkpoint

    metrics = export_checkpoint(args.checkpoint, args.bundle, datalist=args.datalist, fold=args.fold, device=args.device)
    print(f"{Path(args.bundle) / 'models' / 'model.pt'}: written; eval_metrics {metrics}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from brats_pipeline.bundle import verify_bundle

    checks = verify_bundle(args.bundle, schema=args.schema, device=args.device, atol=args.atol,
                           require_weights=args.require_weights)
    for check in checks:
        print(f"{check.status:4} {check.name}: {check.detail}")
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"{args.bundle}: {len(checks) - len(failed)} of {len(checks)} checks passed or skipped, {len(failed)} failed")
    return 1 if failed else 0


def _stack(args: argparse.Namespace) -> int:
    from brats_pipeline.bundle import case_modality_files, stack_modalities

    if bool(args.files) == bool(args.case_dir):
        raise ValueError("give either modality FILES or --case-dir (not both, not neither)")
    if args.case_dir and not args.task:
        raise ValueError("--case-dir needs --task (it decides the modality suffixes and order)")
    files = case_modality_files(args.case_dir, args.task) if args.case_dir else args.files
    path = stack_modalities(files, args.output, task=args.task)
    print(f"{path}: {len(files)} modalities stacked ({', '.join(Path(f).name for f in files)})")
    return 0


def _run(argv: Sequence[str]) -> int:
    """``brats-bundle run ARGS``: ``monai.bundle run`` (arguments parsed by ``fire``, as there), overrides checked first.

    Exit status 2 for an override that names no key of the config (one line), else what the
    workflow does: 0, or a traceback and 1 when it raises (as ``python -m monai.bundle run``).
    """
    if {"-h", "--help"} & set(argv):
        print("usage: brats-bundle run --config_file CONFIG[S] [--meta_file ...] [--logging_file ...] [--ID VALUE ...]\n"
              "python -m monai.bundle run with the same arguments; every override --ID (a#b#c or a::b::c) must name a\n"
              "key of the merged config, or a new argument of an existing component (exit 2 otherwise).\n"
              "e.g. brats-bundle run --config_file configs/inference.json --dataset_dir data --output_dir preds")
        return 0
    import fire

    from brats_pipeline.bundle.overrides import OverrideError, run

    try:
        fire.Fire(run, command=list(argv), name="brats-bundle run")
    except OverrideError as err:
        print(f"brats-bundle run: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # fire, not argparse, parses monai.bundle run's --id value pairs
        return _run(argv[1:])
    args = build_parser().parse_args(argv)
    command = {"export": _export, "verify": _verify, "stack": _stack}[args.command]
    try:
        return command(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"brats-bundle {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
