"""Writing outputs safely: atomic files, JSON, output folders, and what a killed writer leaves.

* :func:`atomic_path` yields a temporary file beside the destination and renames it into
  place when the block succeeds, so a killed job never leaves a half-written output. The
  temporary name is hidden and says who wrote it::

      .<name>.~<host>~<pid>~<random>.tmp<suffix>     e.g. .case1.nii.gz.~node7~4242~k2j4x9qa.tmp.nii.gz

* :func:`remove_stale_temporaries` deletes such files that a killed writer left behind: those of
  a process of this host that is no longer running, and any older than a day (another host's,
  or named the way this module named them before it recorded the writer). The temporary file
  of a writer that is still running (another shard writing into the same folder) is left alone.
* :func:`prepare_output_folder` creates an output folder, proves it writable and removes the
  stale temporaries in it, raising :class:`OutputFolderError` (one line naming the path) otherwise.

Used by both packages (``preprocessing`` imports nothing of ``brats_pipeline``);
:mod:`preprocessing.io` re-exports :func:`atomic_path` and :func:`write_json`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: A temporary file older than this (seconds) is stale whoever wrote it: no write takes a day.
STALE_AFTER_S = 24 * 3600.0

_TEMP = re.compile(r"\.(?P<target>.+)\.~(?P<host>[A-Za-z0-9-]*)~(?P<pid>\d+)~[a-z0-9_]+\.tmp(\.[A-Za-z0-9.]+)?")
_LEGACY_TEMP = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?")  # before the writer was recorded


class OutputFolderError(ValueError):
    """An output folder that cannot be used (an existing file, under a file, not writable)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:32]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name (module docstring) keeps the file's suffix (``.nii.gz``) so writers pick
    the right format. On error the temporary file is removed and ``path`` is untouched.

    Raises:
        OSError: writing failed (a full disk: ``[Errno 28] No space left on device``); an error
            that names no file, or only the temporary one, is raised again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.~{_host()}~{os.getpid()}~", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600 files; give the result the usual umask permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:  # a write error names no file (ENOSPC from write()): name the output being written
        if exc.errno is None or exc.filename not in (None, tmp, str(tmp_path)):
            raise
        raise type(exc)(exc.errno, f"{exc.strerror or exc} while writing", str(path)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n", encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_stale(path: Path, now: float) -> bool:
    match = _TEMP.fullmatch(path.name)
    if match is None and _LEGACY_TEMP.fullmatch(path.name) is None:
        return False  # not a temporary file of this module
    if match is not None and match["host"] == _host() and not _running(int(match["pid"])):
        return True
    try:
        return now - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:  # its writer renamed it just now
        return False


def remove_stale_temporaries(folder: str | os.PathLike, depth: int = 0) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder`` (module docstring); return them.

    Args:
        folder: an output folder (a missing one holds nothing).
        depth: also look this many levels of sub-folders down (``1``: ``OUT/<case>/``).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            if depth > 0:
                removed += remove_stale_temporaries(entry, depth - 1)
        elif entry.name.startswith(".") and entry.is_file() and _is_stale(entry, now):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def prepare_output_folder(folder: str | os.PathLike, depth: int = 0) -> Path:
    """Create ``folder`` if needed, check that files can be written in it, remove stale temporaries.

    Args:
        folder: the output folder.
        depth: sub-folder levels searched for stale temporaries (:func:`remove_stale_temporaries`).

    Raises:
        OutputFolderError: ``folder`` is an existing file, lies under a file, cannot be created
            or is not writable; the message is one line naming it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: output folder is an existing file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-probe.~{_host()}~{os.getpid()}~", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputFolderError(f"{folder}: output folder cannot be written ({exc.strerror or type(exc).__name__})") from exc
    remove_stale_temporaries(folder, depth)
    return folder
