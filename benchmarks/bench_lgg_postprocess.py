"""Inference settings of the LGG recipe compared on the same trained fold models, held out.

nnU-Net's last step, done by hand: after cross-validation, the fold models predict their own
held-out patients once per inference setting, and a setting is adopted only if it raises the
cross-validated mean. The models come from

    python benchmarks/bench_lgg.py --methods recipe_full --keep-checkpoints --out lgg_cv

(``lgg_cv/recipe_full/fold<k>.ckpt``); the folds are rebuilt with the same ``--num-folds`` and
``--seed``, so every model sees only patients it was not trained on. Settings (``--variants``):

- ``plain``: the predictor as trained (the peer of every other row: same models, same patients);
- ``largest``: keep only the largest 26-connected component of the tumour
  (``PostprocessConfig(keep_largest=True)``; Buda et al. 2019 keep the largest component of
  their automatic masks);
- ``mirror``: average the probabilities of the volume and its left-right mirror (x axis;
  the training flips make the network near-symmetric; nnU-Net mirrors by default);
- ``mirror+largest``: both.

Printed: per-patient Dice per setting, then mean, median, minimum and patients below 0.5 per
setting, and the inference CPU time per patient, with the CPU named.

    python benchmarks/bench_lgg_postprocess.py --checkpoints lgg_cv/recipe_full --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import set_up_compute  # noqa: E402
from _lgg_common import dice, load_lgg_cases, split, summarise  # noqa: E402

VARIANTS: dict[str, dict] = {
    "plain": {},
    "largest": {"postprocess": {"keep_largest": True}},
    "mirror": {"tta_axes": (0,)},
    "mirror+largest": {"tta_axes": (0,), "postprocess": {"keep_largest": True}},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--checkpoints", type=Path, required=True, help="folder with fold<k>.ckpt (bench_lgg.py --keep-checkpoints)")
    p.add_argument("--data", type=Path, default=None, help="the lgg folder (default: ../shared/data/lgg)")
    p.add_argument("--num-folds", type=int, default=5, help="as given to bench_lgg.py")
    p.add_argument("--seed", type=int, default=0, help="as given to bench_lgg.py (the fold split)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores)")
    p.add_argument("--patients-limit", type=int, default=None, help="as given to bench_lgg.py (smoke runs)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Predict every held-out patient once per setting; print the comparison. Returns the exit status."""
    from brats_pipeline.inference.predictor import Predictor

    args = parse_args(argv)
    from bench_lgg import default_data_dir

    data = args.data if args.data is not None else default_data_dir()
    if not data.is_dir():
        print(f"bench_lgg_postprocess: SKIPPED: no LGG data at {data}")
        return 0
    folds = sorted(int(p.stem[4:]) for p in args.checkpoints.glob("fold*.ckpt"))
    if not folds:
        print(f"bench_lgg_postprocess: {args.checkpoints}: no fold<k>.ckpt", file=sys.stderr)
        return 2
    device, precision, threads, info = set_up_compute("cpu", "fp32", args.threads)
    cases = load_lgg_cases(data, args.num_folds, args.seed, args.patients_limit)
    dices: dict[str, dict[str, float]] = {v: {} for v in args.variants}
    cpu: dict[str, float] = dict.fromkeys(args.variants, 0.0)
    for fold in folds:
        _, test = split(cases, fold)
        for variant in args.variants:
            predictor = Predictor.from_checkpoint(args.checkpoints / f"fold{fold}.ckpt", device=device, **VARIANTS[variant])
            for case in test:
                t0 = time.process_time()
                label = predictor.predict_case({"case_id": case.case_id, "image": list(case.files["image"])}).label
                cpu[variant] += time.process_time() - t0
                dices[variant][case.case_id] = dice(label, case.label)
            predictor.close()
        print(f"fold {fold}: " + ", ".join(f"{v} {summarise({c.case_id: dices[v][c.case_id] for c in test})['mean']:.4f}"
                                           for v in args.variants), flush=True)
    print(f"\nCPU: {info['cpu_model']}; {threads} thread(s); folds {folds}; {len(dices[args.variants[0]])} held-out patients")
    print(f"{'patient':<28}" + "".join(f"{v:>16}" for v in args.variants))
    for case_id in sorted(dices[args.variants[0]]):
        print(f"{case_id:<28}" + "".join(f"{dices[v][case_id]:>16.4f}" for v in args.variants))
    print(f"{'':<28}" + "".join(f"{v:>16}" for v in args.variants))
    for stat in ("mean", "median", "min", "below_0.5"):
        print(f"{stat:<28}" + "".join(f"{summarise(dices[v])[stat]:>16.4f}" for v in args.variants))
    n = len(dices[args.variants[0]])
    print(f"{'CPU s per patient':<28}" + "".join(f"{cpu[v] / n:>16.3f}" for v in args.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
