"""Many cases through :func:`preprocessing.pipeline.preprocess_case`: shards, workers, manifest, datalist.

* **Sharding** (:mod:`preprocessing.sharding`, shared with ``brats-infer``): the cases
  sorted by case id, shard ``I`` of ``N`` takes every ``N``-th from position ``I``. Shards are
  disjoint, together cover the cohort, differ in size by at most one and do not depend on the
  input order: a SLURM job array with ``--shard $SLURM_ARRAY_TASK_ID/N`` splits a cohort
  reproducibly, and a re-run of one array task redoes the same cases.
* **Workers**: cases run in a process pool (``spawn``); each worker gives SimpleITK
  ``threads`` threads and dies with the calling process (:mod:`preprocessing.workers`: a
  ``kill -9`` of the batch leaves no worker running and writing). One worker runs in the
  calling process.
* **Resuming**: a case whose sidecar says it finished with the same inputs (paths and
  content: :mod:`preprocessing.identity`) and settings, and whose outputs all exist, is
  skipped (``status: skipped``) unless ``overwrite``. Temporary files that a killed run left
  in ``OUT`` and ``OUT/<case>/`` are removed (:func:`preprocessing.outputs.remove_stale_temporaries`).
* **Manifest**: ``OUT/manifest[.shard-I-of-N].{json,csv}`` with one row per case (``case_id``,
  ``status`` ``ok``/``failed``/``skipped`` (finished by an earlier run), ``duration_s``, ``error``), rewritten atomically
  after every case, so a killed run still shows how far it got.
* **Datalist**: ``OUT/datalist.json`` in the input's datalist format, listing every finished
  case of the input (and of earlier runs into ``OUT``) with the preprocessed files; cases not
  finished are listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from preprocessing.batch_runner import Manifest, in_process, in_processes, run_cases
from preprocessing.case import SIDECAR_SUFFIX, Case, finished_record, output_paths
from preprocessing.config import PreprocessConfig
from preprocessing.identity import check_case_ids
from preprocessing.io import ImageFileError, write_json
from preprocessing.outputs import prepare_output_folder
from preprocessing.pipeline import preprocess_case
from preprocessing.sharding import manifest_stem
from preprocessing.sharding import select_shard as _select_shard

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ("case_id", "status", "duration_s", "error")


def select_shard(cases: Sequence[Case], shard: tuple[int, int] | None) -> list[Case]:
    """The cases of shard ``(I, N)`` in case-id order (all cases, in input order, if ``shard`` is ``None``).

    See :func:`preprocessing.sharding.select_shard`.
    """
    if shard is None:
        return list(cases)
    return _select_shard(cases, *shard)


@dataclass
class CaseStatus:
    """One manifest row."""

    case_id: str
    status: str
    duration_s: float = 0.0
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


def _bad_input_keys(bad_inputs: Sequence[CaseStatus]) -> list[tuple[str, CaseStatus]]:
    """Shard keys of inputs that never became cases; unique even for repeated ids (e.g. ``?``)."""
    seen: dict[str, int] = {}
    keyed = []
    for status in sorted(bad_inputs, key=lambda b: (b.case_id, b.error)):
        n = seen[status.case_id] = seen.get(status.case_id, -1) + 1
        keyed.append((status.case_id if n == 0 else f"{status.case_id}\0{n}", status))
    return keyed


@dataclass
class BatchResult:
    """What :func:`run_batch` did: the manifest rows and where the manifest and datalist went."""

    statuses: list[CaseStatus]
    manifest_json: Path
    manifest_csv: Path
    datalist: Path | None

    @property
    def n_failed(self) -> int:
        return sum(s.status == "failed" for s in self.statuses)


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Set SimpleITK's threads; in a pool worker (``parent_pid`` given), tie its life to the parent's."""
    if parent_pid is not None:
        from preprocessing.workers import die_with_parent

        die_with_parent(parent_pid)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def _run_case(case: Case, config: PreprocessConfig, out_dir: str) -> dict[str, Any]:
    """Process one case into its manifest row, a failure included (runs in a worker)."""
    start = time.perf_counter()
    try:
        result = preprocess_case(case, config, out_dir)
    except (ImageFileError, ValueError, RuntimeError, OSError) as exc:
        return CaseStatus(case.case_id, "failed", round(time.perf_counter() - start, 3), _describe(exc)).__dict__
    except Exception as exc:  # an unexpected bug must not stop the batch either; keep the traceback
        tb = traceback.format_exc(limit=3)
        return CaseStatus(case.case_id, "failed", round(time.perf_counter() - start, 3), f"{_describe(exc)}\n{tb}").__dict__
    outputs = {k: str(v) for k, v in result.outputs.items()}
    return CaseStatus(case.case_id, "ok", round(time.perf_counter() - start, 3), "", outputs).__dict__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def manifest_paths(out_dir: str | os.PathLike, shard: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """``OUT/manifest.json`` and ``.csv`` (``manifest.shard-I-of-N.*`` for a shard)."""
    stem = manifest_stem(shard)
    return Path(out_dir) / f"{stem}.json", Path(out_dir) / f"{stem}.csv"


def run_batch(
    cases: Sequence[Case],
    config: PreprocessConfig,
    out_dir: str | os.PathLike,
    workers: int = 1,
    threads: int | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    bad_inputs: Iterable[CaseStatus] = (),
    datalist_header: Mapping[str, Any] | None = None,
    skipped_inputs: Sequence[Mapping[str, Any]] = (),
) -> BatchResult:
    """Preprocess ``cases`` (the shard's part of them) into ``out_dir``.

    Args:
        cases: the whole cohort (every shard sees the same list).
        config: pipeline settings.
        out_dir: output root.
        workers: processes working on cases at once.
        threads: SimpleITK threads per worker (default: CPU cores / workers, at least 1).
        shard: ``(I, N)`` to process only shard I of N (:func:`select_shard`).
        overwrite: redo finished cases.
        progress: show a tqdm bar.
        bad_inputs: cases that could not even be described (e.g. a missing modality found
            by discovery); they are reported as failed in the manifest.
        datalist_header: top-level keys of the output datalist (``name``, ``task``,
            ``modality``, ``labels``, ``regions`` ...); ``None`` writes no datalist.
        skipped_inputs: input datalist ``skipped`` entries, carried to the output datalist.

    Returns:
        :class:`BatchResult`; ``n_failed > 0`` means some case failed (the CLI exits 1).

    Raises:
        ValueError: two cases with one id, or an unsafe id.
        OutputFolderError: ``out_dir`` cannot be written (a ``ValueError``).
    """

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_case_ids((c.case_id, f"case {i}") for i, c in enumerate(cases))  # outputs must not overwrite each other
    out_dir = prepare_output_folder(out_dir, depth=1)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    bad_inputs = list(bad_inputs)
    if shard is None:
        mine, bad = list(cases), bad_inputs
    else:  # cases and bad inputs are sharded together: every input lands in exactly one shard
        keyed = [(c.case_id, c) for c in cases] + _bad_input_keys(bad_inputs)
        chosen = [item for _, item in _select_shard(keyed, *shard, key=lambda pair: pair[0])]
        mine = [c for c in chosen if isinstance(c, Case)]
        bad = [b for b in chosen if isinstance(b, CaseStatus)]
    extra = {"output": str(out_dir.resolve()), "config": config.to_dict(), "workers": workers, "threads": threads}
    json_path, csv_path = manifest_paths(out_dir, shard)
    bad_keyed = _bad_input_keys(bad)  # inputs that failed already (come first; one row each, even if ids repeat)
    order = [key for key, _ in bad_keyed] + [c.case_id for c in cases]
    manifest = Manifest(json_path, {**extra, "shard": None if shard is None else f"{shard[0]}/{shard[1]}"},
                        csv_path=csv_path, csv_fields=MANIFEST_FIELDS, order=order)
    for key, status in bad_keyed:
        manifest.set(status.__dict__, key=key)

    def finished(case_id: str, case: Case) -> dict[str, Any] | None:  # finished by an earlier run
        return None if finished_record(out_dir, case, config) is None else {"duration_s": 0.0, "error": "", "outputs": {}}

    def execute(todo: list[tuple[str, Case]], done: Any) -> None:  # a pool only for more than one case left to do
        if workers == 1 or len(todo) <= 1:
            _init_worker(threads)
            in_process(lambda case: _run_case(case, config, str(out_dir)))(todo, done)
        else:
            in_processes(partial(_run_case, config=config, out_dir=str(out_dir)), workers,
                         initializer=_init_worker, initargs=(threads, os.getpid()))(todo, done)

    rows = run_cases([(c.case_id, c) for c in mine], execute, manifest, finished=finished, overwrite=overwrite,
                     progress="preprocess" if progress else None,
                     on_failure=lambda row: log.error("%s failed: %s", row["case_id"], str(row["error"]).splitlines()[0]))
    statuses = [CaseStatus(**{k: row[k] for k in ("case_id", "status", "duration_s", "error", "outputs") if k in row})
                for row in rows]
    datalist = None
    if datalist_header is not None:
        datalist = write_output_datalist(cases, config, out_dir, datalist_header, statuses, skipped_inputs)
    return BatchResult(statuses, json_path, csv_path, datalist)


# ------------------------------------------------------------------------------------ datalist
def write_output_datalist(
    cases: Sequence[Case],
    config: PreprocessConfig,
    out_dir: str | os.PathLike,
    header: Mapping[str, Any],
    statuses: Sequence[CaseStatus] = (),
    skipped_inputs: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write ``OUT/datalist.json`` for every finished case (see module docstring).

    Entries keep ``case_id``, ``fold`` and any other keys of the input; ``image`` lists the
    preprocessed files in the datalist's modality order, ``label`` the resampled label.
    Entries of an existing ``OUT/datalist.json`` for cases not in ``cases`` are kept while
    their outputs are still finished (several single-case runs into one folder add up).
    """
    out_dir = Path(out_dir).resolve()
    path = out_dir / "datalist.json"
    failed = {s.case_id: s.error.splitlines()[0] if s.error else "failed" for s in statuses if s.status == "failed"}
    training: list[dict[str, Any]] = []
    testing: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = [dict(s) for s in skipped_inputs]
    listed = set()
    for case in cases:
        listed.add(case.case_id)
        record = finished_record(out_dir, case, config)
        if record is None:
            reason = failed.get(case.case_id, "not preprocessed yet (another shard, or not run)")
            skipped.append({"case_id": case.case_id, "file": None, "reason": f"preprocessing: {reason}"})
            continue
        paths = output_paths(case, out_dir, config)
        entry: dict[str, Any] = {"case_id": case.case_id, **case.extra}
        if case.fold is not None:
            entry["fold"] = case.fold
        entry["image"] = [str(paths[m]) for m in case.ordered(config.modalities)]
        if "label" in paths:
            entry["label"] = str(paths["label"])
            training.append(entry)
        else:
            testing.append(entry)
    for key, bucket in (("training", training), ("testing", testing)):
        for entry in _previous_entries(path, key, listed):
            bucket.append(entry)
    for status in statuses:  # bad inputs that never became cases
        if status.status == "failed" and status.case_id not in listed:
            skipped.append({"case_id": status.case_id, "file": None, "reason": status.error.splitlines()[0]})
    datalist = {k: v for k, v in dict(header).items() if k not in ("training", "testing", "skipped", "numTraining", "numTest")}
    datalist.update(
        {
            "root": str(out_dir),
            "preprocessing": {"config": config.to_dict(), "config_fingerprint": config.fingerprint()},
            "numTraining": len(training),
            "numTest": len(testing),
            "training": training,
            "testing": testing,
            "skipped": skipped,
        }
    )
    return write_json(datalist, path)


def _previous_entries(path: Path, key: str, exclude: set[str]) -> list[dict[str, Any]]:
    """Entries of an existing output datalist for other cases whose outputs are all still there."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    keep = []
    for entry in previous.get(key, []):
        if entry.get("case_id") in exclude:
            continue
        files = [*entry.get("image", []), *([entry["label"]] if entry.get("label") else [])]
        sidecar = path.parent / str(entry.get("case_id")) / f"{entry.get('case_id')}{SIDECAR_SUFFIX}"
        if sidecar.is_file() and all(Path(f).is_file() for f in files):
            keep.append(entry)
    return keep
