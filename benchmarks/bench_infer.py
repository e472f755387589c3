"""Inference benchmark: our Predictor vs the MONAI model-zoo BraTS inference recipe, in one run.

Input: ``../shared/data/brats_case`` (one real 240×240×155 case, BraTS 2023 names t1c, t1n,
t2w, t2f) replicated to ``--cases`` cases in a temporary folder (a synthetic phantom when the
real case is absent). Both recipes use random weights unless ``--checkpoint`` is given (ours).

(a) **model-zoo recipe** (``brats_mri_segmentation`` bundle's inference): ``LoadImaged`` of
    the four files, ``NormalizeIntensityd(nonzero, channel_wise)``, SegResNet (16 filters,
    blocks 1-2-2-4) in a ``SlidingWindowInferer`` with roi 240×240×160, overlap 0.5,
    sw_batch_size 1, autocast; sigmoid, ``Invertd``, threshold 0.5, ``SaveImaged`` — one case
    after the other.
(b) **ours**: :class:`brats_pipeline.inference.Predictor` with the default network (unet3d,
    features 32-256), roi 128³, overlap 0.5, gaussian blending, bf16 on CUDA; labels written
    in the input geometry as uint8. Single-case mode (``predict_case`` + write, one after the
    other) and batch mode (``run_batch``: loader and writer threads overlapping the GPU).

Printed per recipe: seconds per case end to end, cases per minute, model-compute seconds per
case (sliding window on a case already on the device), and the ratio to the zoo recipe.
Targets (issue 6, one H100): single case ≤ 0.7 s, batch ≥ 200 cases/min.

``--lgg-bundle`` instead times the shipped LGG bundle (``bundles/lgg_flair_segmentation``,
2.5D U-Net) end to end on one real LGG patient of ``../shared/data/lgg`` (256×256×~40): read
the three modality files, predict, write the label NIfTI, one pass after the other (the first
pass warms up), through both inference paths: ``brats-infer --bundle`` (``Predictor.from_bundle``)
and ``monai.bundle run`` (``inference.json``'s evaluator, in process). It prints the median
seconds, the CPU model and the target (issue 19: ≤ 1.5 s on the 2-core CPU).

    python benchmarks/bench_infer.py --cases 32                 # GPU
    python benchmarks/bench_infer.py --device cpu --cases 2     # CPU smoke check (cropped volumes, small windows)
    python benchmarks/bench_infer.py --lgg-bundle                # the shipped LGG bundle on this CPU
    python benchmarks/bench_infer.py --lgg-bundle --patient TCGA_HT_7882_19970125 --repeats 10
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO.parent / "shared" / "data" / "brats_case"
LGG_DATA = REPO.parent / "shared" / "data" / "lgg"
LGG_BUNDLE = REPO / "bundles" / "lgg_flair_segmentation"
#: A patient of median tumour size with 38 axial slices (any other works: --patient).
LGG_PATIENT = "TCGA_DU_A5TP_19970614"
#: Issue 19: one LGG patient end to end (read, predict, write) with the shipped bundle on the 2-core CPU.
LGG_TARGET_S = 1.5
#: Files of the real case in brats2023 channel order (t1c, t1n, t2w, t2f).
CASE_FILES = ("t1c", "t1n", "t2w", "t2f")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_cases(source: Path, out: Path, n: int, crop: tuple[int, int, int] | None) -> list[dict[str, Any]]:
    """Replicate the case ``n`` times under ``out`` (optionally centre-cropped); returns datalist-style entries."""
    import nibabel as nib

    from preprocessing.io import write_nifti

    template = out / "template"
    template.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and all((source / f"{m}.nii.gz").is_file() for m in CASE_FILES):
        for m in CASE_FILES:
            img = nib.load(str(source / f"{m}.nii.gz"))
            if crop is None:
                shutil.copyfile(source / f"{m}.nii.gz", template / f"{m}.nii.gz")
                continue
            data = np.asarray(img.dataobj, dtype=np.float32)
            lo = [max(0, (s - c) // 2) for s, c in zip(data.shape, crop)]
            sl = tuple(slice(a, a + c) for a, c in zip(lo, crop))
            affine = img.affine.copy()
            affine[:3, 3] = img.affine[:3, :3] @ np.asarray(lo, dtype=float) + img.affine[:3, 3]
            write_nifti(data[sl], affine, template / f"{m}.nii.gz", dtype=np.float32)
        origin = str(source)
    else:
        from brats_pipeline.data.synthetic import make_phantom

        shape = crop or (240, 240, 155)
        ph = make_phantom("brats2023", shape, seed=0, skull_stripped=True)
        for m, name in zip(CASE_FILES, ph.task.modality_names):
            write_nifti(ph.images[name], ph.affine, template / f"{m}.nii.gz", dtype=np.float32)
        origin = f"synthetic phantom {shape} ({source} absent)"
    print(f"input: {origin}{'' if crop is None else f', centre crop {crop}'}; {n} replicated cases")
    cases = []
    for i in range(n):
        folder = out / f"case{i:04d}"
        folder.mkdir(exist_ok=True)
        files = []
        for m in CASE_FILES:
            dst = folder / f"case{i:04d}-{m}.nii.gz"
            shutil.copyfile(template / f"{m}.nii.gz", dst)
            files.append(str(dst))
        cases.append({"case_id": f"case{i:04d}", "image": files})
    return cases


# ------------------------------------------------------------------------------ (a) model zoo
def zoo_recipe(roi: tuple[int, int, int], device: torch.device, out_dir: Path) -> tuple[Any, Any, Any, Any]:
    """The model-zoo BraTS bundle's preprocessing, network, inferer and postprocessing."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        SaveImaged,
    )

    pre = Compose([LoadImaged(keys="image", ensure_channel_first=True), NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    net = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4, out_channels=3, dropout_prob=0.2)
    net = net.to(device).eval()
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.5)
    post = Compose([
        Activationsd(keys="pred", sigmoid=True),
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", threshold=0.5),
        SaveImaged(keys="pred", output_dir=str(out_dir), output_postfix="seg", output_dtype=np.uint8, resample=False,
                   separate_folder=False, print_log=False),
    ])
    return pre, net, inferer, post


