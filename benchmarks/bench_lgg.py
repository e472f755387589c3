"""5-fold patient-level cross-validation on the real LGG patients, every method on the same budget.

Data: every patient of ``../shared/data/lgg`` (``--data``; ``BRATS_SHARED_DATA`` moves
``../shared/data``), split into patient-level folds by the project's datalist builder (as
``brats-datalist ../shared/data/lgg --task lgg --folds 5``), decoded once and kept in memory.

Methods (``--methods``):

- ``peer3d``: MONAI's tutorial 3D recipe (UNet 16..256, DiceCE, 128×128×32 pos/neg patches);
- ``peer2d``: a plain MONAI 2D UNet 32..256 on axial slices (DiceCE, cosine);
- ``recipe``: the project's LGG recipe through its own module, data module and predictor
  (:func:`_lgg_recipe.run_recipe`, `brats_pipeline/configs/lgg_cpu.yaml`);
- ``recipe_full`` (not run by default): the same recipe trained for its configured steps, as
  the shipped bundle was, whatever the budget; its CPU time is reported, not capped. This is
  the held-out score of the shipped training recipe.

The peers are built from stock MONAI parts, untuned (``_lgg_peers.py`` says exactly how).
Each method gets ``--budget-minutes`` of compute per fold, counted in this process's CPU time
(all threads; on CUDA, wall time), not wall-clock: other work on the machine slows a run
without changing its figures. A method counts everything it does from its first line
(dataset building, in-process augmentation with ``num_workers=0``, steps) and stops at the
first step that ends past the budget; its schedule is driven by the budget fraction used.
Decoding and normalising the volumes happens once, before, for all methods. Inference on
the fold's held-out patients (whole volumes) is timed apart.

Printed per method: per-patient Dice 2|A∩B|/(|A|+|B|) (1 when both are empty), mean,
median, minimum, patients below 0.5, CPU and wall time, steps. Written under ``--out``:
``results.json`` (after every fold), ``<method>/fold<k>.csv`` and the predictions
``<method>/fold<k>/<case_id>.nii.gz`` (uint8, the input's affine).

    python benchmarks/bench_lgg.py --budget-minutes 6 --out lgg_cv               # peers, 5 folds
    python benchmarks/bench_lgg.py --methods peer2d --folds 0 --budget-minutes 2
    python benchmarks/bench_lgg.py --methods recipe_full --folds 0 --threads 2   # the shipped recipe, held out
    python benchmarks/bench_lgg.py --methods recipe_full --recipe-steps 5000 --keep-checkpoints   # a longer run of it
    python benchmarks/bench_lgg.py --patients-limit 4 --num-folds 2 --budget-minutes 0.05   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# OpenMP threads that wait by sleeping, not spinning: on a busy machine spinning threads
# burn CPU time while the other thread is descheduled, inflating a CPU-time budget's cost per
# step (measured: 4.3 -> 2.9 CPU s per 2D-peer step at load 6 on 2 cores). Set before torch
# loads OpenMP; export OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import PRECISIONS, set_up_compute  # noqa: E402
from _lgg_common import MethodRun, load_lgg_cases, split, summarise, write_fold_outputs  # noqa: E402
from _lgg_peers import run_peer2d, run_peer3d  # noqa: E402
from _lgg_recipe import run_recipe, run_recipe_full  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$BRATS_SHARED_DATA/lgg``, else ``../shared/data/lgg`` beside the checkout."""
    return Path(os.environ.get("BRATS_SHARED_DATA", REPO.parent / "shared" / "data")) / "lgg"


METHODS: dict[str, Callable[..., MethodRun]] = {"peer2d": run_peer2d, "peer3d": run_peer3d, "recipe": run_recipe,
                                               "recipe_full": run_recipe_full}
#: Methods run when ``--methods`` is not given.
DEFAULT_METHODS = ("recipe", "peer2d", "peer3d")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="the lgg folder (default: ../shared/data/lgg)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    p.add_argument("--budget-minutes", type=float, default=6.0, help="CPU minutes per fold and method (GPU: wall minutes)")
    p.add_argument("--num-folds", type=int, default=5, help="folds to split the patients into")
    p.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run (default: all)")
    p.add_argument("--seed", type=int, default=0, help="fold split and training seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:i] or auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores available; 1 keeps CPU time per step independent of machine load)")
    p.add_argument("--patients-limit", type=int, default=None, help="use only the first N patients (smoke tests)")
    p.add_argument("--out", type=Path, default=Path("bench_lgg_out"), help="output folder")
    p.add_argument("--no-predictions", action="store_true", help="do not write the prediction NIfTI files")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the recipe's trained checkpoints as <out>/<method>/fold<k>.ckpt")
    p.add_argument("--recipe-steps", type=int, default=None,
                   help="recipe_full: train this many steps instead of lgg_cpu.yaml's max_steps (cross-validate a change of it)")
    args = p.parse_args(argv)
    if not args.budget_minutes > 0:
        p.error(f"--budget-minutes must be positive, got {args.budget_minutes}")
    if args.num_folds < 2:
        p.error(f"--num-folds must be at least 2, got {args.num_folds}")
    bad = [f for f in args.folds or [] if not 0 <= f < args.num_folds]
    if bad:
        p.error(f"--folds {bad} out of range 0..{args.num_folds - 1}")
    if args.recipe_steps is not None and args.recipe_steps < 1:
        p.error(f"--recipe-steps must be positive, got {args.recipe_steps}")
    if args.patients_limit is not None and args.patients_limit < args.num_folds:
        p.error(f"--patients-limit {args.patients_limit} is below --num-folds {args.num_folds}")
    return args


