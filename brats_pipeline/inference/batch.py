"""Batch inference: many cases, reading and writing overlapped with compute, a manifest, resumable.

The cases run through the one batch runner (:func:`preprocessing.batch_runner.run_cases`, with its
:func:`~preprocessing.batch_runner.pipelined` executor), as ``brats-preprocess``'s and the bundles' do.

Three stages run at once:

* **loader threads** read and preprocess the next cases (gzip decoding and numpy release the GIL);
* the **calling thread** runs the network and the inversion (the GPU when there is one);
* **writer threads** post-process, encode and write the previous cases.

Outputs per case: ``OUT/<case_id>.nii.gz`` (the task's labels, uint8, input geometry) and, with
``save_probabilities``, ``OUT/probabilities/<case_id>.nii.gz`` (x, y, z, R float32), the
probabilities written first so that a label file on disk means the case is complete. Every
file is written atomically (temporary name + rename): a killed job leaves no half file, and the
temporary files of a killed run are removed by the next run into ``OUT``
(:func:`preprocessing.outputs.prepare_output_folder`). Inputs are only read. Case ids must be
safe file names (:func:`preprocessing.identity.check_case_id`), so nothing is written outside ``OUT``.

**Resuming**: every output carries its *resume key* in its NIfTI header (``descrip``:
``brats-infer <sha256>``), the hash of the input files' contents, the model files' contents
(:func:`model_digests`) and the settings that change predictions (:func:`prediction_settings`).
A case is skipped when all its outputs exist and carry the key this run would write; a
replaced input, another model or other settings redo it. Paths, the device and bf16 autocast
are not part of the key (the same model on a moved dataset, or on another machine, resumes).

The manifest (``OUT/manifest.json``; one per shard) is rewritten atomically as cases finish::

    {"settings": {..., "model_sha256": [...]}, "counts": {"ok": 9, "failed": 1, "skipped": 0},
     "cases": [{"case_id": ..., "status": "ok" | "failed" | "skipped", "output": ..., "error": ...,
                "inputs": [...], "key": ..., "seconds": {"read": ..., "compute": ..., "write": ...}}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from preprocessing.identity import check_case_id, content_digest
from preprocessing.outputs import prepare_output_folder
from preprocessing.sharding import case_key
from preprocessing.sharding import select_shard as _select_shard

if TYPE_CHECKING:
    from brats_pipeline.inference.predictor import Predictor

KEY_PREFIX = "brats-infer "
#: ``describe()`` entries that do not change what is predicted (or are keyed by content instead).
_NOT_KEYED = ("models", "device", "amp_bf16")


def label_path(out_dir: str | os.PathLike, case_id: str) -> Path:
    """Where the label map of ``case_id`` goes (``ValueError`` for an id that is not a safe file name)."""
    return Path(out_dir) / f"{check_case_id(case_id)}.nii.gz"


def probability_path(out_dir: str | os.PathLike, case_id: str) -> Path:
    """Where the probability map of ``case_id`` goes."""
    return Path(out_dir) / "probabilities" / f"{check_case_id(case_id)}.nii.gz"


def model_digests(predictor: Predictor) -> list[str]:
    """SHA-256 of each model the predictor was loaded from (``predictor.sources``).

    A checkpoint or state-dict file: its content; a bundle folder: its ``models/model.pt``,
    ``configs/inference.json`` and ``configs/train.json`` (the weights, the inference settings and
    the network they fill, which ``train.json`` defines). A predictor built from
    networks in memory (no sources): their classes and weights.
    """
    digests = []
    for source in map(Path, predictor.sources):
        if source.is_dir():
            files = [f for f in (source / "models" / "model.pt", source / "configs" / "inference.json",
                                 source / "configs" / "train.json") if f.is_file()]
            digests.append(hashlib.sha256("".join(content_digest(f) for f in files).encode()).hexdigest())
        else:
            digests.append(content_digest(source))
    if not predictor.sources:
        for network in predictor.networks:
            digest = hashlib.sha256(type(network).__qualname__.encode())
            for name, value in network.state_dict().items():
                digest.update(name.encode())
                digest.update(value.detach().float().cpu().numpy().tobytes())
            digests.append(digest.hexdigest())
    return digests


def prediction_settings(predictor: Predictor) -> dict[str, Any]:
    """The settings in the resume key: ``predictor.describe()`` without where and how it runs."""
    return {k: v for k, v in predictor.describe().items() if k not in _NOT_KEYED}


def resume_key(inputs: Sequence[str], model: Sequence[str], settings: Mapping[str, Any]) -> str:
    """``brats-infer <sha256>`` of the inputs' contents, the model digests and the settings (fits a NIfTI ``descrip``)."""
    blob = json.dumps({"inputs": [content_digest(f) for f in inputs], "model": list(model), "settings": settings},
                      sort_keys=True, default=str)
    return KEY_PREFIX + hashlib.sha256(blob.encode()).hexdigest()


