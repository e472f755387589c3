"""The settings of the ITK stage: :class:`PreprocessConfig` (the steps, and the case's naming).

The package knows no task: the modality names a case must have (in channel order), the label
values its label may hold and the output file names are plain fields, so a caller with its own
scheme (a task, a site's naming) passes them in. A config is frozen and JSON-serialisable; its
:meth:`~PreprocessConfig.fingerprint` is part of a finished case's resume key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from preprocessing.n4 import N4Config
from preprocessing.normalize import MASK_METHODS
from preprocessing.register import RegistrationConfig
from preprocessing.resample import IMAGE_INTERPOLATORS, LABEL_INTERPOLATORS, ORIENTATIONS


@dataclass(frozen=True)
class PreprocessConfig:
    """What :func:`~preprocessing.pipeline.preprocess_case` does; every step can be switched off.

    Args:
        modalities: the modality names every case must have, in channel order (the order of
            the outputs and of the output datalist's images); ``None``: any names, in each
            case's own order.
        label_values: the values a label map may hold, background ``0`` included; ``None``:
            not checked.
        separator: between the case id and the modality (or ``label_suffix``) in output names.
        label_suffix: the label's output name: ``<case_id><separator><label_suffix>.nii.gz``.
        reference: modality that defines the output grid and that others are registered to.
        orientation: ``"RAS"`` or ``"LPS"`` output orientation, ``None`` to keep the input's.
        spacing: output voxel size (x, y, z mm); ``None`` keeps the reference's spacing.
        n4: run N4 bias-field correction.
        n4_config: N4 settings.
        register: register each modality to the reference; ``False`` trusts the headers.
        registration: registration settings.
        normalize: crop to the foreground and z-score in the mask.
        mask_method: ``"auto"``, ``"otsu"`` or ``"nonzero"`` (:mod:`preprocessing.normalize`).
        crop_margin: voxels kept around the mask's bounding box; ``None``: no cropping.
        clip_percentiles: ``(low, high)`` in-mask percentiles to clip to before z-scoring.
        image_interpolator: ``"bspline"`` or ``"linear"`` (or ``"nearest"``).
        label_interpolator: ``"nearest"`` or ``"label_gaussian"``.
    """

    modalities: tuple[str, ...] | None = None
    label_values: tuple[int, ...] | None = None
    separator: str = "_"
    label_suffix: str = "seg"
    reference: str = "t1c"
    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    n4: bool = True
    n4_config: N4Config = field(default_factory=N4Config)
    register: bool = True
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    normalize: bool = True
    mask_method: str = "auto"
    crop_margin: int | None = 5
    clip_percentiles: tuple[float, float] | None = None
    image_interpolator: str = "bspline"
    label_interpolator: str = "nearest"

    def __post_init__(self) -> None:
        if self.modalities is not None:
            names = tuple(str(m) for m in self.modalities)
            if not names or len(set(names)) != len(names) or not all(names):
                raise ValueError(f"modalities must be distinct non-empty names, got {self.modalities!r}")
            if self.reference not in names:
                raise ValueError(f"reference modality {self.reference!r} is not among the modalities {list(names)}")
            object.__setattr__(self, "modalities", names)
        if self.label_values is not None:
            values = tuple(sorted({int(v) for v in self.label_values}))
            if not values:
                raise ValueError("label_values must name at least one value (0 is the background)")
            object.__setattr__(self, "label_values", values)
        for name, text in (("separator", self.separator), ("label_suffix", self.label_suffix or "/")):
            if "/" in text or "\\" in text:
                raise ValueError(f"{name} is part of a file name: no '/' (nor an empty label_suffix), got {text!r}")
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(f"spacing must be three positive sizes in mm (x, y, z), got {self.spacing}")
            object.__setattr__(self, "spacing", spacing)
        if self.clip_percentiles is not None:
            clip = tuple(float(p) for p in self.clip_percentiles)
            if len(clip) != 2 or not 0.0 <= clip[0] < clip[1] <= 100.0:
                raise ValueError(f"clip_percentiles must be (low, high) with 0 <= low < high <= 100, got {self.clip_percentiles}")
            object.__setattr__(self, "clip_percentiles", clip)
        if self.orientation is not None and self.orientation not in ORIENTATIONS:
            raise ValueError(f"unknown orientation {self.orientation!r}; choose one of {ORIENTATIONS} or None")
        if self.mask_method not in MASK_METHODS:
            raise ValueError(f"unknown mask method {self.mask_method!r}; choose one of {MASK_METHODS}")
        if self.image_interpolator not in IMAGE_INTERPOLATORS:
            raise ValueError(f"unknown image interpolator {self.image_interpolator!r}; choose one of {IMAGE_INTERPOLATORS}")
        if self.label_interpolator not in LABEL_INTERPOLATORS:
            raise ValueError(f"unknown label interpolator {self.label_interpolator!r}; choose one of {LABEL_INTERPOLATORS}")
        if self.crop_margin is not None and int(self.crop_margin) < 0:
            raise ValueError(f"crop_margin must be >= 0 voxels or None, got {self.crop_margin}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        if isinstance(data.get("n4_config"), Mapping):
            data["n4_config"] = N4Config(**data["n4_config"])
        if isinstance(data.get("registration"), Mapping):
            data["registration"] = RegistrationConfig(**data["registration"])
        return cls(**data)

    def fingerprint(self) -> str:
        """Short hash of the settings; a finished case is redone when it changes."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