def format_method(method: str, result: dict[str, Any]) -> str:
    """Per-patient Dice and the summary of one method over the folds done."""
    dices = {case: d for fold in result["folds"].values() for case, d in fold["dice"].items()}
    s = summarise(dices)
    folds = result["folds"].values()
    lines = [f"== {method}: {s['patients']} patients, folds {', '.join(result['folds'])}"]
    lines += [f"   {case:<28} {d:.4f}" for case, d in sorted(dices.items())]
    if s["patients"]:
        lines.append(
            f"   Dice mean {s['mean']:.4f}  median {s['median']:.4f}  min {s['min']:.4f}  below 0.5: {s['below_0.5']}"
        )
    lines.append(
        f"   train CPU {sum(f['train_cpu_s'] for f in folds):.1f} s, wall {sum(f['train_wall_s'] for f in folds):.1f} s, "
        f"steps {sum(f['steps'] for f in folds)} ({', '.join(str(f['steps']) for f in folds)} per fold); "
        f"inference CPU {sum(f['infer_cpu_s'] for f in folds):.1f} s, wall {sum(f['infer_wall_s'] for f in folds):.1f} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cross-validation; returns the exit status (0, also when the default data is absent)."""
    from preprocessing.io import write_json

    args = parse_args(argv)
    data = args.data if args.data is not None else default_data_dir()
    if not data.is_dir():
        if args.data is None:
            print(f"bench_lgg: SKIPPED: no LGG data at {data} (expected ../shared/data/lgg beside the checkout)")
            return 0
        print(f"bench_lgg: {data}: LGG data folder not found", file=sys.stderr)
        return 2
    try:
        device, precision, threads, info = set_up_compute(args.device, args.precision, args.threads)
    except ValueError as exc:
        print(f"bench_lgg: {exc}", file=sys.stderr)
        return 2

    cpu0, wall0 = time.process_time(), time.perf_counter()
    cases = load_lgg_cases(data, args.num_folds, args.seed, args.patients_limit)
    load = {"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0}
    folds = args.folds if args.folds is not None else list(range(args.num_folds))
    print(f"{len(cases)} patients from {data}, {args.num_folds} folds (running {folds}); decoded in {load['wall_s']:.1f} s; "
          f"budget {args.budget_minutes} min of {'wall (CUDA)' if device.type == 'cuda' else 'process CPU'} time per fold and method",
          flush=True)
    results: dict[str, Any] = {
        "machine": info,
        "data": str(data),
        "patients": len(cases),
        "num_folds": args.num_folds,
        "folds_run": folds,
        "seed": args.seed,
        "budget_minutes": args.budget_minutes,
        "budget_clock": "wall (CUDA)" if device.type == "cuda" else "process CPU",
        "decode": load,
        "fold_of": {c.case_id: c.fold for c in cases},
        "methods": {m: {"folds": {}} for m in args.methods},
    }
    budget_s = args.budget_minutes * 60.0
    for fold in folds:
        train, test = split(cases, fold)
        for method in args.methods:
            print(f"-- fold {fold}, {method}: {len(train)} training / {len(test)} held-out patients", flush=True)
            keep = {"keep_checkpoint": args.out / method / f"fold{fold}.ckpt"} if args.keep_checkpoints and method.startswith("recipe") else {}
            if method == "recipe_full" and args.recipe_steps is not None:
                keep["steps"] = args.recipe_steps
            run = METHODS[method](train, test, budget_s, device, precision, seed=args.seed + fold, **keep)
            scores = write_fold_outputs(args.out, method, fold, test, run, not args.no_predictions)
            results["methods"][method]["folds"][str(fold)] = {
                "steps": run.steps,
                "train_cpu_s": run.train_cpu_s,
                "train_wall_s": run.train_wall_s,
                "infer_cpu_s": run.infer_cpu_s,
                "infer_wall_s": run.infer_wall_s,
                "dice": scores,
                **run.extra,
            }
            for case_id, d in scores.items():
                print(f"   {case_id:<28} Dice {d:.4f}")
            print(f"   fold {fold} {method}: mean Dice {summarise(scores)['mean']:.4f}; {run.steps} steps, "
                  f"train CPU {run.train_cpu_s:.1f} s / wall {run.train_wall_s:.1f} s; "
                  f"inference CPU {run.infer_cpu_s:.1f} s / wall {run.infer_wall_s:.1f} s", flush=True)
            for r in results["methods"].values():
                r["summary"] = summarise({c: d for f in r["folds"].values() for c, d in f["dice"].items()})
            write_json(results, args.out / "results.json")
    print()
    print(f"CPU: {info['cpu_model']}; precision {precision}; budget {args.budget_minutes} min per fold and method")
    for method, result in results["methods"].items():
        print(format_method(method, result))
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
