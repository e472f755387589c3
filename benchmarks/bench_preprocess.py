"""N4 speed and quality: ``preprocessing.n4`` vs. SimpleITK's N4 with its default settings.

Both correct the same volume (by default the real BraTS-style ``../shared/data/brats_case/t1n.nii.gz``,
240 x 240 x 155 at 1 mm) in the same brain mask (its non-zero voxels), in the same process,
on one ITK thread. Reported per method: seconds per volume (wall and CPU) and the
non-uniformity reached inside the mask (:func:`preprocessing.n4.nonuniformity`: coefficient of
variation of a Gaussian low-pass copy, sigma 10 mm and 20 mm; lower is flatter), plus the
plain in-mask coefficient of variation. Target (issue 3): ours <= 5 s per volume on one core
with non-uniformity no worse than the default's.

Optionally (``--scaling N``) the whole case pipeline is timed on N synthetic cases with
``--workers 1`` and ``--workers 2``.

Usage::

    .venv/bin/python benchmarks/bench_preprocess.py                 # peer once (~10 min), ours 3 times
    .venv/bin/python benchmarks/bench_preprocess.py --skip-peer     # ours only
    .venv/bin/python benchmarks/bench_preprocess.py --scaling 8 --skip-peer
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "brats_case" / "t1n.nii.gz"


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """Run ``fn`` ``repeats`` times; return the last result and the median wall and CPU seconds."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def _quality(image: Any, mask: Any) -> dict[str, float]:
    from preprocessing.n4 import coefficient_of_variation, nonuniformity

    return {
        "nonuniformity_10mm": nonuniformity(image, mask, 10.0),
        "nonuniformity_20mm": nonuniformity(image, mask, 20.0),
        "cv": coefficient_of_variation(image, mask),
    }


def bench_n4(image_path: Path, repeats: int, skip_peer: bool) -> dict[str, Any]:
    import SimpleITK as sitk

    from preprocessing.itk_io import read_image
    from preprocessing.n4 import N4Config, n4_bias_correct
    from preprocessing.normalize import foreground_mask

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    image = read_image(image_path)
    mask = foreground_mask(image, "auto")
    results: dict[str, Any] = {
        "image": str(image_path),
        "size_xyz": list(image.GetSize()),
        "mask_voxels": int(sitk.GetArrayViewFromImage(mask).sum()),
        "threads": 1,
        "before": _quality(image, mask),
    }
    config = N4Config()
    ours, wall, cpu = _timed(lambda: n4_bias_correct(image, mask, config).corrected, repeats)
    results["ours"] = {"settings": config.to_dict(), "wall_s": wall, "cpu_s": cpu, "repeats": repeats, **_quality(ours, mask)}
    if not skip_peer:
        peer_filter = sitk.N4BiasFieldCorrectionImageFilter()  # SimpleITK defaults: full resolution, 4 x 50 iterations
        settings = {
            "shrink_factor": 1,
            "iterations": list(peer_filter.GetMaximumNumberOfIterations()),
            "control_points": list(peer_filter.GetNumberOfControlPoints()),
            "convergence_threshold": peer_filter.GetConvergenceThreshold(),
        }
        peer, wall, cpu = _timed(lambda: peer_filter.Execute(image, mask), 1)
        results["peer"] = {"settings": settings, "wall_s": wall, "cpu_s": cpu, "repeats": 1, **_quality(peer, mask)}
    return results


def bench_scaling(n_cases: int, workers: Sequence[int]) -> dict[str, Any]:
    """Seconds for the whole pipeline (default settings) on ``n_cases`` synthetic 96x96x64 cases."""
    import subprocess

    from brats_pipeline.data.synthetic import write_cohort

    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cohort"
        write_cohort(root, "brats2021", n_cases=n_cases, shape=(96, 96, 64), seed=0)
        for count in workers:
            out = Path(tmp) / f"out{count}"
            cmd = [sys.executable, "-m", "brats_pipeline.cli.preprocess", "-i", str(root), "-o", str(out), "--task", "brats2021"]
            cmd += ["--workers", str(count), "--threads", "1", "--no-progress"]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
            timings[count] = time.perf_counter() - start
    return {"cases": n_cases, "seconds_by_workers": timings}


def _print(results: dict[str, Any]) -> None:
    n4 = results["n4"]
    print(f"N4 on {n4['image']} {tuple(n4['size_xyz'])}, mask {n4['mask_voxels']} voxels, {n4['threads']} ITK thread")
    header = f"{'method':<28}{'wall s':>9}{'cpu s':>9}{'NU 10mm':>10}{'NU 20mm':>10}{'CV':>8}"
    print(header)
    print("-" * len(header))
    b = n4["before"]
    print(f"{'uncorrected':<28}{'':>9}{'':>9}{b['nonuniformity_10mm']:>10.4f}{b['nonuniformity_20mm']:>10.4f}{b['cv']:>8.4f}")
    rows = [("peer", "SimpleITK N4 defaults"), ("ours", "preprocessing.n4")]
    for key, name in rows:
        if key in n4:
            r = n4[key]
            print(f"{name:<28}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['nonuniformity_10mm']:>10.4f}{r['nonuniformity_20mm']:>10.4f}{r['cv']:>8.4f}")
    ours = n4["ours"]
    print(f"ours: shrink {ours['settings']['shrink_factor']}, fit margin {ours['settings']['fit_margin_mm']} mm, iterations {ours['settings']['iterations']}")
    if "peer" in n4:
        peer = n4["peer"]
        print(f"speed-up (peer wall / ours wall): {peer['wall_s'] / ours['wall_s']:.1f}x; (cpu) {peer['cpu_s'] / ours['cpu_s']:.1f}x")
        for k in ("nonuniformity_10mm", "nonuniformity_20mm"):
            print(f"{k} ours / peer: {ours[k] / peer[k]:.3f} ({'at least as flat' if ours[k] <= peer[k] else 'less flat'})")
    print(f"target <= 5 s/volume on one core: wall {ours['wall_s']:.2f} s, cpu {ours['cpu_s']:.2f} s -> "
          f"{'met' if ours['cpu_s'] <= 5.0 else 'missed'} (cpu)")
    if "scaling" in results:
        s = results["scaling"]
        times = s["seconds_by_workers"]
        line = ", ".join(f"{w} worker(s): {t:.1f} s" for w, t in times.items())
        print(f"pipeline, {s['cases']} synthetic 96x96x64 cases, default settings: {line}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="volume to correct")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median reported)")
    parser.add_argument("--skip-peer", action="store_true", help="do not run SimpleITK's default N4 (slow)")
    parser.add_argument("--scaling", type=int, default=0, metavar="N", help="also time the pipeline on N cases, 1 and 2 workers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        print(f"bench_preprocess: {args.image} not found (expected ../shared/data beside the checkout)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"n4": bench_n4(args.image, args.repeats, args.skip_peer)}
    if args.scaling:
        results["scaling"] = bench_scaling(args.scaling, (1, 2))
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
