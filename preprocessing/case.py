"""A case of the ITK stage: its input files, and the files it is written to.

:class:`Case` names a case's modality files (or DICOM folders, or channels of a 4D file) and its
label; :func:`case_from_entry` makes one from a datalist entry. :func:`output_paths` and
:func:`sidecar_path` say where :func:`preprocessing.pipeline.preprocess_case` writes it:
``OUT/<case_id>/<case_id><sep><modality>.nii.gz``, ``<case_id><sep><label suffix>.nii.gz`` and the
JSON sidecar ``<case_id>_preprocess.json``, written last. :func:`finished_record` is the resume
check: a case is finished exactly when its sidecar exists, was made from the same inputs (paths
and content) and settings, and lists outputs that all exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.config import PreprocessConfig
from preprocessing.identity import check_case_id, content_digest

SIDECAR_SUFFIX = "_preprocess.json"


@dataclass
class Case:
    """One case's input files.

    Args:
        case_id: a file-name-safe identifier (:func:`preprocessing.identity.check_case_id`).
        images: modality name -> file (or DICOM folder), in channel order.
        label: optional label map on the reference modality's grid.
        channels: modality name -> channel of a 4D file (MSD images); absent for 3D files.
        fold: cross-validation fold, carried to the output datalist.
        extra: other keys of the input datalist entry (``patient_id`` ...), carried along.
    """

    case_id: str
    images: dict[str, str]
    label: str | None = None
    channels: dict[str, int] = field(default_factory=dict)
    fold: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, modalities: Sequence[str] | None = None, reference: str | None = None) -> None:
        """Check the id, the modality names (exactly ``modalities``, if given) and that ``reference`` is one of them.

        Raises:
            ValueError: naming the case and the problem (missing or unknown modality ...).
        """
        check_case_id(self.case_id)
        if not self.images:
            raise ValueError(f"case {self.case_id}: no images")
        names = list(self.images)
        if modalities is not None:
            expected = list(modalities)
            missing = [m for m in expected if m not in names]
            unknown = [m for m in names if m not in expected]
            if missing or unknown:
                parts = []
                if missing:
                    parts.append(f"missing modalities {missing}")
                if unknown:
                    parts.append(f"unknown modalities {unknown}")
                raise ValueError(f"case {self.case_id}: {' and '.join(parts)}; expected the modalities {expected}")
        if reference is not None and reference not in self.images:
            raise ValueError(f"case {self.case_id}: reference modality {reference!r} is not among its modalities {names}")

    def ordered(self, modalities: Sequence[str] | None = None) -> list[str]:
        """The case's modality names in the order of ``modalities`` (its own order if ``None``)."""
        if modalities is None:
            return list(self.images)
        return [m for m in modalities if m in self.images]

    def inputs_record(self) -> dict[str, Any]:
        """The inputs a finished case was made from: paths and content digests (the resume key, with the settings)."""
        files = {**self.images, **({"label": self.label} if self.label else {})}
        return {"images": {k: str(v) for k, v in self.images.items()}, "channels": dict(self.channels), "label": self.label,
                "sha256": {k: content_digest(v) for k, v in files.items()}}


def case_from_entry(entry: Mapping[str, Any], modalities: Sequence[str]) -> Case:
    """A :class:`Case` from a datalist entry (``case_id``, ``image`` list or one 4D path, ``label``, ``fold``).

    Args:
        entry: one item of a datalist's ``training`` or ``testing`` list.
        modalities: the datalist's modality names in channel order.

    Raises:
        ValueError: the entry has no id, or its number of images does not match ``modalities``.
    """
    case_id = entry.get("case_id")
    image = entry.get("image")
    if not case_id:
        raise ValueError(f"datalist entry without case_id: {dict(entry)}")
    if isinstance(image, (str, os.PathLike)):
        image = [image]
    if not image:
        raise ValueError(f"case {case_id}: datalist entry has no image")
    modalities = list(modalities)
    if len(image) == 1 and len(modalities) > 1:  # one 4D file, channels in modality order
        images = {m: str(image[0]) for m in modalities}
        channels = {m: i for i, m in enumerate(modalities)}
    elif len(image) == len(modalities):
        images = {m: str(p) for m, p in zip(modalities, image)}
        channels = {}
    else:
        raise ValueError(
            f"case {case_id}: {len(image)} image files for {len(modalities)} modalities {modalities} "
            "(missing modality?)"
        )
    fold = entry.get("fold")
    extra = {k: v for k, v in entry.items() if k not in ("case_id", "image", "label", "fold")}
    return Case(str(case_id), images, entry.get("label"), channels, None if fold is None else int(fold), extra)


# ------------------------------------------------------------------------------------ outputs
def output_paths(case: Case, out_dir: str | os.PathLike, config: PreprocessConfig | None = None) -> dict[str, Path]:
    """Files a case is written to: modality -> ``OUT/<id>/<id><sep><modality>.nii.gz``, ``"label"`` -> ``..<sep>seg``.

    ``<sep>``, ``seg`` and the modality order are ``config``'s ``separator``, ``label_suffix`` and ``modalities``.
    """
    config = config or PreprocessConfig()
    folder = Path(out_dir) / case.case_id
    stem = f"{case.case_id}{config.separator}"
    paths = {m: folder / f"{stem}{m}.nii.gz" for m in case.ordered(config.modalities)}
    if case.label is not None:
        paths["label"] = folder / f"{stem}{config.label_suffix}.nii.gz"
    return paths


def sidecar_path(out_dir: str | os.PathLike, case_id: str) -> Path:
    """``OUT/<case_id>/<case_id>_preprocess.json``."""
    return Path(out_dir) / case_id / f"{case_id}{SIDECAR_SUFFIX}"


def finished_record(
    out_dir: str | os.PathLike, case: Case, config: PreprocessConfig | None = None
) -> dict[str, Any] | None:
    """The sidecar of a finished case, or ``None`` if the case must be (re)done.

    A case is finished when its sidecar parses, says ``"status": "ok"``, was made from the same
    inputs (paths and content: :meth:`Case.inputs_record`; a replaced file redoes the case) and,
    if ``config`` is given, the same settings, and every output it lists exists.
    """
    path = sidecar_path(out_dir, case.case_id)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") != "ok" or record.get("inputs") != json.loads(json.dumps(case.inputs_record())):
            return None
    except (OSError, ValueError):  # no sidecar, or an input that cannot be read any more
        return None
    if config is not None and record.get("config_fingerprint") != config.fingerprint():
        return None
    outputs = record.get("outputs", {})
    if not outputs:
        return None
    for name in outputs.values():
        file = path.parent / name
        if not file.is_file() or file.stat().st_size == 0:
            return None
    return record
