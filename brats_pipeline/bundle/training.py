"""Training parts of ``configs/train.json``: cases of a fold, the data module, devices, weights out.

* :func:`split_cases` is ``train#dataset#data`` / ``validate#dataset#data``: one side of a fold of
  the dataset's datalist (MONAI Label's trainer writes its own list there);
* :func:`bundle_datamodule` gives ``train#dataset`` and ``validate#dataset`` (MONAI datasets with the
  config's transforms) to a :class:`~brats_pipeline.data.datamodule.BratsDataModule`;
* :func:`accelerator_of`, :func:`devices_of`, :func:`precision_of`, :func:`ddp_devices` map
  the bundle's ``device`` (a ``torch.device``, or a string such as MONAI Label's ``"cuda"``)
  to Lightning ``Trainer`` arguments;
* :class:`SaveBestNetwork` writes ``models/model.pt`` (the plain network ``state_dict`` of
  the best epoch) at the end of ``fit``; the package also exports
  :mod:`brats_pipeline.callbacks`' ``TrainingCurves`` (loss and Dice) and ``SlurmRequeue``
  (preemption under Slurm), which ``train.json`` names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import Callback

from brats_pipeline.bundle.cases import case_id_of
from brats_pipeline.bundle.inference import as_device
from brats_pipeline.constants import Task, get_task
from brats_pipeline.weights import network_state_dict, read_checkpoint, save_state_dict

logger = logging.getLogger(__name__)

SPLIT_PARTS = ("train", "validate")


def accelerator_of(device: Any) -> str:
    """Lightning ``accelerator`` for a bundle ``device`` (``torch.device`` or ``"cpu"``/``"cuda[:N]"``)."""
    kind = as_device(device).type
    return {"cuda": "gpu", "cpu": "cpu", "mps": "mps"}.get(kind, kind)


def devices_of(device: Any) -> Any:
    """Lightning ``devices`` for one process: ``[N]`` for ``cuda:N``, else ``1``."""
    dev = as_device(device)
    return [dev.index] if dev.type == "cuda" and dev.index is not None else 1


def precision_of(device: Any, amp: bool = True) -> str:
    """``bf16-mixed`` when ``amp`` is on and the device runs bf16 fast, else ``32-true``.

    The project's precision rule (:func:`brats_pipeline.devices.lightning_precision_for`):
    bf16 on CUDA, and on a CPU only where it has native bf16 (AMX / AVX512-BF16); elsewhere
    bf16 autocast on a CPU is emulated and 25-35x slower than fp32.
    """
    from brats_pipeline.devices import cpu_has_native_bf16

    kind = as_device(device).type
    return "bf16-mixed" if amp and (kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16())) else "32-true"


def ddp_devices() -> Any:
    """Lightning ``devices`` for DDP: the processes per node under ``torchrun``, else every visible GPU."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local else "auto"