def run_zoo(cases: list[dict[str, Any]], roi: tuple[int, int, int], device: torch.device, out_dir: Path) -> dict[str, float]:
    pre, net, inferer, post = zoo_recipe(roi, device, out_dir)
    amp = torch.autocast(device.type, enabled=device.type == "cuda")
    times, compute = [], []
    for i, case in enumerate([cases[0], *cases]):  # the first pass warms up
        _sync(device)
        t0 = time.perf_counter()
        d = pre({"image": case["image"]})
        image = d["image"].to(device)[None]
        with torch.inference_mode(), amp:
            _sync(device)
            c0 = time.perf_counter()
            logits = inferer(image, net)
            _sync(device)
            c1 = time.perf_counter()
        d["pred"] = logits[0].float()
        d["image"] = d["image"]
        post(d)
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
            compute.append(c1 - c0)
    s = statistics.median(times)
    return {"s_per_case": s, "cases_per_min": 60.0 / s, "compute_s": statistics.median(compute)}


# ------------------------------------------------------------------------------ (b) ours
def build_ours(args: argparse.Namespace, device: torch.device) -> Any:
    from brats_pipeline.inference import Predictor
    from brats_pipeline.networks import build_network

    common = {"roi_size": tuple(args.roi), "overlap": 0.5, "sw_batch_size": args.sw_batch_size, "device": device,
              "read_threads": args.read_threads, "compile": args.compile}
    if args.checkpoint:
        return Predictor.from_checkpoint(args.checkpoint, **common)
    torch.manual_seed(0)
    net = build_network(args.network, 4, 3)
    return Predictor(net, "brats2023", **common)


def run_ours(predictor: Any, cases: list[dict[str, Any]], out_dir: Path, loader_threads: int, writer_threads: int) -> dict[str, float]:
    from brats_pipeline.inference.batch import label_path
    from preprocessing.io import write_nifti

    device = predictor.device
    times, compute = [], []
    for i, case in enumerate([cases[0], *cases]):
        _sync(device)
        t0 = time.perf_counter()
        data = predictor.preprocess(case)
        image = data["image"].as_tensor().to(device)
        _sync(device)
        c0 = time.perf_counter()
        predictor.predict_volume(image)
        _sync(device)
        c1 = time.perf_counter()
        probs, affine = predictor.compute(data)
        label = predictor.labels_from_probabilities(probs)
        write_nifti(label, affine, label_path(out_dir / "single", case["case_id"]), dtype=np.uint8)
        if i > 0:
            # end to end without the extra compute pass made only to time the model
            times.append(time.perf_counter() - t0 - (c1 - c0))
            compute.append(c1 - c0)
    t0 = time.perf_counter()
    from brats_pipeline.inference import run_batch

    rows = run_batch(predictor, cases, out_dir / "batch", overwrite=True, progress=False,
                     loader_threads=loader_threads, writer_threads=writer_threads)
    batch_s = time.perf_counter() - t0
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"batch inference failed: {failed[0]}")
    s = statistics.median(times)
    return {"s_per_case": s, "cases_per_min_single": 60.0 / s, "cases_per_min": 60.0 * len(cases) / batch_s,
            "batch_s_per_case": batch_s / len(cases), "compute_s": statistics.median(compute)}


