"""``brats-demo``: the whole pipeline on synthetic BraTS-2021-like phantoms, in minutes on a CPU.

1. **synthesise** a skull-stripped brats2021 cohort (``brats_pipeline.data.synthetic``):
   ``--cases`` for training/validation and ``--test-cases`` held out, all from ``--seed``;
2. **preprocess** every case with the ITK stage (``preprocessing.batch.run_batch``)
   on cheap settings — N4 on a 4x-shrunk image with two short fitting levels, reorientation,
   crop to the head, z-score in the mask; no registration, since the phantoms' modalities
   are aligned by construction — and build the datalists (4 patient-level folds);
3. **train** a small 3D residual U-Net (``residual_unet``, 8-128 channels, 0.6 M parameters) with
   :class:`~brats_pipeline.module.BratsSegmentationModule` +
   :class:`~brats_pipeline.data.datamodule.BratsDataModule` and a real Lightning ``Trainer``:
   a **fixed number of optimiser steps** (``--steps``; AdamW, cosine decay over those steps),
   never cut by the wall clock, so a busy machine makes the demo slower, never worse. Torch
   threads and loader workers come from the cores this process may use
   (``os.sched_getaffinity``) so that threads x (workers + 1) <= cores; fp32 (bf16 autocast
   only when asked for, and on a CPU only with native bf16: see :func:`plan_compute`);
4. **infer** on the held-out phantoms with :class:`~brats_pipeline.inference.Predictor`
   (labels written in each input's geometry);
5. **evaluate** (Dice, HD95, ... per region) and write ``report.html`` with the figures.

Everything lands under ``--out`` (default ``demo_out``); the last lines printed are the
held-out Dice per region and the report's path. ``demo_result.json`` records the Dice, the
steps done, the wall and CPU time, the device (CPU or GPU name), precision and threads.
``--quick`` is a tiny setting for the test suite (seconds; its Dice means nothing).
"""

from __future__ import annotations

import os

# OpenMP threads that wait by sleeping, not spinning: beside other work a spinning thread burns
# the core its partner needs (see plan_compute). Read when torch loads OpenMP: set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