def load_cases(
    dataset_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None,
    task: str | Task,
    output_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """The ``training`` entries (with their folds) of the dataset's datalist: ``datalist`` if that file exists, else
    one discovered in ``dataset_dir``; read by the one case reader (:func:`brats_pipeline.data.cases.read_cases`:
    ids checked as safe file names, a datalist of another task refused).

    A discovered datalist (5 patient-level folds, fewer for fewer patients; seed 0; header
    checks) is written to ``output_dir/datalist.json`` so that the folds of a run are on record;
    a case that fails the checks is left out with a warning naming its file and the problem.

    Raises:
        FileNotFoundError: neither the datalist file nor the dataset folder exists.
        ValueError: the datalist is of another task, or has no training cases.
    """
    from brats_pipeline.data.cases import read_cases
    from brats_pipeline.data.datalist import build_datalist, write_datalist
    from brats_pipeline.data.discovery import discover_cases

    task = get_task(task)
    if datalist and Path(datalist).is_file():
        return read_cases(datalist, task, split="training", consumer="bundle")
    if not dataset_dir or not Path(dataset_dir).is_dir():
        raise FileNotFoundError(
            f"dataset folder {dataset_dir!r} not found (and no datalist file {datalist!r}); "
            "pass --dataset_dir DIR (a folder in the task's layout, or one holding datalist.json) or --datalist FILE"
        )
    labelled = {task.patient_id(c.case_id) for c in discover_cases(dataset_dir, task) if c.label}
    built = build_datalist(dataset_dir, task, folds=max(1, min(5, len(labelled))), seed=0, check="header")
    for skipped in built.get("skipped", []):  # a case that cannot be used is left out, by name
        logger.warning("%s: case %s left out: %s: %s", dataset_dir, skipped["case_id"], skipped["file"], skipped["reason"])
    if not output_dir:
        return list(built["training"])
    path = write_datalist(built, Path(output_dir) / "datalist.json")
    logger.info("discovered %d labelled cases in %s; folds written to %s", built["numTraining"], dataset_dir, path)
    return read_cases(path, task, split="training", consumer="bundle")


def split_cases(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    task: str = "brats2021",
    fold: int = 0,
    part: str = "train",
    output_dir: str | None = None,
    modalities: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One side of a cross-validation fold: ``train#dataset#data`` or ``validate#dataset#data`` of ``train.json``.

    MONAI Label's trainer replaces these ids with its own list of ``{"image": ..., "label": ...}``.

    Args:
        dataset_dir: dataset folder (task layout, or holding ``datalist.json``).
        datalist: datalist JSON file (preferred when it exists; see :func:`load_cases`).
        task: the bundle's task.
        fold: validation fold; ``-1`` trains on every fold and validates on fold 0.
        part: ``train`` (the other folds) or ``validate`` (this fold).
        output_dir: where a discovered datalist is recorded.
        modalities: a modality subset the network reads (:mod:`brats_pipeline.data.modalities`): a
            dataset folder is searched for those files only (cases without the others are used).
    """
    from brats_pipeline.data.datalist import split_fold
    from brats_pipeline.data.modalities import select_modalities

    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {SPLIT_PARTS}")
    entries = [dict(e) for e in load_cases(dataset_dir, datalist, select_modalities(get_task(task), modalities), output_dir)
               if e.get("label")]
    if not entries:
        raise ValueError(f"no labelled cases in {datalist or dataset_dir}")
    fold = int(fold)
    train, val = (entries, split_fold(entries, 0)[1]) if fold == -1 else split_fold(entries, fold)
    return train if part == "train" else val


def _training_entry(case: Mapping[str, Any], fold: int, where: str) -> dict[str, Any]:
    for key in ("image", "label"):
        if not case.get(key):
            raise ValueError(f"{where}: case {dict(case)!r} has no {key!r}")
    case_id = case_id_of(case)
    return {"case_id": case_id, "patient_id": case.get("patient_id", case_id), "fold": fold,
            "image": case["image"], "label": case["label"]}


def bundle_datamodule(
    train: Any,
    validate: Any,
    task: str | Task,
    datalist_path: str | os.PathLike,
    **datamodule_kwargs: Any,
) -> Any:
    """A :class:`~brats_pipeline.data.datamodule.BratsDataModule` that trains on ``train#dataset`` and validates on ``validate#dataset``.

    The datasets (``train.json``'s MONAI ``CacheDataset`` objects, or a ``SliceDataset`` for a 2D network)
    are used as given, with their transforms: a transform added to ``train#preprocessing`` or
    ``train#random_transforms`` changes training. Their cases (``.data``) are written as a
    two-fold datalist (training fold 0, validation fold 1) to ``datalist_path``, a record of
    exactly what a run trained on. Without validation cases (MONAI Label's ``val_split`` 0)
    validation uses the training cases with the validation transform; a case in both lists is
    entered twice, the validation copy's ``case_id`` suffixed ``+val`` so that ids stay unique.
    """
    from monai.data import Dataset

    from brats_pipeline.data.datamodule import BratsDataModule
    from preprocessing.io import write_json

    task = get_task(task)
    train_cases = list(getattr(train, "data", None) or [])
    val_cases = list(getattr(validate, "data", None) or [])
    if train_cases and not val_cases:
        logger.warning("no validation cases given: validating on the training cases")
        val_cases = train_cases
        validate = Dataset(train_cases, getattr(validate, "transform", None))
    if not train_cases or not val_cases:
        raise ValueError(f"need training and validation cases, got {len(train_cases)} and {len(val_cases)}")
    entries = [_training_entry(c, 0, "train#dataset") for c in train_cases]
    used = {e["case_id"] for e in entries}
    for case in val_cases:  # a case in both lists keeps one id per entry: the validation copy gets "+val"
        entry = _training_entry(case, 1, "validate#dataset")
        if entry["case_id"] in used:
            entry["case_id"] = f"{entry['case_id']}+val"
        used.add(entry["case_id"])
        entries.append(entry)
    datalist = {"name": "bundle_split", "task": task.name, "num_folds": 2, "training": entries, "testing": [],
                "numTraining": len(entries), "numTest": 0}
    write_json(datalist, datalist_path)
    return BratsDataModule(str(datalist_path), fold=1, train_dataset=train, val_dataset=validate, **datamodule_kwargs)


def _best_checkpoint_callback(trainer: Any) -> Any:
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None):
            return cb
    return None


class SaveBestNetwork(Callback):
    """Lightning callback: at the end of ``fit`` write the best epoch's (or the final) network weights to ``path``.

    "Best" is the ``best_model_path`` of the first ``ModelCheckpoint`` that monitors a metric;
    without one (validation never ran) the final weights are written, with a warning.
    ``weights="final"`` always writes the weights at the end of training (a fixed-length,
    annealed run, whose last step is the model). The file holds the plain network
    ``state_dict`` (no ``network.`` prefix, no optimiser), checked to have exactly the
    network's keys, written by rank 0 only and atomically.

    Args:
        path: destination, normally ``<bundle_root>/models/model.pt``.
        weights: ``best`` (best monitored checkpoint) or ``final``.
    """

    def __init__(self, path: str | os.PathLike, weights: str = "best") -> None:
        if weights not in ("best", "final"):
            raise ValueError(f"unknown weights {weights!r}; choose 'best' or 'final'")
        self.path = Path(path)
        self.weights = weights

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return

        cb = _best_checkpoint_callback(trainer) if self.weights == "best" else None
        best = getattr(cb, "best_model_path", "") if cb is not None else ""
        if best:
            state = network_state_dict(read_checkpoint(best))
            source = f"best checkpoint {best} ({cb.monitor} = {float(cb.best_model_score):.4f})"
        else:
            state = {k: v.detach().cpu() for k, v in pl_module.network.state_dict().items()}
            if self.weights == "final":
                source = f"final weights (step {trainer.global_step})"
            else:
                source = "final weights (no validation ran, so there is no best checkpoint)"
                logger.warning("SaveBestNetwork: writing the %s", source)
        from brats_pipeline.networks import check_state_dict_keys

        check_state_dict_keys(pl_module.network, state, best or "the final weights")
        save_state_dict(state, self.path)
        logger.info("wrote %s from the %s", self.path, source)

