"""LGG cross-validation benchmark: the cases in memory, the CPU-time budget, Dice, result files.

The patients of ``../shared/data/lgg`` are found and split into patient-level folds by the
project's datalist builder (:func:`brats_pipeline.data.datalist.build_datalist`, the code of
``brats-datalist --task lgg --folds 5``). Each volume is decoded once per process and kept in
memory: image ``(3, X, Y, Z)`` float32 in the task's channel order (t1, flair, t1c), z-scored
per channel over its non-zero voxels (MONAI ``NormalizeIntensity(nonzero=True,
channel_wise=True)``), and the label ``(X, Y, Z)`` uint8 in {0, 1}. Axis 2 is axial.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class LggCase:
    """One patient, decoded.

    Args:
        case_id: the datalist's case id (the patient folder's name).
        fold: its cross-validation fold.
        image: ``(3, X, Y, Z)`` float32, channels t1, flair, t1c, normalised (module docstring).
        label: ``(X, Y, Z)`` uint8 in {0, 1}.
        affine: the label file's 4×4 affine (predictions are written with it).
        files: ``{"image": [t1, flair, t1c], "label": seg}`` paths, for methods that read files.
    """

    case_id: str
    fold: int
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    files: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodRun:
    """What one method did on one fold.

    Args:
        predictions: ``case_id → (X, Y, Z)`` uint8 label volume in the input's geometry.
        steps: optimiser steps done.
        train_cpu_s: process CPU seconds spent training (the budgeted part).
        train_wall_s: wall seconds spent training.
        infer_cpu_s: process CPU seconds of inference on the held-out patients (not budgeted).
        infer_wall_s: wall seconds of that inference.
        extra: anything else worth recording (epochs, final loss, batch, ...).
    """

    predictions: dict[str, np.ndarray]
    steps: int
    train_cpu_s: float
    train_wall_s: float
    infer_cpu_s: float = 0.0
    infer_wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Budget:
    """A compute budget counted in this process's CPU time (all threads), or wall time on CUDA.

    On a CPU the clock is ``time.process_time()``: other work on the machine slows a run
    without changing how much computing it gets. On CUDA it is wall time with the device
    synchronised by the caller (the process's CPU time there mostly measures waiting).

    Args:
        seconds: the budget.
        device: where training runs.
    """

    def __init__(self, seconds: float, device: torch.device | str = "cpu") -> None:
        if not seconds > 0:
            raise ValueError(f"budget must be positive seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.clock = time.perf_counter if torch.device(device).type == "cuda" else time.process_time
        self.clock_name = "wall (CUDA)" if torch.device(device).type == "cuda" else "process CPU"
        self._start_clock = self.clock()
        self._start_cpu, self._start_wall = time.process_time(), time.perf_counter()

    def used(self) -> float:
        """Budget seconds used since the start."""
        return self.clock() - self._start_clock

    def fraction(self) -> float:
        """Fraction of the budget used (may pass 1 by the last step)."""
        return self.used() / self.seconds

    def exhausted(self) -> bool:
        """True once the budget is spent."""
        return self.used() >= self.seconds

    def cpu_s(self) -> float:
        """Process CPU seconds since the start."""
        return time.process_time() - self._start_cpu

    def wall_s(self) -> float:
        """Wall seconds since the start."""
        return time.perf_counter() - self._start_wall


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice 2|A∩B| / (|A| + |B|) of two binary volumes of one shape; 1.0 when both are empty.

    Raises:
        ValueError: the shapes differ.
    """
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the label's {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def summarise(dices: dict[str, float]) -> dict[str, Any]:
    """Mean, median, minimum and count below 0.5 of per-patient Dice values."""
    values = list(dices.values())
    if not values:
        return {"patients": 0}
    return {
        "patients": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "below_0.5": sum(v < 0.5 for v in values),
    }


def _normalise(image: np.ndarray) -> np.ndarray:
    from monai.transforms import NormalizeIntensity

    out = NormalizeIntensity(nonzero=True, channel_wise=True)(image.astype(np.float32))
    return np.asarray(out, dtype=np.float32)


def load_lgg_cases(root: str | os.PathLike, num_folds: int = 5, seed: int = 0, limit: int | None = None) -> list[LggCase]:
    """Find, split and decode the LGG patients under ``root`` (see the module docstring).

    Args:
        root: the ``lgg`` folder (patient folders ``<ID>/<ID>_{t1,flair,t1c,seg}.nii.gz``).
        num_folds: patient-level folds (the datalist builder's assignment, seed ``seed``).
        seed: fold seed.
        limit: keep only the first ``limit`` patients (sorted ids) and split those into
            ``num_folds`` folds (smoke tests).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no usable labelled patient, or fewer patients than folds.
    """
    import nibabel as nib

    from brats_pipeline.data.datalist import assign_folds, build_datalist

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LGG data folder not found")
    if limit is not None and limit < 1:
        raise ValueError(f"patients limit must be at least 1, got {limit}")
    datalist = build_datalist(root, "lgg", folds=1, seed=seed, check="header")
    entries = sorted(datalist["training"], key=lambda e: e["case_id"])
    if not entries:
        raise ValueError(f"{root}: no labelled LGG patient found ({len(datalist['skipped'])} skipped)")
    if limit is not None:
        entries = entries[:limit]
    folds = assign_folds([e["case_id"] for e in entries], "lgg", num_folds, seed)
    cases = []
    for e in entries:
        images = [nib.load(p) for p in e["image"]]
        seg = nib.load(e["label"])
        image = np.stack([np.asanyarray(im.dataobj) for im in images])
        label = (np.asanyarray(seg.dataobj) > 0).astype(np.uint8)
        if image.shape[1:] != label.shape:
            raise ValueError(f"{e['label']}: label shape {label.shape} differs from the images' {image.shape[1:]}")
        cases.append(
            LggCase(
                case_id=e["case_id"],
                fold=folds[e["case_id"]],
                image=_normalise(image),
                label=label,
                affine=seg.affine.copy(),
                files={"image": list(e["image"]), "label": e["label"]},
            )
        )
    return cases


def split(cases: Sequence[LggCase], fold: int) -> tuple[list[LggCase], list[LggCase]]:
    """``(train, test)``: the cases outside ``fold`` and those in it."""
    test = [c for c in cases if c.fold == fold]
    if not test:
        raise ValueError(f"fold {fold} has no patient (folds present: {sorted({c.fold for c in cases})})")
    return [c for c in cases if c.fold != fold], test


def write_fold_outputs(
    out_dir: Path, method: str, fold: int, cases: Sequence[LggCase], run: MethodRun, save_predictions: bool
) -> dict[str, float]:
    """Score ``run`` on ``cases``; write ``<method>/fold<k>.csv`` and the prediction files.

    Predictions go to ``<out>/<method>/fold<k>/<case_id>.nii.gz`` (uint8, the label's affine).
    Returns ``case_id → Dice``.

    Raises:
        ValueError: a held-out case has no prediction, or one of the wrong shape.
    """
    from preprocessing.io import atomic_path, write_nifti

    scores: dict[str, float] = {}
    rows = []
    for case in cases:
        if case.case_id not in run.predictions:
            raise ValueError(f"{method}: no prediction for held-out case {case.case_id}")
        pred = np.asarray(run.predictions[case.case_id], dtype=np.uint8)
        scores[case.case_id] = dice(pred, case.label)
        rows.append((case.case_id, fold, f"{scores[case.case_id]:.6f}", int((pred > 0).sum()), int(case.label.sum())))
        if save_predictions:
            write_nifti(pred, case.affine, out_dir / method / f"fold{fold}" / f"{case.case_id}.nii.gz", dtype=np.uint8)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("case_id", "fold", "dice", "pred_voxels", "truth_voxels"))
    writer.writerows(rows)
    path = out_dir / method / f"fold{fold}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return scores
