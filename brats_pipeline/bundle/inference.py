"""Inference parts of ``configs/inference.json`` (``evaluate.json`` adds a scorer).

* :func:`inference_preprocessing` is the training's deterministic transforms without the
  label, plus input checks naming the file (:mod:`~brats_pipeline.bundle.input_checks`:
  channel count, NaN/Inf, an empty modality): ``image`` is one 4D NIfTI with the modalities stacked on
  the last axis (MSD style, what MONAI Label sends) or a list of per-modality files;
* :class:`RegionsToLabelsd` turns region channels back into the task's label values;
* :func:`load_network` loads ``models/model.pt`` **strictly** (MONAI Label's own loader is
  not strict: a prefixed or Lightning state dict loads there as random weights);
* :func:`inference_cases`, :class:`LabelWriter`, :class:`CaseScorer` and
  :class:`BundleRunner` predict a datalist or a folder, write label NIfTIs in each input's
  own geometry (atomically, skipping cases already done, going on past a bad case, with a
  manifest) and score them against the truth.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.bundle.input_checks import CheckChannelsd, ReportInputErrors
from brats_pipeline.constants import Task, get_task
from preprocessing.identity import check_case_id, check_case_ids

logger = logging.getLogger(__name__)


def as_device(device: Any) -> Any:
    """A ``torch.device`` from a bundle's ``device`` (a ``torch.device``, or MONAI Label's plain string).

    Raises:
        ValueError: not a device name torch knows.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(str(device))
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc


def inference_preprocessing(
    task: str | Task,
    spacing: Sequence[float] | None = None,
    orientation: str | None = "RAS",
    crop_foreground: bool = True,
    modalities: Sequence[str] | None = None,
) -> Any:
    """The training's deterministic transforms for ``image`` only, with input checks around the loader.

    ``modalities``: a modality subset the network reads (:mod:`brats_pipeline.data.modalities`): only
    those files are loaded, or those channels of a 4D image of every modality of the task.

    Their header checks name the file for a missing, 2D/4D or corrupt file and modalities on different
    grids (:mod:`brats_pipeline.data.input_files`); :class:`CheckChannelsd` after loading fails a case,
    naming the file, for a wrong number of modalities, NaN/Inf or a constant (empty) modality.

    Loads with a MONAI ``LoadImaged`` (MONAI Label wraps it in its own loader) and keeps every
    spatial step invertible, so ``Invertd`` in the postprocessing returns predictions to the
    input's grid. Args as in :func:`brats_pipeline.data.transforms.deterministic_transforms`;
    leave ``spacing`` unset for data already on a 1 mm grid (MONAI >= 1.6 ``Spacingd`` fails
    inside MONAI Label). The checks are wrapped in :class:`~brats_pipeline.bundle.input_checks.ReportInputErrors`,
    so that served by MONAI Label their errors reach the client as HTTP 422 with the message.
    """
    from monai.transforms import Compose, LoadImaged

    from brats_pipeline.data.input_files import CheckFinited, CheckHeadersd
    from brats_pipeline.data.modalities import SelectModalitiesd, select_modalities
    from brats_pipeline.data.transforms import deterministic_transforms

    task = select_modalities(get_task(task), modalities)
    steps = list(deterministic_transforms(task, with_label=False, spacing=spacing, orientation=orientation,
                                          crop_foreground=crop_foreground).transforms)
    # the channel checks see the channels the network reads (after a subset's selection)
    after_load = max(i for i, t in enumerate(steps) if isinstance(t, (LoadImaged, SelectModalitiesd))) + 1
    steps = [*steps[:after_load], CheckChannelsd("image", task), *steps[after_load:]]
    checks = (CheckHeadersd, CheckFinited, CheckChannelsd)
    return Compose([ReportInputErrors(t) if isinstance(t, checks) else t for t in steps])


