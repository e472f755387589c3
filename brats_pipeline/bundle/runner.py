"""The ``evaluator`` of ``configs/inference.json``: predict each case, write its label map, optionally score it.

:class:`BundleRunner` runs the bundle's preprocessing, then the network through the bundle's
inferer with :class:`~brats_pipeline.inference.Predictor` (the one inference engine, the very one
``brats-infer --bundle`` uses), then the bundle's postprocessing, case by case;
:class:`LabelWriter` writes each label NIfTI in its input's own geometry (atomically), and
:class:`CaseScorer` (``evaluate.json``) scores it against the truth. Cases already done are
skipped, a bad case is recorded (:class:`CaseOutcome`, its error's :func:`root_cause`) and the
run goes on, and ``manifest.json`` lists every case's outcome.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brats_pipeline.bundle.cases import case_id_of, image_files
from brats_pipeline.bundle.inference import as_device
from brats_pipeline.constants import Task, get_task
from preprocessing.identity import check_case_id

logger = logging.getLogger(__name__)


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

    Per case: preprocessing (``dataset[i]``), the network's logits through ``inferer`` by a
    :class:`~brats_pipeline.inference.Predictor` built from ``network``, ``task`` and ``inferer``
    (:meth:`~brats_pipeline.inference.Predictor.logits`: channel checks, bf16 autocast of the
    network on CUDA; the engine of ``brats-infer``), then ``postprocessing`` (activation,
    ``Invertd`` back to the input grid, threshold, regions or classes -> labels), ``writer`` and
    ``scorer``. The three ids MONAI Label runs itself (``preprocessing``, ``inferer``,
    ``postprocessing``) are the bundle's, so ``monai.bundle run``, MONAI Label and ``brats-infer
    --bundle`` write the same labels. A case whose output exists is not predicted again (its saved
    label is scored) unless ``overwrite``. A failing case is recorded and the run goes on;
    ``manifest.json`` beside the outputs lists every case's outcome, and :meth:`run` raises at
    the end if any case failed (so ``monai.bundle run`` exits non-zero).

    Args:
        dataset: a MONAI ``Dataset`` (``data`` = cases, ``transform`` = preprocessing).
        network: the loaded network (:func:`~brats_pipeline.bundle.inference.load_network`).
        inferer: the bundle's ``inferer`` (``SlidingWindowInferer``, ...), injected into the predictor.
        postprocessing: dictionary transform producing ``pred`` as a ``(1, X, Y, Z)`` label map
            from the logits ``pred`` ``(R, X', Y', Z')``.
        writer: :class:`LabelWriter`.
        scorer: :class:`CaseScorer` or ``None``.
        device: where the network runs.
        amp: bf16 autocast on CUDA.
        overwrite: predict cases whose output already exists.
        task: the bundle's task (channel checks); ``modalities``, ``output_mode``: the bundle's, if it has them.
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
        task: str | Task | None = None,
        modalities: Sequence[str] | None = None,
        output_mode: str = "sigmoid",
    ) -> None:
        from brats_pipeline.inference import Predictor

        if task is None:
            raise ValueError("BundleRunner needs the bundle's task: add '\"task\": \"@task\"' to the evaluator of inference.json")
        self.dataset, self.postprocessing = dataset, postprocessing
        self.writer, self.scorer, self.overwrite = writer, scorer, bool(overwrite)
        self.predictor = Predictor(network, task, inferer=inferer, device=as_device(device), amp=amp,
                                   modalities=modalities, output_mode=output_mode, read_threads=1)

    def predict(self, data: Mapping[Hashable, Any]) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of one preprocessed case: :meth:`Predictor.logits`, then ``postprocessing``."""
        import torch

        logits = self.predictor.logits(data["image"]).cpu().clone()  # clone: a plain tensor, not an inference-mode one
        out = self.postprocessing({**data, "pred": logits})
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
