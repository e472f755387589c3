"""The one batch runner: many cases into one output folder, with a manifest, resuming, and on past a failed case.

``brats-preprocess`` (:func:`preprocessing.batch.run_batch`: cases in worker processes),
``brats-infer`` (``brats_pipeline.inference.batch.run_batch``: reading, compute and writing
overlapped in threads) and the bundles' ``evaluator`` (``brats_pipeline.bundle.BundleRunner``)
all run their cases with :func:`run_cases`, which does what they share:

* **resume**: a case whose outputs are current (``finished(case_id, item)`` gives its row) is
  ``skipped`` without running; ``overwrite`` redoes every case;
* **on past failure**: every case ends as exactly one row, ``ok``, ``failed`` (with the error, the
  stage and, for an unexpected exception, a short traceback) or ``skipped``; an exception in one
  case never stops the others;
* **manifest** (:class:`Manifest`): the rows in the input's order with their counts, rewritten
  atomically as cases finish (JSON, and a CSV where asked), so a killed run shows how far it got;
* **progress**: a tqdm bar that says each failure as it happens.

How the cases run is the *executor* given to it: :func:`in_process` (one after another),
:func:`in_processes` (a ``spawn`` pool whose workers die with the parent; a dead worker fails its
case and the others are retried in a new pool) or :func:`pipelined` (read ahead in threads,
compute in the calling thread, write behind in threads).
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

STATUSES = ("ok", "failed", "skipped")
#: ``execute(todo, done)``: run each ``(case_id, item)`` of ``todo`` and pass its row to ``done``.
Executor = Callable[[list[tuple[str, Any]], Callable[[dict[str, Any]], None]], None]
#: Exceptions whose message names the file and the problem by itself (no traceback is kept for them).
EXPECTED = (ValueError, OSError, RuntimeError)


def error_text(exc: BaseException) -> str:
    """The message of ``exc``, prefixed with its type unless it is an expected input error."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"


def failed_row(case_id: str, exc: BaseException, stage: str | None = None, **fields: Any) -> dict[str, Any]:
    """The ``failed`` row of a case: the error (and where it happened); a traceback for an unexpected exception."""
    row: dict[str, Any] = {"case_id": case_id, "status": "failed", "error": error_text(exc), **fields}
    if stage:
        row["stage"] = stage
    if not isinstance(exc, EXPECTED):
        row["traceback"] = "".join(traceback.format_exception(exc, limit=3))
    return row


class Manifest:
    """The rows of a batch by case id, written atomically as JSON ``{**header, "counts", "cases"}`` (and a CSV).

    Args:
        path: the JSON file.
        header: top-level entries before the counts (settings, the shard, the output folder ...).
        csv_path: also write the rows as CSV here, with ``csv_fields`` (the first line of ``error``).
        csv_fields: the CSV columns.
        interval: write at most every ``interval`` seconds (and always on ``flush``/``close``).
        order: case ids (or keys) in the order rows are written (rows of others follow, in arrival order).
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None, csv_path: str | os.PathLike | None = None,
                 csv_fields: Sequence[str] = (), interval: float = 0.0, order: Sequence[str] = ()) -> None:
        self.path, self.csv_path = Path(path), None if csv_path is None else Path(csv_path)
        self.header, self.csv_fields, self.interval = dict(header or {}), tuple(csv_fields), interval
        self.order = {cid: i for i, cid in enumerate(order)}
        self._rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last = 0.0

    def set(self, row: Mapping[str, Any], flush: bool = False, key: str | None = None) -> None:
        """Record (or replace) the row of ``row["case_id"]`` (or of ``key``: inputs that share an id, such as
        unnamed ones, keep a row each); write the manifest if due."""
        with self._lock:
            self._rows[str(row["case_id"]) if key is None else key] = dict(row)
            if flush or time.monotonic() - self._last >= self.interval:
                self._write()

    def rows(self) -> list[dict[str, Any]]:
        """The rows, in :attr:`order` (others after, in arrival order)."""
        with self._lock:
            return self._ordered()

    def counts(self) -> dict[str, int]:
        rows = self.rows()
        return {s: sum(r["status"] == s for r in rows) for s in STATUSES}

    def close(self) -> None:
        """Write the manifest now."""
        with self._lock:
            self._write()

    def _ordered(self) -> list[dict[str, Any]]:
        last = len(self.order)
        arrival = {cid: i for i, cid in enumerate(self._rows)}
        return [self._rows[c] for c in sorted(self._rows, key=lambda c: (self.order.get(c, last), arrival[c]))]

    def _write(self) -> None:
        from preprocessing.io import atomic_path, write_json

        rows = self._ordered()
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        write_json({**self.header, "counts": counts, "cases": rows}, self.path)
        if self.csv_path is not None:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.csv_fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "error": str(row.get("error") or "").splitlines()[0] if row.get("error") else ""})
            with atomic_path(self.csv_path) as tmp:
                tmp.write_text(buffer.getvalue(), encoding="utf-8")
        self._last = time.monotonic()


def run_cases(
    cases: Sequence[tuple[str, Any]],
    execute: Executor,
    manifest: Manifest,
    *,
    finished: Callable[[str, Any], Mapping[str, Any] | None] | None = None,
    overwrite: bool = False,
    check_threads: int = 1,
    progress: str | None = None,
    on_failure: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``cases`` (``(case_id, item)``, ids unique) with ``execute``; return the manifest's rows.

    Args:
        cases: the cases to run, in the order of the manifest.
        execute: an executor (:func:`in_process`, :func:`in_processes`, :func:`pipelined`).
        manifest: where the rows go (rows set before, e.g. inputs that failed already, are kept).
        finished: the resume check: the ``skipped`` row's fields of a case whose outputs are
            current, else ``None`` (run in ``check_threads`` threads: it may hash inputs).
        overwrite: run every case, current or not.
        progress: the progress bar's title (``None``: no bar).
        on_failure: called with each ``failed`` row (e.g. to log it).
    """
    from tqdm import tqdm

    todo = list(cases)
    if finished is not None and not overwrite:
        with ThreadPoolExecutor(max(1, check_threads), thread_name_prefix="resume") as pool:
            current = list(pool.map(lambda c: finished(*c), todo))
        for (cid, _), fields in zip(todo, current):
            if fields is not None:
                manifest.set({"case_id": cid, "status": "skipped", **fields})
        todo = [c for c, fields in zip(todo, current) if fields is None]
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), desc=progress, unit="case", disable=progress is None)

    def done(row: dict[str, Any]) -> None:
        bar.update()
        if row["status"] == "failed":  # said before the manifest is written: writing it may fail too (a full disk)
            bar.write(f"FAILED {row['case_id']}: {str(row.get('error', '')).splitlines()[0] if row.get('error') else ''}")
            if on_failure is not None:
                on_failure(row)
        manifest.set(row, flush=row["status"] == "failed")

    try:
        execute(todo, done)
    finally:
        bar.close()
        manifest.close()
    return manifest.rows()


