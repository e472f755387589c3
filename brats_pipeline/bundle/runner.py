"""The ``evaluator`` of ``configs/inference.json``: predict each case, write its label map, optionally score it.

:class:`BundleRunner` runs the bundle's preprocessing, then the network through the bundle's
inferer with :class:`~brats_pipeline.inference.Predictor` (the one inference engine, the very one
``brats-infer --bundle`` uses), then the bundle's postprocessing, through the one batch runner
(:func:`preprocessing.batch_runner.run_cases`: reading, compute and writing overlapped, a bad case
recorded and the run going on, ``manifest.json`` as ``brats-infer``'s). :class:`LabelWriter` writes
each label NIfTI in its input's own geometry (atomically) with its resume key in the header: a
re-run skips a case only if its label was made from the same input contents by the same weights
and settings. :class:`CaseScorer` (``evaluate.json``) scores the labels with
:func:`brats_pipeline.evaluation.evaluate_case` (the BraTS metrics of ``brats-evaluate``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
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

    def __call__(self, case: Mapping[str, Any], label: np.ndarray, description: str | None = None) -> Path:
        """Write ``label``; ``description`` (the resume key) goes into the NIfTI header."""
        from preprocessing.io import read_geometry, write_nifti

        geometry = read_geometry(image_files(case)[0], ndim=(3, 4))
        if tuple(label.shape) != geometry.spatial_shape:
            raise ValueError(f"case {case_id_of(case)}: label shape {tuple(label.shape)} differs from the input's "
                             f"{geometry.spatial_shape} ({geometry.path})")
        return write_nifti(np.asarray(label, dtype=np.uint8), geometry.affine, self.path_for(case), description=description)


class CaseScorer:
    """Score written label maps against each case's ``label`` file (:func:`brats_pipeline.evaluation.evaluate_case`:
    BraTS metrics per region, the BraTS HD95), then summarise.

    Writes ``metrics.csv`` (one row per case and region) and ``metrics_summary.json``
    (:func:`brats_pipeline.metrics.aggregate`) to ``output_dir`` in :meth:`finish`.
    """

    def __init__(self, task: str | Task, output_dir: str | os.PathLike) -> None:
        self.task = get_task(task)
        self.output_dir = Path(output_dir)
        self.results: dict[str, dict[str, dict[str, float]]] = {}

    def __call__(self, case: Mapping[str, Any], prediction: str | os.PathLike) -> dict[str, dict[str, float]]:
        from brats_pipeline.evaluation import evaluate_case

        if not case.get("label"):
            raise ValueError(f"case {case_id_of(case)}: no 'label' to score against")
        metrics = evaluate_case(prediction, case["label"], self.task)
        self.results[case_id_of(case)] = metrics
        return metrics

    def finish(self) -> dict[str, Any]:
        """Write ``metrics.csv`` and ``metrics_summary.json``; return the summary (empty if nothing was scored)."""
        from brats_pipeline.evaluation import metrics_csv
        from brats_pipeline.metrics import aggregate
        from preprocessing.io import atomic_path, write_json

        if not self.results:
            return {}
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            tmp.write_text(metrics_csv(self.results), encoding="utf-8")
        summary = {"task": self.task.name, "cases": len(self.results), "regions": aggregate(self.results.values())}
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


class BundleRunner:
    """``evaluator`` of ``inference.json``: predict each case, write its label map, optionally score it.

    Per case: preprocessing (``dataset[i]``), the network's logits through ``inferer`` by a
    :class:`~brats_pipeline.inference.Predictor` built from ``network``, ``task`` and ``inferer``
    (:meth:`~brats_pipeline.inference.Predictor.logits`: channel checks, bf16 autocast of the
    network on CUDA; the engine of ``brats-infer``), then ``postprocessing`` (activation,
    ``Invertd`` back to the input grid, threshold, regions or classes -> labels), ``writer`` and
    ``scorer``. The three ids MONAI Label runs itself (``preprocessing``, ``inferer``,
    ``postprocessing``) are the bundle's, so ``monai.bundle run``, MONAI Label and ``brats-infer
    --bundle`` write the same labels. A case whose label carries the resume key of this run (the
    same input contents, weights and steps) is not predicted again (its saved label is scored)
    unless ``overwrite``. A failing case is recorded and the run goes on; ``manifest.json`` beside
    the outputs lists every case's outcome, and :meth:`run` raises at the end if any case failed
    (so ``monai.bundle run`` exits non-zero).

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
        overwrite: predict every case, even one whose label is current.
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
        """Process every case; return ``{"cases", "ok", "skipped", "failed", "summary"}``.

        Raises:
            RuntimeError: at the end, if any case failed (naming each), so ``monai.bundle run`` exits non-zero.
        """
        from brats_pipeline.inference.batch import (
            admit_cases,
            current_key,
            model_digests,
            prediction_settings,
            resume_key,
        )
        from preprocessing.batch_runner import Manifest, failed_row, pipelined, run_cases
        from preprocessing.outputs import prepare_output_folder

        out_dir = prepare_output_folder(self.writer.output_dir, depth=0)  # removes a killed run's temporary files
        cases = list(self.dataset.data)
        model, steps = model_digests(self.predictor), self.settings()
        settings = {**prediction_settings(self.predictor), **steps}
        manifest = Manifest(out_dir / "manifest.json", {"settings": {**self.predictor.describe(), **steps, "model_sha256": model}},
                            interval=2.0)
        todo = admit_cases(cases, manifest)

        def finished(cid: str, i: int) -> dict[str, Any] | None:
            out = self.writer.path_for(cases[i])
            key = current_key([out], image_files(cases[i]), model, settings)
            return None if key is None else {"reason": "output exists, made from these inputs by this model",
                                             "output": str(out), "key": key}

        @_reporting_root_cause
        def read(i: int) -> tuple[int, Any, str]:
            data = self.dataset[i]  # the bundle's preprocessing (errors name the file), then the contents are keyed
            return i, data, resume_key(image_files(cases[i]), model, settings)

        @_reporting_root_cause
        def compute(loaded: tuple[int, Any, str]) -> tuple[int, np.ndarray, str]:
            i, data, key = loaded
            return i, self.predict(data), key

        def write(cid: str, computed: tuple[int, np.ndarray, str]) -> dict[str, Any]:
            i, label, key = computed
            return {"output": str(self.writer(cases[i], label, description=key)), "key": key}

        execute = pipelined(read, compute, write, read_threads=1, write_threads=1)
        rows = run_cases(todo, execute, manifest, finished=finished, overwrite=self.overwrite, progress="bundle inference",
                         on_failure=lambda row: logger.error("%s failed: %s", row["case_id"], row["error"]))
        if self.scorer is not None:
            index = dict(todo)
            for row in rows:
                if row["status"] in ("ok", "skipped"):
                    try:
                        self.scorer(cases[index[row["case_id"]]], row["output"])
                    except Exception as exc:  # a case whose truth cannot be scored fails, by name
                        manifest.set(failed_row(row["case_id"], root_cause(exc), "score", output=row["output"]), flush=True)
            rows = manifest.rows()
        summary = self.scorer.finish() if self.scorer is not None else {}
        counts = manifest.counts()
        if counts["failed"]:
            bad = "; ".join(f"{r['case_id']}: {r['error']}" for r in rows if r["status"] == "failed")
            raise RuntimeError(f"{counts['failed']} of {len(cases)} cases failed ({bad}); see {manifest.path}")
        return {"cases": len(cases), **counts, "summary": summary}

    def settings(self) -> dict[str, Any]:
        """What of the bundle, besides the network and the predictor's settings, changes a label: its pre- and
        postprocessing steps with their plain settings (in the resume key and the manifest)."""
        return {"preprocessing": _steps(getattr(self.dataset, "transform", None)), "postprocessing": _steps(self.postprocessing)}


def _reporting_root_cause(stage: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``stage``, raising the :func:`root_cause` of its errors (the manifest names the file, not MONAI's wrapper)."""
    def run(arg: Any) -> Any:
        try:
            return stage(arg)
        except Exception as exc:
            raise root_cause(exc) from exc
    return run


def _steps(transform: Any) -> list[Any]:
    """A transform's steps as ``[class name, {plain attribute: value}]`` (nested ``Compose`` and wrappers flattened)."""
    if transform is None:
        return []
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return [step for t in inner for step in _steps(t)]
    plain = (str, int, float, bool, type(None))

    def simple(value: Any) -> bool:
        return isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value))

    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(transform).items())
              if not k.startswith("_") and simple(v)}
    return [[type(transform).__name__, fields]]