#: Full demo and ``--quick`` settings (overridable on the command line). The full network is MONAI's
#: residual UNet with a full-resolution first level (strides 1, 2, 2, 2): the thin enhancing rim
#: needs it. Validation and inference slide windows of the patch's size (see train()). Measured on
#: phantom seeds 0-2 (README: held-out Dice per seed and region).
DEFAULTS = {
    "cases": 16, "test_cases": 6, "shape": (64, 64, 48), "steps": 500, "patch": 32, "batch_size": 4,
    "samples_per_volume": 1, "pos_fraction": 0.5, "network": "residual_unet",
    "network_kwargs": {"channels": [8, 16, 32, 64, 128], "strides": [1, 2, 2, 2], "num_res_units": 1},
    "val_every": 40, "lr": 0.01, "loss": "dice_ce", "loss_kwargs": {},
}
QUICK = {
    "cases": 5, "test_cases": 2, "shape": (48, 48, 32), "steps": 6, "patch": 32, "batch_size": 2,
    "samples_per_volume": 1, "pos_fraction": 0.67, "network": "residual_unet",
    "network_kwargs": {"channels": [4, 8, 16, 32], "strides": [2, 2, 2], "num_res_units": 1},
    "val_every": 1, "lr": 0.01, "loss": "dice_ce", "loss_kwargs": {},
}
PRECISIONS = ("auto", "fp32", "bf16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="brats-demo", allow_abbrev=False, description="Synthesise, preprocess, train, infer, evaluate, report — on CPU in minutes.")
    p.add_argument("-o", "--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0, help="cohort, fold and training seed (default 0)")
    p.add_argument("--quick", action="store_true", help="tiny setting for tests (seconds; accuracy not meaningful)")
    p.add_argument("--cases", type=int, help=f"training+validation phantoms (default {DEFAULTS['cases']})")
    p.add_argument("--test-cases", type=int, help=f"held-out phantoms (default {DEFAULTS['test_cases']})")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="phantom size in 1 mm voxels (default 64 64 48)")
    p.add_argument("--steps", type=int, help=f"optimiser steps, the fixed amount of training (default {DEFAULTS['steps']})")
    p.add_argument("--threads", type=int, help="torch threads (default: the cores this process may use)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="training/inference device (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default): fp32; bf16: bf16 autocast, on a CPU only with native bf16 (AMX or AVX512-BF16)")
    p.add_argument("--no-preprocess", action="store_true", help="skip the ITK stage (the phantoms are already aligned)")
    p.add_argument("--embed-images", action="store_true", help="embed the report's images in report.html")
    return p


def _log(msg: str, start: float) -> None:
    print(f"[{(time.perf_counter() - start) / 60:5.2f} min] {msg}", flush=True)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    s = dict(QUICK if args.quick else DEFAULTS)
    for key in ("cases", "test_cases", "steps"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.shape:
        s["shape"] = tuple(args.shape)
    if s["cases"] < 4 or s["test_cases"] < 1:
        raise ValueError(f"need at least 4 training cases and 1 test case, got {s['cases']} and {s['test_cases']}")
    if s["steps"] < 1:
        raise ValueError(f"--steps must be at least 1, got {s['steps']}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    return s


# ------------------------------------------------------------------- compute plan
# one home for the machine facts and the precision rule
from brats_pipeline.devices import cores_available, cpu_has_native_bf16  # noqa: E402
from brats_pipeline.devices import cpu_model_name as cpu_name  # noqa: E402


@dataclass(frozen=True)
class ComputePlan:
    """Where and how the demo trains.

    Attributes:
        accelerator: Lightning accelerator (``cpu`` or ``gpu``).
        device: the CPU's model name, or the GPU's name.
        precision: Lightning precision (``32-true``, or ``bf16-mixed`` when asked for and fast).
        cores: CPU cores this process may use.
        threads: torch intra-op threads.
        workers: data-loader worker processes; ``threads * (workers + 1) <= cores``.
    """

    accelerator: str
    device: str
    precision: str
    cores: int
    threads: int
    workers: int


def plan_compute(device: str = "auto", threads: int | None = None, precision: str = "auto") -> ComputePlan:
    """Choose accelerator, precision, threads and loader workers for the cores at hand (and set the threads).

    The training data are cached in memory and a batch of 4 patches of 32³ takes milliseconds
    to sample, so on a CPU the data are prepared in the main process (no loader worker) and
    torch gets every core: ``threads x (workers + 1) <= cores`` (2 cores: 2 threads, 0
    workers). OpenMP threads wait by sleeping (``OMP_WAIT_POLICY=PASSIVE``, set when this
    module is imported, before torch), so a busy machine slows a step without stealing the
    cores: one step of the demo's network on an AMD EPYC, 2 cores, measured 0.22 s with 1
    thread and 0.14 s with 2 idle, 0.36 s and 0.25 s beside two busy processes. The thread
    count is fixed by the cores, not by the load, so results do not depend on the load. On a
    GPU one worker feeds it.

    Precision: ``auto`` is fp32 (on a GPU, as before; on a CPU, see below). ``bf16`` is bf16
    autocast, refused on a CPU without native bf16 (AMX or AVX512-BF16), where it is emulated
    and 25-35x slower than fp32. On an AMD EPYC with AVX512-BF16, torch 2.13, bf16 autocast gave
    the demo's 3D networks non-finite gradients within a few steps (held-out Dice 0), differed
    from run to run, and was only ~1.2x faster: so ``auto`` does not pick it.

    Args:
        device: ``auto`` (a GPU where there is one), ``cpu`` or ``gpu``.
        threads: torch threads; default: the cores available divided among the processes.
        precision: ``auto``, ``fp32`` or ``bf16``.

    Raises:
        ValueError: an unknown device or precision, a GPU asked for without one, or bf16 on a
            CPU without native bf16.
    """
    import torch

    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu or gpu")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if device == "gpu" and not torch.cuda.is_available():
        raise ValueError("--device gpu asked for, but torch sees no CUDA device")
    cores = cores_available()
    gpu = device == "gpu" or (device == "auto" and torch.cuda.is_available())
    if precision == "bf16" and not gpu and not cpu_has_native_bf16():
        raise ValueError(f"--precision bf16 on {cpu_name()}, which has no native bf16 (AMX or AVX512-BF16): "
                         "emulated bf16 is 25-35x slower than fp32; use fp32")
    workers = 1 if gpu and cores >= 2 else 0
    n_threads = threads or max(1, cores // (workers + 1))
    torch.set_num_threads(n_threads)
    lightning_precision = "bf16-mixed" if precision == "bf16" else "32-true"
    name = torch.cuda.get_device_name(0) if gpu else cpu_name()
    return ComputePlan("gpu" if gpu else "cpu", name, lightning_precision, cores, n_threads, workers)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children, all threads."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def synthesise(raw: Path, n_cases: int, shape: Sequence[int], seed: int) -> None:
    """Write ``n_cases`` skull-stripped brats2021 phantoms into ``raw``."""
    from brats_pipeline.data.synthetic import write_cohort

    write_cohort(raw, "brats2021", n_cases, shape, seed=seed, skull_stripped=True)


def preprocess(raw: Path, out: Path, seed: int) -> str:
    """Run the ITK stage on every case of ``raw`` into ``out``; returns a note on what was done."""
    from brats_pipeline.cli.preprocess import config_for_task
    from brats_pipeline.data.datalist import build_datalist
    from preprocessing.batch import run_batch
    from preprocessing.case import case_from_entry
    from preprocessing.n4 import N4Config

    config = config_for_task(
        "brats2021", reference="t1c", spacing=None, register=False, n4=True,
        n4_config=N4Config(shrink_factor=4, iterations=(20, 20)),
    )
    datalist = build_datalist(raw, "brats2021", folds=2, seed=seed, check="none")
    modalities = list(datalist["modality"].values())
    cases = [case_from_entry(entry, modalities) for entry in datalist["training"]]
    result = run_batch(cases, config, out, workers=1)  # a tqdm bar, out/manifest.json; a re-run skips finished cases
    if result.n_failed:
        failed = [f"{s.case_id}: {(s.error or '').splitlines()[0]}" for s in result.statuses if s.status == "failed"]
        raise RuntimeError(f"preprocessing failed for {result.n_failed} case(s) (see {result.manifest_json}): {failed}")
    return "ITK stage: N4 (shrink 4, 2x20 iterations), RAS, crop to head, z-score in mask; no registration (phantoms are aligned)"


def make_datalists(pre: Path, root: Path, n_train: int, seed: int) -> tuple[Path, Path]:
    """Discover ``pre``; phantoms 0..n_train-1 train (4 folds), the rest are held out."""
    from brats_pipeline.data.datalist import assign_folds, build_datalist, write_datalist

    full = build_datalist(pre, "brats2021", folds=2, seed=seed, check="header")
    entries = sorted(full["training"], key=lambda e: e["case_id"])
    train, test = entries[:n_train], entries[n_train:]
    folds = assign_folds([e["case_id"] for e in train], "brats2021", num_folds=4, seed=seed)
    train_dl = {**full, "num_folds": 4, "numTraining": len(train), "numTest": 0, "testing": [],
                "training": [{**e, "fold": folds[e["case_id"]]} for e in train]}
    test_dl = {**full, "description": "held-out synthetic test phantoms (labels kept for evaluation)", "num_folds": 0,
               "numTraining": 0, "numTest": len(test), "training": [],
               "testing": [{"case_id": e["case_id"], "image": e["image"], "label": e["label"]} for e in test]}
    return write_datalist(train_dl, root / "train_datalist.json"), write_datalist(test_dl, root / "test_datalist.json")


def build_module(s: dict[str, Any], roi: Sequence[int]) -> Any:
    """The demo's LightningModule: ``s["network"]``, dice + CE loss, AdamW, cosine decay over the run's steps.

    Validation and inference slide windows of ``roi`` (the training patch) with overlap 0.5
    and Gaussian blending.

    The schedule (:class:`~brats_pipeline.schedules.ProgressLR`) follows progress through the
    Trainer's ``max_steps``, so the learning rate anneals over exactly the fixed steps.
    """
    import functools

    import torch

    from brats_pipeline.module import BratsSegmentationModule
    from brats_pipeline.schedules import ProgressLR

    return BratsSegmentationModule(
        s["network"], dict(s["network_kwargs"]), task="brats2021", loss=s["loss"], loss_kwargs=dict(s["loss_kwargs"]),
        optimizer=functools.partial(torch.optim.AdamW, lr=s["lr"], weight_decay=1e-5),
        lr_scheduler=functools.partial(ProgressLR, shape="cosine", min_factor=0.02),
        roi_size=tuple(roi), sw_batch_size=4, overlap=0.5,
    )


def train(datalist: Path, run_dir: Path, s: dict[str, Any], seed: int, plan: ComputePlan) -> tuple[Path, dict[str, Any]]:
    """Train for exactly ``s["steps"]`` optimiser steps, whatever the machine's load.

    Returns:
        The final checkpoint and what was done: ``steps``, ``epochs``, ``seconds`` (wall) and
        ``cpu_seconds`` of the training.
    """
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import CSVLogger

    from brats_pipeline.callbacks import TrainingCurves
    from brats_pipeline.data.datamodule import BratsDataModule

    pl.seed_everything(seed, workers=True, verbose=False)
    data = BratsDataModule(
        str(datalist), fold=0, patch_size=(s["patch"],) * 3, batch_size=s["batch_size"],
        samples_per_volume=s["samples_per_volume"], pos_fraction=s["pos_fraction"], num_workers=plan.workers, cache="memory", augmentation_device="cpu",
        augmentation={"spatial_prob": 0.0, "elastic_prob": 0.0, "gamma_prob": 0.0, "noise_prob": 0.0, "smooth_prob": 0.0},
    )
    # Sliding windows of the training patch's size (as nnU-Net does): instance normalisation then
    # sees at inference the statistics it saw in training. One window over the whole volume shifted
    # them and thickened the thin enhancing rim (README: held-out ET, seed 2, 0.843 -> 0.913).
    model = build_module(s, (s["patch"],) * 3)
    if plan.accelerator == "cpu":
        # 3D convolutions' backward pass runs about twice as fast channels-last on CPUs
        model.network.to(memory_format=torch.channels_last_3d)
    trainer = pl.Trainer(
        accelerator=plan.accelerator, devices=1, precision=plan.precision, max_steps=s["steps"], max_epochs=-1,
        check_val_every_n_epoch=s["val_every"], num_sanity_val_steps=0, logger=CSVLogger(str(run_dir), name="logs"),
        callbacks=[TrainingCurves()], enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=5,
        enable_progress_bar=sys.stderr.isatty(), default_root_dir=str(run_dir),
    )
    start, cpu = time.perf_counter(), cpu_seconds()
    trainer.fit(model, data)
    info = {"steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
            "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}
    ckpt = run_dir / "model.ckpt"
    tmp = run_dir / "model.ckpt.tmp"
    trainer.save_checkpoint(str(tmp), weights_only=True)  # weights + hyper-parameters, no optimiser state
    tmp.replace(ckpt)
    print(f"    trained {info['steps']} steps of {s['batch_size']} patches of {s['patch']}^3 ({info['epochs']} epochs) "
          f"in {info['seconds'] / 60:.2f} min ({info['cpu_seconds'] / 60:.2f} CPU min)", flush=True)
    return ckpt, info


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``brats-demo``; returns 0 on success (1 if a stage failed on some case)."""
    args = build_parser().parse_args(argv)
    start, cpu_start, load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
    try:
        s = _settings(args)
        plan = plan_compute(args.device, args.threads, args.precision)
    except ValueError as exc:
        print(f"brats-demo: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_total = s["cases"] + s["test_cases"]
    _log(f"{plan.accelerator} {plan.device}: {plan.precision}, {plan.threads} torch threads, {plan.workers} loader workers "
         f"({plan.cores} cores available; load average {load_start[0]:.1f})", start)
    _log(f"synthesising {n_total} brats2021 phantoms {s['shape']} (seed {args.seed}) -> {out / 'raw'}", start)
    synthesise(out / "raw", n_total, s["shape"], args.seed)
    if args.no_preprocess:
        import shutil

        shutil.copytree(out / "raw", out / "preprocessed", dirs_exist_ok=True)
        note = "preprocessing skipped (--no-preprocess); phantoms used as synthesised"
    else:
        _log("preprocessing (ITK stage)", start)
        note = preprocess(out / "raw", out / "preprocessed", args.seed)
    _log(note, start)
    train_dl, test_dl = make_datalists(out / "preprocessed", out, s["cases"], args.seed)

    net = f"{s['network']} {s['network_kwargs']}"
    _log(f"training {net} for {s['steps']} steps on {s['cases']} phantoms, patches {s['patch']}^3", start)
    ckpt, trained = train(train_dl, out / "train", s, args.seed, plan)

    from brats_pipeline.cli.evaluate import make_report
    from brats_pipeline.data.datalist import load_datalist
    from brats_pipeline.evaluation import evaluate_folder, summary_markdown, write_evaluation
    from brats_pipeline.inference import Predictor, run_batch

    _log(f"inference on {s['test_cases']} held-out phantoms", start)
    device = "cuda" if plan.accelerator == "gpu" else "cpu"
    test_entries = load_datalist(test_dl)["testing"]
    with Predictor.from_checkpoint(ckpt, device=device) as predictor:
        rows = run_batch(predictor, test_entries, out / "predictions", overwrite=True, progress=False)
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed:
        print(f"    FAILED {row['case_id']}: {row['error']}", file=sys.stderr)

    _log("evaluating and writing the report", start)
    result = evaluate_folder(out / "predictions", test_entries, "brats2021")
    write_evaluation(result, out / "evaluation")
    curves = next(iter(sorted((out / "train").rglob("training_curves.png"))), None)
    summary = result.summary()
    notes = [
        f"brats-demo, seed {args.seed}: {s['cases']} synthetic training/validation phantoms and {s['test_cases']} held-out "
        f"phantoms of {s['shape'][0]}x{s['shape'][1]}x{s['shape'][2]} voxels (1 mm).",
        note + ".",
        f"Model: {net}, {s['loss']} loss, AdamW (lr {s['lr']}) with cosine decay over {trained['steps']} steps of "
        f"{s['batch_size']} patches of {s['patch']}^3 ({s['samples_per_volume']} per volume), "
        f"trained on {plan.device} ({plan.precision}, {plan.threads} threads) in {trained['seconds'] / 60:.1f} min.",
        "All figures below are on the held-out phantoms.",
    ]
    report = make_report(result, test_entries, out / "evaluation", training_curves=curves,
                         title="brats-demo: held-out synthetic phantoms", notes=notes, embed=args.embed_images)
    print(summary_markdown(summary, f"held-out phantoms ({len(result.per_case)})", full=False))
    dice = {r: summary[r]["dice"]["mean"] for r in summary} if summary else {}
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    _write_json(out / "demo_result.json", {
        "seed": args.seed, "dice_mean": dice, "steps": trained["steps"], "steps_planned": s["steps"],
        "epochs": trained["epochs"], "wall_minutes": wall / 60, "cpu_minutes": cpu / 60,
        "train_wall_minutes": trained["seconds"] / 60, "train_cpu_minutes": trained["cpu_seconds"] / 60,
        "load_average": {"start": load_start[0], "end": os.getloadavg()[0]}, "compute": asdict(plan),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
    })
    figures = " ".join(f"{r} {v:.3f}" for r, v in dice.items())
    _log(f"done: {trained['steps']} steps; {wall / 60:.2f} min wall, {cpu / 60:.2f} min CPU on {plan.device} "
         f"({plan.precision}, {plan.threads} threads)", start)
    _log(f"done: mean Dice on held-out phantoms: {figures}", start)
    print(f"report: {(out / 'evaluation' / 'report.html').resolve()}" if report else "", flush=True)
    return 1 if failed or not result.ok else 0


if __name__ == "__main__":
    sys.exit(main())
