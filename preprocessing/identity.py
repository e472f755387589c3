"""What identifies a case and a file: case ids that are safe file names, and content digests.

* **Case ids** name output files (``OUT/<case_id>.nii.gz``, ``OUT/<case_id>/...``), so every
  reader of a datalist or a dataset folder checks them here, with one rule for every tool
  (:data:`CASE_ID_RULE`): letters, digits and ``._+-``, starting with a letter or a digit, at
  most 128 characters. No ``/``, ``..``, absolute path, space or hidden name can get through,
  so no output is written outside its folder. Two entries with one id are an error too: their
  outputs would overwrite each other.
* **Content digests** key the resume decisions of the batch runners: a case is done only
  if its inputs still hold the bytes they held when its outputs were made. The digest is the
  SHA-256 of the whole file (a folder, e.g. a DICOM series: of its files' relative names and
  digests). Size and modification time alone are not trusted: files copied with their
  timestamps (``cp -p``, ``rsync -t``, an archive) or uncompressed volumes of one shape keep
  both while their content differs. Digests are remembered for the life of the process by
  device, inode, size, mtime and ctime (a change the owner cannot fake), so checking one file
  several times in a run reads it once.
* **Voxel digests** (:func:`voxel_digest`) identify an image by what it shows, not by its file:
  the SHA-256 of its shape and its voxel values in one canonical dtype (float32), so the same
  image saved as int16 or float32, with another scale factor that decodes to the same values,
  another header or another compression has one digest; two images with one different voxel
  have two. (The reader decides the axis order: :mod:`brats_pipeline.data.overlap.by_content` hashes the
  array as stored and in RAS orientation.)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

#: The case-id rule, as the error messages state it.
CASE_ID_RULE = "letters, digits and '._+-', starting with a letter or digit, at most 128 characters"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")

_digests: dict[tuple[int, ...], str] = {}
_digests_lock = threading.Lock()


def is_safe_case_id(case_id: object) -> bool:
    """Whether ``case_id`` is a string that follows :data:`CASE_ID_RULE`."""
    return isinstance(case_id, str) and _SAFE_ID.fullmatch(case_id) is not None


def check_case_id(case_id: object, where: str = "") -> str:
    """Return ``case_id`` if it is a safe file name, else raise.

    Args:
        case_id: the id.
        where: what named it, for the message (``"dl.json: training[3]"``).

    Raises:
        ValueError: ``"<where>: case id '../x' is not a safe file name (<rule>)"``.
    """
    if not is_safe_case_id(case_id):
        prefix = f"{where}: " if where else ""
        if not isinstance(case_id, str):
            raise ValueError(f"{prefix}case id {case_id!r} must be a string (a safe file name), not {type(case_id).__name__}")
        raise ValueError(f"{prefix}case id {case_id!r} is not a safe file name ({CASE_ID_RULE})")
    return case_id  # type: ignore[return-value]


def check_case_ids(named: Iterable[tuple[object, str]], source: str | os.PathLike = "") -> None:
    """Check that every id is a safe file name and that no id appears twice.

    Args:
        named: ``(case_id, where)`` pairs, ``where`` naming the entry (``"training[3]"``, a file).
        source: the datalist file or folder they come from, for the messages.

    Raises:
        ValueError: naming ``source``, the id, and for a repeated id both entries.
    """
    source = str(source)
    seen: dict[str, str] = {}
    for case_id, where in named:
        check_case_id(case_id, f"{source}: {where}" if source else where)
        if case_id in seen:
            raise ValueError(f"{source + ': ' if source else ''}case id {case_id!r} appears twice ({seen[case_id]} and "
                             f"{where}); their outputs would overwrite each other")
        seen[case_id] = where  # type: ignore[index]


def voxel_digest(array: object) -> str:
    """SHA-256 (hex) of an array's voxel content: its shape and its values as little-endian float32.

    Equal values give equal digests whatever the dtype they come in (int16 ``3`` and float32
    ``3.0``), ``-0.0`` counts as ``0.0`` and every NaN as one NaN; values are compared at float32
    precision (exact for 8- and 16-bit integers, float32, and integers up to 2**24).
    """
    import numpy as np

    values = np.asarray(array)
    canonical = np.ascontiguousarray(np.asarray(values, dtype=np.float32) + np.float32(0.0), dtype="<f4")  # -0.0 -> +0.0
    canonical[np.isnan(canonical)] = np.nan
    digest = hashlib.sha256(f"voxels\0{'x'.join(map(str, values.shape))}\0".encode())
    digest.update(memoryview(canonical).cast("B"))
    return digest.hexdigest()


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (relative names and digests, recursively).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    stat = path.stat()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{content_digest(file)}\n".encode())
        return digest.hexdigest()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]