def _attempt(case_id: str, work: Callable[[Any], Mapping[str, Any]], item: Any, stage: str | None = None) -> dict[str, Any]:
    """``work(item)``'s row (``ok`` unless it says otherwise), or the ``failed`` row of its exception."""
    try:
        return {"case_id": case_id, "status": "ok", **work(item)}
    except Exception as exc:  # one bad case must not stop the batch
        return failed_row(case_id, exc, stage)


def in_process(work: Callable[[Any], Mapping[str, Any]]) -> Executor:
    """Run the cases one after another in this process: ``work(item)`` gives a case's row fields."""
    def execute(todo: list[tuple[str, Any]], done: Callable[[dict[str, Any]], None]) -> None:
        for cid, item in todo:
            done(_attempt(cid, work, item))
    return execute


def in_processes(work: Callable[[Any], Mapping[str, Any]], workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> Executor:
    """Run ``work`` (a picklable top-level function) on ``workers`` cases at once in a ``spawn`` process pool.

    A worker that dies (killed, out of memory) breaks the pool: the first case it takes down is
    reported failed, the others in flight are retried in a new pool.
    """
    def execute(todo: list[tuple[str, Any]], done: Callable[[dict[str, Any]], None]) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        pending = list(todo)
        while pending:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs) as pool:
                futures = {pool.submit(work, item): (cid, item) for cid, item in pending}
                pending, broken = [], False
                for future in as_completed(futures):
                    cid, item = futures[future]
                    try:
                        done({"case_id": cid, "status": "ok", **future.result()})
                    except BrokenProcessPool:
                        if broken:  # the first casualty is reported; the others are retried in a new pool
                            pending.append((cid, item))
                        else:
                            broken = True
                            done({"case_id": cid, "status": "failed", "error": "worker process died (out of memory?)"})
                    except Exception as exc:  # noqa: BLE001 - the worker's exception, pickled back
                        done(failed_row(cid, exc))
    return execute


def pipelined(read: Callable[[Any], Any], compute: Callable[[Any], Any], write: Callable[[str, Any], Mapping[str, Any]],
              read_threads: int = 2, write_threads: int = 2, prefetch: int | None = None,
              after_failure: Callable[[], None] | None = None,
              case_fields: Callable[[Any], Mapping[str, Any]] | None = None) -> Executor:
    """Overlap the stages of consecutive cases: ``read(item)`` in ``read_threads`` threads, up to ``prefetch`` cases
    ahead; ``compute(read result)`` in the calling thread (the accelerator's); ``write(case_id, computed)`` (the
    row's fields) in ``write_threads`` threads behind. A stage's exception fails that case (``stage`` says which;
    ``case_fields(item)``, e.g. its input files, go into the row); ``after_failure`` runs after a failed read or compute."""
    def fields(item: Any) -> dict[str, Any]:
        try:
            return dict(case_fields(item)) if case_fields is not None else {}
        except Exception:  # an item too broken to describe: its row says the error only
            return {}

    def execute(todo: list[tuple[str, Any]], done: Callable[[dict[str, Any]], None]) -> None:
        readers = ThreadPoolExecutor(max(1, read_threads), thread_name_prefix="read")
        writers = ThreadPoolExecutor(max(1, write_threads), thread_name_prefix="write")
        ahead = max(1, prefetch if prefetch is not None else read_threads + 1)
        pending_reads: deque[tuple[str, Any, Future]] = deque()
        pending_writes: deque[Future] = deque()
        queue = deque(todo)

        def write_one(cid: str, item: Any, computed: Any) -> None:
            try:
                row = {"case_id": cid, "status": "ok", **write(cid, computed)}
            except Exception as exc:  # one bad case must not stop the batch
                row = failed_row(cid, exc, "write", **fields(item))
            done(row)

        try:
            while queue or pending_reads:
                while queue and len(pending_reads) < ahead:
                    cid, item = queue.popleft()
                    pending_reads.append((cid, item, readers.submit(read, item)))
                cid, item, future = pending_reads.popleft()
                stage = "read"
                try:
                    data = future.result()
                    stage = "compute"
                    computed = compute(data)
                    del data
                except Exception as exc:  # recorded, then on to the next case
                    done(failed_row(cid, exc, stage, **fields(item)))
                    if after_failure is not None:
                        after_failure()
                    continue
                pending_writes.append(writers.submit(write_one, cid, item, computed))
                while len(pending_writes) > 2 * max(1, write_threads):
                    pending_writes.popleft().result()
            for f in pending_writes:
                f.result()
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True)
    return execute
