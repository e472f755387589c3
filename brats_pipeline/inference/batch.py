"""Batch inference: many cases, reading and writing overlapped with compute, a manifest, resumable.

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
import threading
import time
import traceback
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from preprocessing.identity import check_case_id, content_digest
from preprocessing.outputs import prepare_output_folder
from preprocessing.sharding import case_key
from preprocessing.sharding import select_shard as _select_shard

if TYPE_CHECKING:
    from brats_pipeline.inference.predictor import Predictor

STATUSES = ("ok", "failed", "skipped")
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

    A checkpoint or state-dict file: its content; a bundle folder: its ``models/model.pt`` and
    ``configs/inference.json`` (the weights and the network they fill). A predictor built from
    networks in memory (no sources): their classes and weights.
    """
    digests = []
    for source in map(Path, predictor.sources):
        if source.is_dir():
            files = [f for f in (source / "models" / "model.pt", source / "configs" / "inference.json") if f.is_file()]
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


def _current(outputs: Sequence[Path], inputs: Sequence[str], model: Sequence[str], settings: Mapping[str, Any]) -> str | None:
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


class _Manifest:
    """Rows by case id, written atomically (at most every ``interval`` seconds, and at the end)."""

    def __init__(self, path: Path, settings: dict[str, Any], interval: float = 2.0) -> None:
        self.path, self.settings, self.interval = path, settings, interval
        self.rows: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self._last = 0.0

    def set(self, row: dict[str, Any], flush: bool = False) -> None:
        with self.lock:
            self.rows[row["case_id"]] = row
            if flush or time.monotonic() - self._last > self.interval:
                self._write()

    def _write(self) -> None:
        from preprocessing.io import write_json

        rows = list(self.rows.values())
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        write_json({"settings": self.settings, "counts": counts, "cases": rows}, self.path)
        self._last = time.monotonic()

    def close(self) -> None:
        with self.lock:
            self._write()


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (ValueError, FileNotFoundError, OSError)) else f"{type(exc).__name__}: {text}"


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
    from tqdm import tqdm

    from brats_pipeline.data.modalities import select_cases
    from brats_pipeline.inference.loading import case_id_of, image_files

    out_dir = prepare_output_folder(out_dir, depth=1)  # also removes a killed run's temporary files (probabilities/)
    cases = select_cases(cases, predictor.task)  # a modality subset: only its files are read, hashed and recorded
    model, settings = model_digests(predictor), prediction_settings(predictor)
    manifest = _Manifest(out_dir / manifest_name, {**predictor.describe(), "model_sha256": model})
    order: list[str] = []
    named: list[tuple[str, Mapping[Hashable, Any], list[str], list[Path]]] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        if case.get("problem"):  # found by discovery with a missing/ambiguous file: report, don't read
            cid = str(case.get("case_id", f"#{i}"))
            where = f"{case.get('problem_file')}: " if case.get("problem_file") else ""
            manifest.set({"case_id": cid, "status": "failed", "error": f"{where}{case['problem']}", "stage": "discover"})
            order.append(cid)
            continue
        try:
            cid = check_case_id(case_id_of(case), f"case {i}")
            inputs = image_files(case)
        except ValueError as exc:
            cid = str(case.get("case_id", f"#{i}"))
            manifest.set({"case_id": cid, "status": "failed", "error": str(exc), "stage": "input"})
            order.append(cid)
            continue
        if cid in seen:
            raise ValueError(f"case id {cid!r} appears twice in the input; outputs would overwrite each other")
        seen.add(cid)
        order.append(cid)
        outputs = [label_path(out_dir, cid)] + ([probability_path(out_dir, cid)] if save_probabilities else [])
        named.append((cid, case, inputs, outputs))
    todo: list[tuple[str, Mapping[Hashable, Any]]] = []
    with ThreadPoolExecutor(max(1, loader_threads), thread_name_prefix="hash") as hashers:  # inputs hashed concurrently
        keys = [None] * len(named) if overwrite else list(hashers.map(lambda n: _current(n[3], n[2], model, settings), named))
    for (cid, case, inputs, outputs), key in zip(named, keys):
        if key is not None:
            manifest.set({"case_id": cid, "status": "skipped", "reason": "outputs exist, made from these inputs by this model",
                          "output": str(outputs[0]), "inputs": inputs, "key": key})
        else:
            todo.append((cid, case))

    bar = tqdm(total=len(order), desc=f"inference ({predictor.device.type})", unit="case", disable=not progress,
               initial=len(order) - len(todo))
    loaders = ThreadPoolExecutor(max(1, loader_threads), thread_name_prefix="load")
    writers = ThreadPoolExecutor(max(1, writer_threads), thread_name_prefix="write")
    ahead = max(1, prefetch if prefetch is not None else loader_threads + 1)

    def load(case: Mapping[Hashable, Any]) -> tuple[Any, str, float]:
        t0 = time.perf_counter()
        data = predictor.preprocess(case)  # reads (and checks) the files, then their content is keyed
        return data, resume_key(image_files(case), model, settings), time.perf_counter() - t0

    def finish(row: dict[str, Any]) -> None:
        bar.update()
        if row["status"] == "failed":  # said before the manifest is written: writing it may fail too (a full disk)
            bar.write(f"FAILED {row['case_id']}: {row['error']}")
        manifest.set(row, flush=row["status"] == "failed")

    def write(cid: str, inputs: list[str], key: str, probs: Any, affine: np.ndarray, seconds: dict[str, float]) -> None:
        from preprocessing.io import write_nifti

        t0 = time.perf_counter()
        try:
            label = predictor.labels_from_probabilities(probs)
            if save_probabilities:
                p = probs.cpu().numpy() if hasattr(probs, "cpu") else np.asarray(probs)
                write_nifti(np.moveaxis(p, 0, -1), affine, probability_path(out_dir, cid), dtype=np.float32, description=key)
            write_nifti(label, affine, label_path(out_dir, cid), dtype=np.uint8, description=key)
            seconds["write"] = time.perf_counter() - t0
            row = {"case_id": cid, "status": "ok", "output": str(label_path(out_dir, cid)), "inputs": inputs, "key": key,
                   "shape": list(label.shape), "seconds": {k: round(v, 4) for k, v in seconds.items()}}
            if save_probabilities:
                row["probabilities"] = str(probability_path(out_dir, cid))
        except Exception as exc:  # one bad case must not stop the batch
            row = {"case_id": cid, "status": "failed", "error": _error_text(exc), "stage": "write", "inputs": inputs,
                   "traceback": traceback.format_exc(limit=3)}
        finish(row)

    pending_loads: deque[tuple[str, Mapping[Hashable, Any], Future]] = deque()
    pending_writes: deque[Future] = deque()
    queue = deque(todo)
    try:
        while queue or pending_loads:
            while queue and len(pending_loads) < ahead:
                cid, case = queue.popleft()
                pending_loads.append((cid, case, loaders.submit(load, case)))
            cid, case, future = pending_loads.popleft()
            inputs = image_files(case)
            stage = "read"
            try:
                data, key, read_s = future.result()
                stage = "compute"
                t0 = time.perf_counter()
                probs, affine = predictor.compute(data)
                seconds = {"read": read_s, "compute": time.perf_counter() - t0}
                del data
            except Exception as exc:  # recorded, then on to the next case
                finish({"case_id": cid, "status": "failed", "error": _error_text(exc), "stage": stage, "inputs": inputs,
                        "traceback": traceback.format_exc(limit=3)})
                if predictor.device.type == "cuda":
                    import torch

                    torch.cuda.empty_cache()
                continue
            pending_writes.append(writers.submit(write, cid, inputs, key, probs, affine, seconds))
            while len(pending_writes) > 2 * max(1, writer_threads):
                pending_writes.popleft().result()
        for f in pending_writes:
            f.result()
    finally:
        loaders.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)
        bar.close()
        manifest.close()
    return [manifest.rows[c] for c in order]
