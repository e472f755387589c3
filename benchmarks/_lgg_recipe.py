"""The project's LGG recipe in the benchmark, through the project's own parts.

``brats_pipeline/configs/lgg_cpu.yaml`` is built by ``brats-train``'s own CLI
(:func:`brats_pipeline.cli.train.build_cli`, no subcommand): ``BratsDataModule`` (2.5D slices
decoded once, ``BatchAugment`` on the batch), ``BratsSegmentationModule`` (the recipe's network,
loss, AdamW and :class:`~brats_pipeline.schedules.ProgressLR`), a Lightning ``Trainer``; the
held-out patients are then predicted by ``Predictor.from_checkpoint`` on the run's
``last.ckpt``, as a user would.

Budget: the same :class:`_lgg_common.Budget` (process CPU time) as the peers, started before
anything else, so reading and caching the volumes count too. The recipe is a fixed number of
steps with a cosine over them; the benchmark turns the budget into that number:
:class:`BudgetSteps` times the first steps, sets ``max_steps`` to what the rest of the budget
buys and re-binds the schedule to it (re-estimated every 25 steps), and stops the run once the
budget is spent whatever the estimate said.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from _lgg_common import Budget, LggCase, MethodRun
from pytorch_lightning import Callback

RECIPE_CONFIG = Path(__file__).resolve().parents[1] / "brats_pipeline" / "configs" / "lgg_cpu.yaml"


class BudgetSteps(Callback):
    """Fit the run's step count (and its schedule) to a compute budget; stop when it is spent.

    Args:
        budget: the running :class:`Budget`.
        calibrate: steps timed before the first estimate.
        every: re-estimate every this many steps.
    """

    def __init__(self, budget: Budget, calibrate: int = 5, every: int = 25) -> None:
        self.budget, self.calibrate, self.every = budget, calibrate, every
        self._mark: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        step = trainer.global_step
        if self.budget.exhausted():
            trainer.should_stop = True
            return
        if step == 1:
            self._mark = (step, self.budget.used())  # the first step pays for set-up; time from here
            return
        if self._mark is None or step - self._mark[0] < self.calibrate or (step - self._mark[0]) % self.every:
            return
        per_step = (self.budget.used() - self._mark[1]) / (step - self._mark[0])
        total = step + max(1, int((self.budget.seconds - self.budget.used()) / max(per_step, 1e-6)))
        trainer.fit_loop.epoch_loop.max_steps = total
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "bind"):
                per_epoch = trainer.num_training_batches if math.isfinite(float(trainer.num_training_batches)) else None
                config.scheduler.bind(total, per_epoch)


def recipe_cli(
    datalist: Path, root: Path, device: torch.device, precision: str, seed: int = 0, max_steps: int | None = None
) -> object:
    """``lgg_cpu.yaml`` through ``brats-train``'s CLI (not run): every entry of ``datalist`` trains (``--data.fold -1``),
    no validation, no logger, no progress bar, outputs under ``root``; ``max_steps`` replaces the configured steps."""
    from brats_pipeline.cli.train import build_cli

    return build_cli(
        [
            "--config", str(RECIPE_CONFIG), "--seed_everything", str(seed),
            "--data.datalist", str(datalist), "--data.fold", "-1",
            "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu",
            "--trainer.precision", "bf16-mixed" if precision == "bf16" else "32-true",
            "--trainer.default_root_dir", str(root), "--trainer.logger", "false",
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            *([] if max_steps is None else ["--trainer.max_steps", str(max_steps)]),
        ],
        run=False,
    )


def run_recipe(
    train_cases: Sequence[LggCase],
    test_cases: Sequence[LggCase],
    budget: float,
    device: torch.device,
    precision: str,
    seed: int = 0,
    full: bool = False,
    keep_checkpoint: Path | None = None,
    steps: int | None = None,
) -> MethodRun:
    """Train ``lgg_cpu.yaml`` on ``train_cases`` within ``budget``, predict ``test_cases`` (see module docstring).

    ``full=True`` (method ``recipe_full``) trains the recipe as configured (its own ``max_steps``,
    the shipped bundle's training) and only times it: ``budget`` is ignored.

    Args:
        train_cases: training patients (their ``files`` are read by the project's data module).
        test_cases: held-out patients, predicted from their files.
        budget: seconds of process CPU time (wall on CUDA).
        device: where to train and predict.
        precision: ``fp32`` or ``bf16``.
        seed: the run's seed.
        full: train the configured number of steps instead of fitting them to ``budget``.
        keep_checkpoint: where to copy the trained checkpoint (``bench_lgg.py --keep-checkpoints``),
            e.g. to compare inference settings on the same held-out folds later.
        steps: with ``full``, train this many steps instead of the configured ``max_steps``
            (``bench_lgg.py --recipe-steps``: cross-validate a longer or shorter run of the recipe).
    """
    from brats_pipeline.inference.predictor import Predictor

    clock = Budget(budget, device)
    with tempfile.TemporaryDirectory(prefix="lgg_recipe_") as tmp:
        entries = [
            {"case_id": c.case_id, "image": list(c.files["image"]), "label": c.files["label"], "fold": 0 if i == 0 else 1}
            for i, c in enumerate(train_cases)
        ]  # --data.fold -1 trains on every entry; validation (fold 0) is switched off below
        datalist = Path(tmp) / "datalist.json"
        datalist.write_text(json.dumps({"task": "lgg", "training": entries}), encoding="utf-8")
        cli = recipe_cli(datalist, Path(tmp), device, precision, seed, max_steps=steps if full else 100000)
        if not full:
            cli.trainer.callbacks.append(BudgetSteps(clock))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        steps, train_cpu, train_wall = cli.trainer.global_step, clock.cpu_s(), clock.wall_s()
        last = next(Path(tmp).rglob("last.ckpt"))  # LastCheckpoint: every epoch end, including the one a stop cuts short
        if keep_checkpoint is not None:
            keep_checkpoint.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(last, keep_checkpoint)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        predictor = Predictor.from_checkpoint(last, device=device, amp=precision == "bf16")
        predictions: dict[str, np.ndarray] = {}
        for case in test_cases:
            result = predictor.predict_case({"case_id": case.case_id, "image": list(case.files["image"])})
            predictions[case.case_id] = result.label.astype(np.uint8)
        predictor.close()
    return MethodRun(
        predictions=predictions, steps=int(steps), train_cpu_s=train_cpu, train_wall_s=train_wall,
        infer_cpu_s=time.process_time() - cpu0, infer_wall_s=time.perf_counter() - wall0,
        extra={"config": RECIPE_CONFIG.name,
               "budget": ("configured steps" if steps is None else f"{steps} steps") if full else "fitted to the budget"},
    )


def run_recipe_full(*args, **kwargs) -> MethodRun:  # noqa: ANN002, ANN003
    """:func:`run_recipe` with the recipe's configured steps (the shipped bundle's training), budget ignored."""
    return run_recipe(*args, full=True, **kwargs)