def time_reading(case: dict[str, Any], threads: int) -> float:
    from concurrent.futures import ThreadPoolExecutor

    from preprocessing.io import read_array

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read_array, case["image"]))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ LGG bundle
def _lgg_bundle_copy(bundle: Path, out: Path) -> tuple[Path, str]:
    """The bundle itself when it ships weights, else a copy with seeded random ones (speed does not depend on them)."""
    if (bundle / "models" / "model.pt").is_file():
        return bundle, f"shipped weights ({bundle / 'models' / 'model.pt'})"
    import brats_pipeline.bundle as bb

    copy = out / bundle.name
    shutil.copytree(bundle, copy)
    torch.manual_seed(0)
    bb.save_state_dict(bb.bundle_parser(copy).get_parsed_content("network_def").state_dict(), copy / "models" / "model.pt")
    return copy, "RANDOM weights: models/model.pt is absent (the time does not depend on the weights)"


def time_predictor(bundle: Path, case: dict[str, Any], out_dir: Path, repeats: int) -> list[float]:
    """``brats-infer --bundle``'s path: ``Predictor.from_bundle``, then per pass read + predict + write."""
    from brats_pipeline.inference import Predictor
    from brats_pipeline.inference.batch import label_path
    from preprocessing.io import write_nifti

    times = []
    with Predictor.from_bundle(bundle, device="cpu") as predictor:
        for i in range(repeats + 1):  # the first pass warms up
            t0 = time.perf_counter()
            result = predictor.predict_case(case)
            write_nifti(result.label, result.affine, label_path(out_dir, case["case_id"]), dtype=np.uint8)
            if i:
                times.append(time.perf_counter() - t0)
    return times