def current_key(outputs: Sequence[Path], inputs: Sequence[str], model: Sequence[str], settings: Mapping[str, Any]) -> str | None:
    """The key, if every output exists and carries it (the case is done); else ``None``."""
    from preprocessing.io import read_description

    if not all(p.is_file() for p in outputs):
        return None
    try:
        key = resume_key(inputs, model, settings)
    except OSError:  # an input that went missing: redo, and let the reader name it
        return None
    return key if all(read_description(p) == key for p in outputs) else None


def shard_key(case: Mapping[Hashable, Any]) -> str:
    """The id a case is sharded by: its ``case_id`` (or the one its image file names give).

    An entry too broken to name (no ``case_id``, no usable ``image``) is keyed by its own
    content, so that it still lands in exactly one shard and is reported failed there.
    """
    from brats_pipeline.inference.loading import case_id_of

    try:
        return case_id_of(case)
    except (ValueError, KeyError, TypeError, IndexError):
        return json.dumps(case, sort_keys=True, default=str)


def select_shard(cases: Sequence[Any], index: int, count: int) -> list[Any]:
    """Shard ``index`` of ``count``: every ``count``-th case in case-id order (:mod:`preprocessing.sharding`)."""
    return _select_shard(cases, index, count, key=lambda c: shard_key(c) if isinstance(c, Mapping) else case_key(c))


def admit_cases(cases: Sequence[Mapping[Hashable, Any]], manifest: Any) -> list[tuple[str, int]]:
    """``(case_id, index)`` of the cases that can run; the others get their ``failed`` row in ``manifest`` now.

    A case with a ``problem`` (discovery found a file missing or ambiguous) or no usable id or
    ``image`` fails by name without being read; the manifest keeps the input's order.

    Raises:
        ValueError: two cases with one id (their outputs would overwrite each other).
    """
    from brats_pipeline.inference.loading import case_id_of, image_files
    from preprocessing.batch_runner import failed_row

    order: list[str] = []
    runnable: list[tuple[str, int]] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        if case.get("problem"):  # found by discovery with a missing/ambiguous file: report, don't read
            cid = str(case.get("case_id", f"#{i}"))
            where = f"{case.get('problem_file')}: " if case.get("problem_file") else ""
            manifest.set(failed_row(cid, ValueError(f"{where}{case['problem']}"), "discover"))
            order.append(cid)
            continue
        try:
            cid = check_case_id(case_id_of(case), f"case {i}")
            image_files(case)
        except ValueError as exc:
            cid = str(case.get("case_id", f"#{i}"))
            manifest.set(failed_row(cid, exc, "input"))
            order.append(cid)
            continue
        if cid in seen:
            raise ValueError(f"case id {cid!r} appears twice in the input; outputs would overwrite each other")
        seen.add(cid)
        order.append(cid)
        runnable.append((cid, i))
    manifest.order = {cid: n for n, cid in enumerate(order)}
    return runnable