class RegionsToLabelsd:
    """Region channels ``(R, X, Y, Z)`` (0/1, or probabilities cut at ``threshold``) -> label map ``(1, X, Y, Z)`` uint8.

    Uses ``task.regions_to_labels`` (largest region first, each painted with the label it owns),
    so the output holds the task's own label values (BraTS 2021: 0, 1, 2, 4). Meta data (affine)
    is kept.
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task, threshold: float = 0.5) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.task = get_task(task)
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.keys:
            pred = d[key]
            regions = torch.as_tensor(pred)
            if regions.ndim != 4 or regions.shape[0] != len(self.task.regions):
                raise ValueError(f"{key}: expected {len(self.task.regions)} region channels {self.task.region_names} "
                                 f"of shape (R, X, Y, Z), got {tuple(regions.shape)}")
            labels = self.task.regions_to_labels(regions.float() > self.threshold)[None]
            d[key] = MetaTensor(labels, meta=dict(pred.meta)) if isinstance(pred, MetaTensor) else labels
        return d


def load_network(network: Any, path: str | os.PathLike, device: Any = "cpu") -> Any:
    """Load a plain ``state_dict`` from ``path`` into ``network`` **strictly**; return it on ``device`` in eval mode.

    Raises:
        FileNotFoundError: no weights file (train the bundle, or ``brats-bundle export``).
        ValueError: the file is a Lightning checkpoint, or its keys/shapes do not match the network.
    """
    from brats_pipeline.weights import load_state_dict_strict

    path = Path(path).absolute()  # errors name the file wherever the bundle was run from (bundle_root ".")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights; train the bundle (monai.bundle run) or run "
                                f"'brats-bundle export --checkpoint CKPT --bundle DIR'")
    load_state_dict_strict(network, path, plain=True)
    return network.to(as_device(device)).eval()


def inference_cases(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    task: str | Task = "brats2021",
    labelled: bool = False,
    fold: int | None = None,
    modalities: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Cases to predict: ``{"case_id", "image"[, "label"]}``.

    Sources, first match wins: the ``datalist`` file (every case: ``training``, then
    ``testing``); ``dataset_dir/datalist.json``; else the NIfTI files directly in ``dataset_dir``
    (each a 4D stacked case, MSD style, named by its file) and the case folders in the task's
    layout under ``dataset_dir`` (per-modality files), both. A case folder that cannot be used
    (a missing modality, an unsafe name) keeps its ``problem`` (``"<file>: <what>"``), which
    :class:`BundleRunner` reports as that case's failure.

    Args:
        dataset_dir: folder (see above).
        datalist: datalist JSON (wins over ``dataset_dir``).
        task: the bundle's task (checked against a datalist's, used for discovery).
        labelled: only cases with a ``label`` (evaluation); an error if there are none.
        fold: only the labelled cases of this fold (needs a datalist with folds).
        modalities: a modality subset the network reads: a case lists only those files (the others
            need not exist; case folders are searched for those only), and a case lacking one of
            them keeps a ``problem`` naming the case and the modality.

    Raises:
        FileNotFoundError: the datalist or the folder does not exist.
        ValueError: no cases, a datalist of another task, or a case id that is not a safe file name or appears twice.
    """
    from brats_pipeline.data.datalist import load_datalist
    from brats_pipeline.data.discovery import discover_cases
    from brats_pipeline.data.modalities import datalist_modalities, select_cases, select_modalities
    from preprocessing.io import NIFTI_SUFFIXES, strip_nifti_suffix

    task = select_modalities(get_task(task), modalities)
    listed = None
    if not datalist and dataset_dir and (Path(dataset_dir) / "datalist.json").is_file():
        datalist = Path(dataset_dir) / "datalist.json"
    if datalist:
        loaded = load_datalist(datalist)
        if get_task(loaded["task"]).name != task.name:
            raise ValueError(f"{datalist}: datalist of task {loaded['task']!r}, but the bundle is for {task.name!r}")
        training = loaded["training"]
        if fold is not None:
            training = [e for e in training if e.get("fold") == fold]
        cases = training + ([] if (labelled or fold is not None) else loaded.get("testing", []))
        where, listed = str(datalist), datalist_modalities(loaded)
    else:
        if not dataset_dir or not Path(dataset_dir).is_dir():
            raise FileNotFoundError(f"input folder {dataset_dir!r} not found; pass --dataset_dir DIR or --datalist FILE")
        if fold is not None:
            raise ValueError(f"fold={fold} needs a datalist with folds; {dataset_dir} has no datalist.json")
        root = Path(dataset_dir)
        files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        cases = [{"case_id": strip_nifti_suffix(p.name), "image": str(p)} for p in files]
        try:  # case folders too: a stray file beside them is one more case, failing by name if it is no stacked input
            found = discover_cases(root, task)
        except ValueError:  # no case folder: stacked files only (MSD style)
            if not cases:
                raise
            found = []
        cases += [{"case_id": c.case_id, "image": c.image, **({"label": c.label} if c.label else {}),
                   **({"problem": f"{c.problem_file}: {c.problem}"} if c.problem else {})} for c in found]
        where = str(root)
    cases = select_cases([c for c in cases if c.get("label") or not labelled], task, listed)
    check_case_ids(((case_id_of(c), f"the case of {image_files(c)[0]}") for c in cases if not c.get("problem")), where)
    if not cases:
        raise ValueError(f"{where}: no {'labelled ' if labelled else ''}cases found"
                         + (f" in fold {fold}" if fold is not None else ""))
    return cases


