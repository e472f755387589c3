"""Overlap by image content: test cases whose images have the voxels of a training case's images.

Every image is fingerprinted with :func:`preprocessing.identity.voxel_digest` (voxel values in
one canonical dtype) as stored and turned to RAS orientation, so the same image re-saved with
another header (affine, description, dtype or scale factor giving the same values, ``.nii`` or
``.nii.gz``) or reoriented with its affine keeps a fingerprint, and different images share none.
A test case is removed when ``any`` (default) or ``all`` of its images equal images of one
training case. Constant images are no evidence and are not compared. Both cohorts are read once
(``workers`` threads).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brats_pipeline.data.overlap.cohorts import Cohort, OverlapMatch, OverlapReport

CONTENT_RULES = ("any", "all")


def image_fingerprints(path: str | os.PathLike, channels: int | None = None) -> list[frozenset[str]]:
    """Per image in a file (one for a 3D file, one per channel of a 4D one), its content fingerprints.

    A fingerprint set holds the :func:`~preprocessing.identity.voxel_digest` of the voxels as
    stored and, when the affine is not RAS-ordered, of the voxels turned to RAS orientation. A
    constant image gets an empty set (it matches nothing).

    Raises:
        preprocessing.io.ImageFileError: missing, unreadable or truncated file (naming it).
    """
    from nibabel.orientations import apply_orientation, io_orientation

    from preprocessing.identity import voxel_digest
    from preprocessing.io import ImageFileError, read_array

    data, geometry = read_array(path, ndim=(3, 4), dtype=np.float32, check_finite=False)
    if channels is not None and data.ndim == 4 and data.shape[3] != channels:
        raise ImageFileError(path, f"has {data.shape[3]} channels, expected {channels}")
    ornt = io_orientation(geometry.affine)
    turn = not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]])
    volumes = [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
    prints = []
    for volume in volumes:
        if volume.size == 0 or volume.min() == volume.max():
            prints.append(frozenset())
            continue
        digests = {voxel_digest(volume)}
        if turn:
            digests.add(voxel_digest(apply_orientation(volume, ornt)))
        prints.append(frozenset(digests))
    return prints


def _case_fingerprints(entry: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, frozenset[str]]:
    image = entry.get("image") or []
    if isinstance(image, str):  # one 4D file (MSD), a channel per modality
        prints = image_fingerprints(image, len(modalities) or None)
        names = list(modalities) or [f"channel{i}" for i in range(len(prints))]
        return dict(zip(names, prints))
    names = list(modalities) + [f"image{i}" for i in range(len(modalities), len(image))]
    return {name: image_fingerprints(path)[0] for name, path in zip(names, image)}


def _fingerprint_all(cohort: Cohort, workers: int, progress: bool) -> list[dict[str, frozenset[str]]]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(lambda e: _case_fingerprints(e, cohort.modalities), cohort.entries),
                         total=len(cohort.entries), desc=f"reading {cohort.source}", unit="case", disable=not progress))


def match_by_content(
    training: Sequence[Cohort],
    test: Cohort,
    require: str = "any",
    workers: int = 1,
    progress: bool = False,
) -> OverlapReport:
    """Test cases whose images equal a training case's images (see the module docstring).

    Args:
        training: the training cohorts.
        test: the test cohort.
        require: ``any`` — one image of the test case equals an image of the training case;
            ``all`` — every (non-constant) image of the test case does.
        workers: threads reading files.
        progress: tqdm bars.

    Raises:
        ValueError: an unknown ``require``; preprocessing.io.ImageFileError: an unreadable image (naming it).
    """
    if require not in CONTENT_RULES:
        raise ValueError(f"unknown content rule {require!r}; choose one of {CONTENT_RULES}")
    index: dict[str, list[tuple[str, str, str]]] = {}  # digest -> (cohort, case, modality)
    for cohort in training:
        for entry, prints in zip(cohort.entries, _fingerprint_all(cohort, workers, progress)):
            for modality, digests in prints.items():
                for digest in digests:
                    index.setdefault(digest, []).append((cohort.source, str(entry["case_id"]), modality))
    report = OverlapReport("content", n_test=len(test.entries))
    for entry, prints in zip(test.entries, _fingerprint_all(test, workers, progress)):
        found: dict[tuple[str, str], dict[str, str]] = {}  # (cohort, case) -> {test modality: training modality}
        for modality, digests in prints.items():
            for digest in sorted(digests):
                for cohort, case, train_modality in index.get(digest, []):
                    found.setdefault((cohort, case), {}).setdefault(modality, train_modality)
        compared = [m for m, d in prints.items() if d]
        ranked = sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        if not ranked or (require == "all" and len(ranked[0][1]) < len(compared)):
            continue
        (cohort, case), pairs = ranked[0]
        same = ", ".join(m if m == t else f"{m} = {t}" for m, t in pairs.items())
        report.matches.append(OverlapMatch(str(entry["case_id"]), case, cohort,
                                           f"same voxels in {len(pairs)} of {len(compared)} image(s): {same}"))
    return report