def time_bundle_run(bundle: Path, data_dir: Path, out_dir: Path, repeats: int) -> list[float]:
    """``monai.bundle run``'s path: ``inference.json``'s evaluator (load, preprocess, infer, invert, write) per pass."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(data_dir), "output_dir": str(out_dir),
                   "device": "cpu", "overwrite": True})
    evaluator = parser.get_parsed_content("evaluator")
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        result = evaluator.run()
        if result["ok"] != 1:
            raise RuntimeError(f"monai.bundle run path failed: {result}")
        if i:
            times.append(time.perf_counter() - t0)
    return times


def run_lgg_bundle(args: argparse.Namespace) -> int:
    from brats_pipeline.devices import cores_available, cpu_has_native_bf16, cpu_model_name

    source = args.lgg_data / args.patient
    if not source.is_dir():
        raise SystemExit(f"{source}: patient folder not found (--lgg-data, --patient)")
    threads = args.threads or cores_available()
    torch.set_num_threads(threads)
    import nibabel as nib

    shape = nib.load(str(source / f"{args.patient}_flair.nii.gz")).shape
    print(f"CPU: {cpu_model_name()}; {threads} torch threads; native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_lgg_bundle_") as tmp:
        tmp = Path(tmp)
        bundle, weights = _lgg_bundle_copy(args.lgg_bundle_dir, tmp)
        data_dir = tmp / "input"
        data_dir.mkdir()
        (data_dir / args.patient).symlink_to(source.resolve())  # read in place, never copied
        case = {"case_id": args.patient, "image": [str(source / f"{args.patient}_{m}.nii.gz") for m in ("t1", "flair", "t1c")]}
        print(f"bundle {args.lgg_bundle_dir.name} with {weights}; patient {args.patient} {shape}; "
              f"{args.repeats} timed passes after one warm-up")
        rows = {
            "brats-infer --bundle (Predictor)": time_predictor(bundle, case, tmp / "predictor", args.repeats),
            "monai.bundle run (inference.json)": time_bundle_run(bundle, data_dir, tmp / "bundle_run", args.repeats),
        }
    print(f"\n{'path':<36}{'median s':>10}{'min s':>8}{'max s':>8}   target <= {LGG_TARGET_S} s (read, predict, write)")
    for name, times in rows.items():
        med = statistics.median(times)
        verdict = "met" if med <= LGG_TARGET_S else f"missed by {med - LGG_TARGET_S:.2f} s"
        print(f"{name:<36}{med:>10.3f}{min(times):>8.3f}{max(times):>8.3f}   {verdict}")
    print(f"(CPU: {cpu_model_name()}, {threads} threads; a busy machine slows every figure)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_CASE, help="folder with t1c/t1n/t2w/t2f .nii.gz (default ../shared/data/brats_case)")
    p.add_argument("--cases", type=int, default=32, help="replicated cases (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--crop", type=int, nargs=3, help="centre-crop the case (default: none on CUDA, 64 64 48 on CPU)")
    p.add_argument("--roi", type=int, nargs=3, help="our sliding-window size (default 128^3 on CUDA, 64 64 48 on CPU)")
    p.add_argument("--zoo-roi", type=int, nargs=3, help="zoo sliding-window size (default 240 240 160; CPU: the crop)")
    p.add_argument("--network", default="unet3d", help="our network (random weights) when no --checkpoint")
    p.add_argument("--checkpoint", help="use trained weights for ours")
    p.add_argument("--sw-batch-size", type=int, default=4)
    p.add_argument("--read-threads", type=int, default=4)
    p.add_argument("--loader-threads", type=int, default=4)
    p.add_argument("--writer-threads", type=int, default=4)
    p.add_argument("--compile", action="store_true", help="torch.compile our network")
    p.add_argument("--skip-zoo", action="store_true")
    lgg = p.add_argument_group("--lgg-bundle: the shipped LGG bundle on one real patient, this CPU")
    lgg.add_argument("--lgg-bundle", action="store_true", help="time the LGG bundle end to end (the rest is ignored)")
    lgg.add_argument("--lgg-bundle-dir", type=Path, default=LGG_BUNDLE, help=f"bundle folder (default {LGG_BUNDLE})")
    lgg.add_argument("--lgg-data", type=Path, default=LGG_DATA, help=f"LGG patient folders (default {LGG_DATA})")
    lgg.add_argument("--patient", default=LGG_PATIENT, help=f"patient id (default {LGG_PATIENT})")
    lgg.add_argument("--repeats", type=int, default=5, help="timed passes per path (default 5)")
    lgg.add_argument("--threads", type=int, help="torch threads (default: the cores this process may use)")
    args = p.parse_args(argv)
    if args.lgg_bundle:
        return run_lgg_bundle(args)
    warnings.filterwarnings("ignore", message="inverse has been called but no invertible transforms")  # the zoo's Invertd
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    crop = tuple(args.crop) if args.crop else ((64, 64, 48) if cpu else None)
    args.roi = tuple(args.roi) if args.roi else ((64, 64, 48) if cpu else (128, 128, 128))
    zoo_roi = tuple(args.zoo_roi) if args.zoo_roi else (tuple(int(-(-c // 8) * 8) for c in crop) if cpu and crop else (240, 240, 160))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        tmp = Path(tmp)
        cases = prepare_cases(args.data, tmp / "in", args.cases, crop)
        print(f"reading one case's 4 files: {time_reading(cases[0], 1):.3f} s on 1 thread, "
              f"{time_reading(cases[0], args.read_threads):.3f} s on {args.read_threads}")
        results: dict[str, dict[str, float]] = {}
        if not args.skip_zoo:
            results["zoo"] = run_zoo(cases, zoo_roi, device, tmp / "zoo")
        with build_ours(args, device) as predictor:
            results["ours"] = run_ours(predictor, cases, tmp / "ours", args.loader_threads, args.writer_threads)
    print(f"\n(a) zoo: SegResNet 16, roi {zoo_roi}, overlap 0.5, sw_batch 1; (b) ours: {args.network if not args.checkpoint else args.checkpoint}, "
          f"roi {tuple(args.roi)}, overlap 0.5, gaussian, {'bf16' if not cpu else 'fp32'}")
    print(f"{'recipe':<22}{'s/case (single)':>16}{'cases/min (batch)':>19}{'compute s/case':>16}{'vs zoo s/case':>15}")
    zoo = results.get("zoo")
    for name, r in results.items():
        ratio = f"{zoo['s_per_case'] / r['s_per_case']:.2f}x" if zoo else "–"
        print(f"{name:<22}{r['s_per_case']:>16.3f}{r['cases_per_min']:>19.1f}{r['compute_s']:>16.3f}{ratio:>15}")
    if "ours" in results:
        r = results["ours"]
        print(f"ours batch mode: {r['batch_s_per_case']:.3f} s per case amortised ({args.loader_threads} loader, {args.writer_threads} writer threads)")
        if zoo:
            print(f"ratios (zoo / ours): single case {zoo['s_per_case'] / r['s_per_case']:.2f}x, "
                  f"batch throughput {r['cases_per_min'] / zoo['cases_per_min']:.2f}x, compute {zoo['compute_s'] / r['compute_s']:.2f}x")
    if cpu:
        print("note: CPU run = smoke check on cropped volumes and small windows; the targets are for one H100 (--device cuda).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