def case_id_of(case: Mapping[str, Any]) -> str:
    """``case_id`` of a case, else its folder (several modality files) or file name without suffix."""
    from preprocessing.io import strip_nifti_suffix

    if case.get("case_id"):
        return str(case["case_id"])
    files = image_files(case)
    return Path(files[0]).parent.name if len(files) > 1 else strip_nifti_suffix(Path(files[0]).name)


def image_files(case: Mapping[str, Any]) -> list[str]:
    image = case.get("image")
    files = [image] if isinstance(image, (str, os.PathLike)) else list(image or [])
    if not files:
        raise ValueError(f"case {case.get('case_id', '?')}: no 'image'")
    return [str(f) for f in files]


class LabelWriter:
    """Write a case's label map as ``<output_dir>/<case_id>_<postfix>.nii.gz`` on its input's own grid.

    The affine is the first input file's (read from its header); the label's shape must equal
    the input's spatial shape. Written atomically, as uint8.
    """

    def __init__(self, output_dir: str | os.PathLike, postfix: str = "seg") -> None:
        self.output_dir = Path(output_dir)
        self.postfix = postfix

    def path_for(self, case: Mapping[str, Any]) -> Path:
        return self.output_dir / f"{check_case_id(case_id_of(case))}{f'_{self.postfix}' if self.postfix else ''}.nii.gz"

    def __call__(self, case: Mapping[str, Any], label: np.ndarray) -> Path:
        from preprocessing.io import read_geometry, write_nifti

        geometry = read_geometry(image_files(case)[0], ndim=(3, 4))
        if tuple(label.shape) != geometry.spatial_shape:
            raise ValueError(f"case {case_id_of(case)}: label shape {tuple(label.shape)} differs from the input's "
                             f"{geometry.spatial_shape} ({geometry.path})")
        return write_nifti(np.asarray(label, dtype=np.uint8), geometry.affine, self.path_for(case))


