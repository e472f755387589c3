"""The LGG recipe's data pipeline: full training step vs the network's compute-only step, in one run.

Issue target: the data pipeline (2.5D slices decoded once, ``BatchAugment`` on the batch) must
not make a training step more than 1.2x the network's compute-only step.

The recipe (``brats_pipeline/configs/lgg_cpu.yaml``) is built by ``brats-train``'s own CLI on
the first ``--patients`` LGG patients (``../shared/data/lgg``), then timed two ways, in this
process, with the recipe's precision (bf16 autocast only on CPUs with native bf16) and threads:

1. **compute only**: one augmented batch, captured from the real loader, stepped ``--steps``
   times (forward + DiceCE + backward + AdamW), nothing else;
2. **full step**: ``Trainer.fit`` for ``--warmup + --steps`` steps, timed from the end of one
   step to the end of the next (the loader's slice sampling, collation, ``BatchAugment``,
   the step, Lightning's bookkeeping), after ``--warmup`` steps.

Both are counted in CPU time — this process's (all threads) plus that of its live children,
the loader workers, read from ``/proc`` — and in wall time; the ratios are printed with the
target. The recipe uses ``num_workers: 0``: the slice sampling and the batched augmentation
run in a background thread of this process, one batch ahead, beside the step
(:class:`~brats_pipeline.data.loaders.ThreadedAugmentLoader`; ``--no-thread``: in the step);
``--workers 1`` runs them in a loader worker process instead
(:meth:`BratsDataModule.augments_in_loader`). Beside the step, the wall ratio is the one that
counts. Large tensors reuse freed memory (:func:`brats_pipeline.devices.reuse_freed_memory`,
as ``brats-train`` does).
Also printed: slices per CPU-second of the full step, to set beside ``bench_networks.py``'s
figure for the stock 2D peer.

    python benchmarks/bench_lgg_step.py --patients 10 --steps 30 --threads 1
    python benchmarks/bench_lgg_step.py --patients 10 --steps 30 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import PRECISIONS, set_up_compute  # noqa: E402
from _lgg_recipe import recipe_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.2


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's live child processes (the loader workers), from ``/proc``."""
    me, total, tick = str(os.getpid()), 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def cpu_now() -> float:
    return time.process_time() + children_cpu_s()


class StepClock(Callback):
    """CPU and wall seconds between consecutive step ends, after ``warmup`` steps; keeps one augmented batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.cpu, self.wall, self.batch = warmup, [], [], None
        self._last: tuple[float, float] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.batch is None:
            self.batch = {k: v.detach().clone() for k, v in batch.items() if torch.is_tensor(v)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = (cpu_now(), time.perf_counter())
        if self._last is not None and trainer.global_step > self.warmup:
            self.cpu.append(now[0] - self._last[0])
            self.wall.append(now[1] - self._last[1])
        self._last = now


def build_recipe(data: Path, patients: int, tmp: Path, precision: str, steps: int, workers: int = 0, thread: bool = True) -> object:
    """``lgg_cpu.yaml`` through ``brats-train``'s CLI on the first ``patients`` patients (no validation, no logger),
    ``workers`` loader workers, the augmentation in a background thread or not."""
    from brats_pipeline.data.datalist import build_datalist, write_datalist

    datalist = build_datalist(data, "lgg", folds=5, seed=0)
    datalist["training"] = datalist["training"][:patients]
    write_datalist(datalist, tmp / "datalist.json")
    cli = recipe_cli(tmp / "datalist.json", tmp, torch.device("cpu"), precision, max_steps=steps)
    cli.datamodule.hparams.num_workers = workers
    cli.datamodule.hparams.augment_thread = thread
    return cli


def compute_only(module: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, precision: str) -> tuple[list[float], list[float]]:
    """CPU and wall seconds of ``steps`` forward + loss + backward + AdamW steps on one batch (after 2 untimed)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    cpu, wall = [], []
    module.train()
    for i in range(steps + 2):
        t = (time.process_time(), time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = module.loss_fn(module.network(batch["image"]), batch["label"])
        loss.backward()
        optimizer.step()
        if i >= 2:
            cpu.append(time.process_time() - t[0])
            wall.append(time.perf_counter() - t[1])
    return cpu, wall


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BRATS_SHARED_DATA", REPO.parent / "shared" / "data")) / "lgg")
    p.add_argument("--patients", type=int, default=10, help="LGG patients to draw slices from (default 10)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    p.add_argument("--workers", type=int, default=0, help="loader workers (default 0, the recipe's)")
    p.add_argument("--no-thread", action="store_true", help="augment in the step, not in a background thread")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"bench_lgg_step: SKIPPED: no LGG data at {args.data}")
        return 0
    _, precision, threads, info = set_up_compute("cpu", args.precision, args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_lgg_step_") as tmp:
        cli = build_recipe(args.data, args.patients, Path(tmp), precision, args.warmup + args.steps + 1, args.workers,
                           not args.no_thread)
        clock = StepClock(args.warmup)
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        compute_cpu, compute_wall = compute_only(cli.model, clock.batch, args.steps, precision)
    batch = int(clock.batch["image"].shape[0])
    full_cpu, full_wall = statistics.median(clock.cpu), statistics.median(clock.wall)
    comp_cpu, comp_wall = statistics.median(compute_cpu), statistics.median(compute_wall)
    result = {
        "machine": info, "patients": args.patients, "workers": args.workers, "thread": not args.no_thread, "batch": batch, "input": list(clock.batch["image"].shape[1:]),
        "full_step": {"cpu_s": full_cpu, "wall_s": full_wall}, "compute_only": {"cpu_s": comp_cpu, "wall_s": comp_wall},
        "ratio_cpu": full_cpu / comp_cpu, "ratio_wall": full_wall / comp_wall, "target": TARGET,
        "slices_per_cpu_s": batch / full_cpu,
    }
    where = "loader workers" if args.workers else ("the step" if args.no_thread else "a background thread")
    print(f"CPU: {info['cpu_model']}; {threads} torch threads, {args.workers} loader workers, augmentation in {where}; "
          f"precision {precision}; batch {batch} x {tuple(clock.batch['image'].shape[1:])}")
    print(f"{'':<16}{'CPU s/step':>12}{'wall s/step':>13}   (median of {args.steps}, after {args.warmup} warm-up steps)")
    print(f"{'compute only':<16}{comp_cpu:>12.3f}{comp_wall:>13.3f}")
    print(f"{'full step':<16}{full_cpu:>12.3f}{full_wall:>13.3f}")
    print(f"full / compute: {result['ratio_cpu']:.2f}x CPU, {result['ratio_wall']:.2f}x wall (target <= {TARGET}x); "
          f"{result['slices_per_cpu_s']:.1f} slices per CPU-second in the full step")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
