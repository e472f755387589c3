"""Batch inference: many cases, reading and writing overlapped with compute, a manifest, resumable.

Three stages run at once:

* **loader threads** read and preprocess the next cases (gzip decoding and numpy release the GIL);
* the **calling thread** runs the network and the inversion (the GPU when there is one);
* **writer threads** post-process, encode and write the previous cases.

Outputs per case: ``OUT/<case_id>.nii.gz`` (the task's labels, uint8, input geometry) and, with
``save_probabilities``, ``OUT/probabilities/<case_id>.nii.gz`` (x, y, z, R float32), the
probabilities written first so that a label file on disk means the case is complete. Every
file is written atomically (temporary name + rename): a killed job leaves no half file and
a rerun skips the cases whose outputs exist. Inputs are only read.

The manifest (``OUT/manifest.json``; one per shard) is rewritten atomically as cases finish::

    {"settings": {...}, "counts": {"ok": 9, "failed": 1, "skipped": 0},
     "cases": [{"case_id": ..., "status": "ok" | "failed" | "skipped", "output": ..., "error": ...,
                "inputs": [...], "seconds": {"read": ..., "compute": ..., "write": ...}}, ...]}
"""

from __future__ import annotations

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

from brats_pipeline.data.sharding import (
    case_key,
    parse_shard,  # noqa: F401  (re-exported: the CLIs and tests import it from here)
)
from brats_pipeline.data.sharding import select_shard as _select_shard

if TYPE_CHECKING:
    from brats_pipeline.inference.predictor import Predictor

STATUSES = ("ok", "failed", "skipped")


def label_path(out_dir: str | os.PathLike, case_id: str) -> Path:
    """Where the label map of ``case_id`` goes."""
    return Path(out_dir) / f"{case_id}.nii.gz"


def probability_path(out_dir: str | os.PathLike, case_id: str) -> Path:
    """Where the probability map of ``case_id`` goes."""
    return Path(out_dir) / "probabilities" / f"{case_id}.nii.gz"


def shard_key(case: Mapping[Hashable, Any]) -> str:
    """The id a case is sharded by: its ``case_id`` (or the one its image file names give).

    An entry too broken to name (no ``case_id``, no usable ``image``) is keyed by its own
    content, so that it still lands in exactly one shard and is reported failed there.
    """
    from brats_pipeline.inference.loading import case_id_of

    try:
        return case_id_of(case)
    except (ValueError, KeyError, TypeError, IndexError):
        import json

        return json.dumps(case, sort_keys=True, default=str)


def select_shard(cases: Sequence[Any], index: int, count: int) -> list[Any]:
    """Shard ``index`` of ``count``: every ``count``-th case in case-id order (:mod:`brats_pipeline.data.sharding`)."""
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
            ``problem`` (from dataset discovery) is recorded as failed without reading it.
        out_dir: output folder (created).
        save_probabilities: also write the probability maps.
        overwrite: redo cases whose outputs exist (default: skip them, i.e. resume).
        manifest_name: manifest file name inside ``out_dir``.
        loader_threads: cases read/preprocessed concurrently ahead of the compute.
        writer_threads: cases post-processed/written concurrently behind it.
        progress: show a tqdm bar.
        prefetch: cases read ahead (default ``loader_threads + 1``).

    Returns:
        The manifest rows, in the order of ``cases``.
    """
    from tqdm import tqdm

    from brats_pipeline.inference.loading import case_id_of, image_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(out_dir / manifest_name, predictor.describe())
    order: list[str] = []
    todo: list[tuple[str, Mapping[Hashable, Any]]] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        if case.get("problem"):  # found by discovery with a missing/ambiguous file: report, don't read
            cid = str(case.get("case_id", f"#{i}"))
            where = f"{case.get('problem_file')}: " if case.get("problem_file") else ""
            manifest.set({"case_id": cid, "status": "failed", "error": f"{where}{case['problem']}", "stage": "discover"})
            order.append(cid)
            continue
        try:
            cid = case_id_of(case)
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
        if not overwrite and all(p.is_file() for p in outputs):
            manifest.set({"case_id": cid, "status": "skipped", "reason": "outputs exist", "output": str(outputs[0]), "inputs": inputs})
        else:
            todo.append((cid, case))

    bar = tqdm(total=len(order), desc=f"inference ({predictor.device.type})", unit="case", disable=not progress,
               initial=len(order) - len(todo))
    loaders = ThreadPoolExecutor(max(1, loader_threads), thread_name_prefix="load")
    writers = ThreadPoolExecutor(max(1, writer_threads), thread_name_prefix="write")
    ahead = max(1, prefetch if prefetch is not None else loader_threads + 1)

    def load(case: Mapping[Hashable, Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        return predictor.preprocess(case), time.perf_counter() - t0

    def finish(row: dict[str, Any]) -> None:
        manifest.set(row, flush=row["status"] == "failed")
        bar.update()
        if row["status"] == "failed":
            bar.write(f"FAILED {row['case_id']}: {row['error']}")

    def write(cid: str, inputs: list[str], probs: Any, affine: np.ndarray, seconds: dict[str, float]) -> None:
        from preprocessing.io import write_nifti

        t0 = time.perf_counter()
        try:
            label = predictor.labels_from_probabilities(probs)
            if save_probabilities:
                p = probs.cpu().numpy() if hasattr(probs, "cpu") else np.asarray(probs)
                write_nifti(np.moveaxis(p, 0, -1), affine, probability_path(out_dir, cid), dtype=np.float32)
            write_nifti(label, affine, label_path(out_dir, cid), dtype=np.uint8)
            seconds["write"] = time.perf_counter() - t0
            row = {"case_id": cid, "status": "ok", "output": str(label_path(out_dir, cid)), "inputs": inputs,
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
                data, read_s = future.result()
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
            pending_writes.append(writers.submit(write, cid, inputs, probs, affine, seconds))
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