class CaseScorer:
    """Score label maps against each case's ``label`` file (BraTS metrics per region), then summarise.

    Writes ``metrics.csv`` (one row per case and region) and ``metrics_summary.json``
    (:func:`brats_pipeline.metrics.aggregate`) to ``output_dir`` in :meth:`finish`.
    """

    def __init__(self, task: str | Task, output_dir: str | os.PathLike) -> None:
        self.task = get_task(task)
        self.output_dir = Path(output_dir)
        self.results: list[tuple[str, dict[str, dict[str, float]]]] = []

    def __call__(self, case: Mapping[str, Any], label: np.ndarray) -> dict[str, dict[str, float]]:
        from brats_pipeline.metrics import case_metrics_from_labels
        from preprocessing.io import read_array

        if not case.get("label"):
            raise ValueError(f"case {case_id_of(case)}: no 'label' to score against")
        truth, geometry = read_array(case["label"], dtype=np.int32)
        if truth.shape != tuple(label.shape):
            raise ValueError(f"{case['label']}: shape {truth.shape} differs from the prediction's {tuple(label.shape)}")
        self.task.check_labels(truth, source=str(case["label"]))
        metrics = case_metrics_from_labels(label, truth, self.task, spacing=geometry.spacing)
        self.results.append((case_id_of(case), metrics))
        return metrics

    def finish(self) -> dict[str, Any]:
        """Write ``metrics.csv`` and ``metrics_summary.json``; return the summary (empty if nothing was scored)."""
        import csv
        import io

        from brats_pipeline.metrics import METRIC_NAMES, aggregate
        from preprocessing.io import atomic_path, write_json

        if not self.results:
            return {}
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["case_id", "region", *METRIC_NAMES])
        for case_id, metrics in self.results:
            for region, values in metrics.items():
                writer.writerow([case_id, region, *(f"{values[m]:.6g}" for m in METRIC_NAMES)])
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        summary = {"task": self.task.name, "cases": len(self.results), "regions": aggregate(m for _, m in self.results)}
        write_json(summary, self.output_dir / "metrics_summary.json")
        for region, stats in summary["regions"].items():
            logger.info("%s: Dice %.4f (mean over %d cases), HD95 %.2f mm", region, stats["dice"]["mean"],
                        len(self.results), stats["hd95"]["mean"])
        return summary


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc`` (MONAI wraps a transform's error in ``RuntimeError("applying transform ...")``).

    An error naming a file (:class:`preprocessing.io.ImageFileError`) is the cause as reported, not
    the library's error under it (nibabel's ``EOFError`` of a truncated file names none).
    """
    from preprocessing.io import ImageFileError

    while exc.__cause__ is not None and not isinstance(exc, ImageFileError):
        exc = exc.__cause__
    return exc


@dataclass
class CaseOutcome:
    """What happened to one case in a :class:`BundleRunner` run (``status``: ok, skipped, failed)."""

    case_id: str
    status: str
    output: str = ""
    error: str = ""


class BundleRunner:
    """``evaluator`` of ``inference.json``: predict each case, write its label map, optionally score it.

    Per case: preprocessing (``dataset[i]``), sliding-window inference, postprocessing
    (sigmoid, ``Invertd`` back to the input grid, threshold, regions -> labels), then
    ``writer`` and ``scorer``. A case whose output exists is not predicted again (its saved
    label is scored) unless ``overwrite``. A failing case is recorded and the run goes on;
    ``manifest.json`` beside the outputs lists every case's outcome, and :meth:`run` raises
    at the end if any case failed (so ``monai.bundle run`` exits non-zero).

    Args:
        dataset: a MONAI ``Dataset`` (``data`` = cases, ``transform`` = preprocessing).
        network: the loaded network (:func:`load_network`).
        inferer: e.g. ``SlidingWindowInferer``.
        postprocessing: dictionary transform producing ``pred`` as a ``(1, X, Y, Z)`` label map.
        writer: :class:`LabelWriter`.
        scorer: :class:`CaseScorer` or ``None``.
        device: where the network runs.
        amp: bf16 autocast on CUDA.
        overwrite: predict cases whose output already exists.
    """

    def __init__(
        self,
        dataset: Any,
        network: Any,
        inferer: Any,
        postprocessing: Any,
        writer: LabelWriter,
        scorer: CaseScorer | None = None,
        device: Any = "cpu",
        amp: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.dataset, self.network, self.inferer, self.postprocessing = dataset, network, inferer, postprocessing
        self.writer, self.scorer = writer, scorer
        self.device, self.amp, self.overwrite = as_device(device), bool(amp), bool(overwrite)

    def predict(self, data: Mapping[Hashable, Any]) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of one preprocessed case."""
        import contextlib

        import torch

        image = data["image"]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp and self.device.type == "cuda"
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            logits = self.inferer(torch.as_tensor(image)[None].to(self.device), self.network)
        out = self.postprocessing({**data, "pred": logits[0].float().cpu()})
        label = np.asarray(torch.as_tensor(out["pred"]).cpu().numpy())
        return label[0] if label.ndim == 4 else label

    def run(self) -> dict[str, Any]:
        """Process every case; return ``{"cases", "ok", "skipped", "failed", "summary"}``."""
        from preprocessing.io import read_array, write_json

        outcomes: list[CaseOutcome] = []
        cases = list(self.dataset.data)
        for i, case in enumerate(cases):
            case_id = case_id_of(case)
            try:
                if case.get("problem"):  # found unusable by inference_cases (a missing modality ...)
                    raise ValueError(case["problem"])
                if (out := self.writer.path_for(case)).exists() and not self.overwrite:  # an unsafe id fails here
                    label, status = read_array(out, dtype=np.uint8)[0], "skipped"
                else:
                    label, status = self.predict(self.dataset[i]), "ok"
                    self.writer(case, label)
                if self.scorer is not None:
                    self.scorer(case, label)
                outcomes.append(CaseOutcome(case_id, status, str(out)))
                logger.info("[%d/%d] %s: %s", i + 1, len(cases), case_id, "done" if status == "ok" else "output exists")
            except Exception as exc:  # one bad case must not stop the batch; recorded and re-raised at the end
                cause = root_cause(exc)
                outcomes.append(CaseOutcome(case_id, "failed", error=f"{type(cause).__name__}: {cause}"))
                logger.error("[%d/%d] %s failed: %s", i + 1, len(cases), case_id, cause)
        summary = self.scorer.finish() if self.scorer is not None else {}
        counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
        write_json({"cases": [o.__dict__ for o in outcomes], **counts}, self.writer.output_dir / "manifest.json")
        if counts["failed"]:
            bad = "; ".join(f"{o.case_id}: {o.error}" for o in outcomes if o.status == "failed")
            raise RuntimeError(f"{counts['failed']} of {len(cases)} cases failed ({bad}); "
                               f"see {self.writer.output_dir / 'manifest.json'}")
        return {"cases": len(cases), **counts, "summary": summary}