def run_batch(
    predictor: Predictor,
    cases: Sequence[Mapping[Hashable, Any]],
    out_dir: str | os.PathLike,
    save_probabilities: bool = False,
    overwrite: bool = False,
    manifest_name: str = "manifest.json",
    loader_threads: int = 2,
    writer_threads: int = 2,
    progress: bool = True,
    prefetch: int | None = None,
) -> list[dict[str, Any]]:
    """Predict ``cases`` into ``out_dir``, overlapping reading, compute and writing.

    Args:
        predictor: the :class:`~brats_pipeline.inference.predictor.Predictor`.
        cases: mappings with ``case_id`` and ``image`` (datalist entries). An entry with a
            ``problem`` (from dataset discovery) is recorded as failed without reading it, as is
            one lacking a modality the predictor's modality subset reads (the others may be absent).
        out_dir: output folder (created).
        save_probabilities: also write the probability maps.
        overwrite: redo cases whose outputs exist (default: skip those made from these inputs by
            this model with these settings, i.e. resume; see the module docstring).
        manifest_name: manifest file name inside ``out_dir``.
        loader_threads: cases read/preprocessed concurrently ahead of the compute.
        writer_threads: cases post-processed/written concurrently behind it.
        progress: show a tqdm bar.
        prefetch: cases read ahead (default ``loader_threads + 1``).

    Returns:
        The manifest rows, in the order of ``cases``.

    Raises:
        ValueError: two cases with one id.
        OutputFolderError: ``out_dir`` cannot be written (a ``ValueError``).
    """
    from brats_pipeline.data.modalities import select_cases
    from brats_pipeline.inference.loading import image_files
    from preprocessing.batch_runner import Manifest, pipelined, run_cases

    out_dir = prepare_output_folder(out_dir, depth=1)  # also removes a killed run's temporary files (probabilities/)
    cases = select_cases(cases, predictor.task)  # a modality subset: only its files are read, hashed and recorded
    model, settings = model_digests(predictor), prediction_settings(predictor)
    manifest = Manifest(out_dir / manifest_name, {"settings": {**predictor.describe(), "model_sha256": model}}, interval=2.0)
    named = [(cid, cases[i]) for cid, i in admit_cases(cases, manifest)]

    def outputs(cid: str) -> list[Path]:
        return [label_path(out_dir, cid)] + ([probability_path(out_dir, cid)] if save_probabilities else [])

    def finished(cid: str, case: Mapping[Hashable, Any]) -> dict[str, Any] | None:
        paths, inputs = outputs(cid), image_files(case)
        key = current_key(paths, inputs, model, settings)
        return None if key is None else {"reason": "outputs exist, made from these inputs by this model",
                                         "output": str(paths[0]), "inputs": inputs, "key": key}

    def read(case: Mapping[Hashable, Any]) -> tuple[Any, list[str], str, float]:
        t0 = time.perf_counter()
        data = predictor.preprocess(case)  # reads (and checks) the files, then their content is keyed
        inputs = image_files(case)
        return data, inputs, resume_key(inputs, model, settings), time.perf_counter() - t0

    def compute(loaded: tuple[Any, list[str], str, float]) -> tuple[Any, np.ndarray, list[str], str, dict[str, float]]:
        data, inputs, key, read_s = loaded
        t0 = time.perf_counter()
        probs, affine = predictor.compute(data)
        return probs, affine, inputs, key, {"read": read_s, "compute": time.perf_counter() - t0}

    def write(cid: str, computed: tuple[Any, np.ndarray, list[str], str, dict[str, float]]) -> dict[str, Any]:
        from preprocessing.io import write_nifti

        probs, affine, inputs, key, seconds = computed
        t0 = time.perf_counter()
        label = predictor.labels_from_probabilities(probs)
        if save_probabilities:
            p = probs.cpu().numpy() if hasattr(probs, "cpu") else np.asarray(probs)
            write_nifti(np.moveaxis(p, 0, -1), affine, probability_path(out_dir, cid), dtype=np.float32, description=key)
        write_nifti(label, affine, label_path(out_dir, cid), dtype=np.uint8, description=key)
        seconds["write"] = time.perf_counter() - t0
        row = {"output": str(label_path(out_dir, cid)), "inputs": inputs, "key": key, "shape": list(label.shape),
               "seconds": {k: round(v, 4) for k, v in seconds.items()}}
        if save_probabilities:
            row["probabilities"] = str(probability_path(out_dir, cid))
        return row

    def free_cache() -> None:
        if predictor.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    execute = pipelined(read, compute, write, read_threads=loader_threads, write_threads=writer_threads, prefetch=prefetch,
                        after_failure=free_cache, case_fields=lambda case: {"inputs": image_files(case)})
    rows = run_cases(named, execute, manifest, finished=finished, overwrite=overwrite, check_threads=max(1, loader_threads),
                     progress=f"inference ({predictor.device.type})" if progress else None)
    return rows
