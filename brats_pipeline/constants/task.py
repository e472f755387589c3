"""The :class:`Task` type: modalities, label scheme, regions and layout of a data source, as data.

Also its parts (:class:`Modality`, :class:`Region`), the contrasts and tumour compartments the
phantom knows (:data:`CONTRASTS`, :data:`COMPARTMENTS`) and the two output modes
(:data:`OUTPUT_MODES`, :func:`check_output_mode`). The rules a task's regions obey, the array
conventions and the output modes are described in :mod:`brats_pipeline.constants`; the
registered tasks are in :mod:`brats_pipeline.constants.registry`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Contrasts the synthetic phantom knows how to render.
CONTRASTS = ("t1", "t1c", "t2", "flair")

#: Tumour compartments the synthetic phantom draws (nested: necrosis inside enhancing inside edema).
COMPARTMENTS = ("necrosis", "enhancing", "edema")

#: What a network's output channels are: one sigmoid channel per region, or one softmax channel per class.
OUTPUT_MODES = ("sigmoid", "softmax")


def check_output_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`OUTPUT_MODES`, else ``ValueError`` naming it."""
    if mode not in OUTPUT_MODES:
        raise ValueError(f"unknown output_mode {mode!r}; choose one of {OUTPUT_MODES} "
                         "(sigmoid: one channel per region; softmax: one channel per class of the label scheme)")
    return mode


@dataclass(frozen=True)
class Modality:
    """One MRI sequence of a task.

    Args:
        name: the name used in datalists and CLIs (``t1c``).
        contrast: one of :data:`CONTRASTS`; what the sequence shows.
        suffixes: file-name suffixes the sequence is shipped under, preferred first
            (BraTS 2021 ships T1c as ``_t1ce``).
    """

    name: str
    contrast: str
    suffixes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise ValueError(f"modality {self.name!r}: unknown contrast {self.contrast!r}; choose one of {CONTRASTS}")
        if not self.suffixes:
            raise ValueError(f"modality {self.name!r}: needs at least one file suffix")


@dataclass(frozen=True)
class Region:
    """A predicted region: a named set of label values (one sigmoid output channel)."""

    name: str
    labels: frozenset[int]
    description: str = ""


@dataclass(frozen=True)
class Task:
    """A data source: modalities, label scheme, regions and layout.

    Args:
        name: registry key (``brats2021``).
        description: one line for humans.
        modalities: channel order of ``image``.
        labels: foreground label value -> name (0 is always background).
        regions: output channels of the network, in order.
        compartment_labels: which label value holds each tumour compartment of
            :data:`COMPARTMENTS` (used by the phantom generator; LGG maps all three to 1).
        layout: ``case_folder`` (``ROOT/<case>/<case><sep><suffix>.nii.gz``) or ``msd``
            (``imagesTr``/``labelsTr`` + ``dataset.json``, 4D images, channels last).
        separator: between case id and suffix in ``case_folder`` layouts.
        label_suffixes: suffixes of the segmentation file, preferred first.
        case_pattern: regex a case folder name must match (``fullmatch``).
        patient_pattern: regex whose group 1 is the patient id of a case id; cases of one
            patient always land in the same fold. ``None``: every case is its own patient.
        synth_case_format: ``str.format`` pattern with ``{i}`` for synthetic case ids.
        label_keys: foreground label value -> short name used in metric and log names
            (``val/dice_label_NCR``, ``brats-evaluate``'s per-label columns): letters, digits and
            ``_``; default: ``labels``' names with other characters replaced by ``_``.
    """

    name: str
    description: str
    modalities: tuple[Modality, ...]
    labels: Mapping[int, str]
    regions: tuple[Region, ...]
    compartment_labels: Mapping[str, int]
    layout: str = "case_folder"
    separator: str = "_"
    label_suffixes: tuple[str, ...] = ("seg",)
    case_pattern: str = r".+"
    patient_pattern: str | None = None
    synth_case_format: str = "case_{i:05d}"
    label_keys: Mapping[int, str] | None = None
    _painting: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.layout not in ("case_folder", "msd"):
            raise ValueError(f"task {self.name!r}: unknown layout {self.layout!r}; choose 'case_folder' or 'msd'")
        if 0 in self.labels:
            raise ValueError(f"task {self.name!r}: label 0 is background and must not be listed in labels")
        known = set(self.labels)
        for region in self.regions:
            unknown = set(region.labels) - known
            if unknown:
                raise ValueError(f"task {self.name!r}: region {region.name} uses unknown labels {sorted(unknown)}")
        if set(self.compartment_labels) != set(COMPARTMENTS):
            raise ValueError(f"task {self.name!r}: compartment_labels must name exactly {COMPARTMENTS}")
        object.__setattr__(self, "_painting", _painting_order(self.name, self.regions))
        keys = dict(self.label_keys) if self.label_keys is not None else {
            v: re.sub(r"\W+", "_", n).strip("_") or f"label{v}" for v, n in self.labels.items()}
        if set(keys) != known or len(set(keys.values())) != len(keys) or not all(
                re.fullmatch(r"[A-Za-z]\w*", k) for k in keys.values()):
            raise ValueError(f"task {self.name!r}: label_keys must give each label {sorted(known)} a distinct name "
                             f"of letters, digits and _, got {keys}")
        object.__setattr__(self, "label_keys", keys)

    # ----------------------------------------------------------------- names
    @property
    def modality_names(self) -> tuple[str, ...]:
        """Modality names in channel order."""
        return tuple(m.name for m in self.modalities)

    @property
    def region_names(self) -> tuple[str, ...]:
        """Region names in output-channel order."""
        return tuple(r.name for r in self.regions)

    @property
    def label_values(self) -> tuple[int, ...]:
        """All valid label values, background included, ascending."""
        return (0, *sorted(self.labels))

    def modality(self, name: str) -> Modality:
        """Return the modality called ``name`` (error lists the task's modalities)."""
        for m in self.modalities:
            if m.name == name:
                return m
        raise ValueError(f"task {self.name!r} has no modality {name!r}; its modalities are {self.modality_names}")

    def patient_id(self, case_id: str) -> str:
        """The patient a case belongs to (cases of one patient share a fold)."""
        if self.patient_pattern is None:
            return case_id
        match = re.match(self.patient_pattern, case_id)
        return match.group(1) if match else case_id

    # ------------------------------------------------------------ conversion
    def check_labels(self, label: Any, source: str = "label") -> None:
        """Raise ``ValueError`` naming ``source`` if ``label`` holds values outside the scheme."""
        values = np.unique(np.asarray(label))
        bad = sorted(set(values.tolist()) - set(self.label_values))
        if bad:
            raise ValueError(
                f"{source}: label values {bad} are not in the {self.name} scheme {list(self.label_values)}"
            )

    def labels_to_regions(self, label: Any) -> Any:
        """Label map ``(X,Y,Z)`` or ``(1,X,Y,Z)`` -> boolean region map ``(R,X,Y,Z)``.

        Works on numpy arrays and torch tensors (returns the same kind). Unknown label values
        raise ``ValueError``.
        """
        is_torch = _is_tensor(label)
        if not is_torch:
            label = np.asarray(label)
        if label.ndim == 4 and label.shape[0] == 1:
            label = label[0]
        if label.ndim != 3:
            raise ValueError(f"expected a label map of shape (X,Y,Z) or (1,X,Y,Z), got {tuple(label.shape)}")
        self.check_labels(label.cpu().numpy() if is_torch else label)
        channels = []
        for region in self.regions:
            mask = None
            for value in sorted(region.labels):
                hit = label == value
                mask = hit if mask is None else (mask | hit)
            channels.append(mask)
        if is_torch:
            import torch

            return torch.stack(channels)
        return np.stack(channels)

    def regions_to_labels(self, regions: Any, dtype: Any = np.uint8) -> Any:
        """Region map ``(R,X,Y,Z)`` (bool, or probabilities thresholded at 0.5) -> label map ``(X,Y,Z)``.

        Regions are painted from the largest to the smallest with the label each region owns,
        so a voxel in ET but (inconsistently) outside TC still becomes ET. Works on numpy
        arrays and torch tensors (returns the same kind; torch output is ``uint8``).
        """
        is_torch = _is_tensor(regions)
        if not is_torch:
            regions = np.asarray(regions)
        if regions.ndim != 4 or regions.shape[0] != len(self.regions):
            raise ValueError(
                f"expected a region map of shape ({len(self.regions)},X,Y,Z) for {self.region_names}, "
                f"got {tuple(regions.shape)}"
            )
        if is_torch:
            import torch

            on = regions if regions.dtype == torch.bool else regions > 0.5
            out = torch.zeros(tuple(regions.shape[1:]), dtype=torch.uint8, device=regions.device)
        else:
            on = regions if regions.dtype == bool else regions > 0.5
            out = np.zeros(regions.shape[1:], dtype=dtype)
        for channel, value in self._painting:
            out[on[channel]] = value
        return out

    # ------------------------------------------------------- softmax classes
    @property
    def n_classes(self) -> int:
        """Classes of the softmax output mode: background and each label (``len(label_values)``)."""
        return len(self.label_values)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Short name of each class in class order: ``background`` then ``label_keys`` (``NCR``, ``ED``, ``ET``)."""
        return ("background", *(self.label_keys[v] for v in self.label_values[1:]))

    def output_channels(self, mode: str = "sigmoid") -> int:
        """A network's output channels in output ``mode``: one per region (sigmoid) or per class (softmax)."""
        return len(self.regions) if check_output_mode(mode) == "sigmoid" else self.n_classes

    def labels_to_classes(self, label: Any) -> Any:
        """Label map (any shape, the scheme's values) -> class indices (``label_values`` positions), same shape.

        numpy in, ``int64`` numpy out; torch in, ``int64`` torch out. Unknown values raise ``ValueError``.
        """
        is_torch = _is_tensor(label)
        values = label.detach().cpu().numpy() if is_torch else np.asarray(label)
        self.check_labels(values)
        lut = np.zeros(max(self.label_values) + 1, dtype=np.int64)
        lut[list(self.label_values)] = np.arange(self.n_classes)
        if is_torch:
            import torch

            return torch.as_tensor(lut, device=label.device)[label.long()]
        return lut[values.astype(np.int64)]

    def classes_to_labels(self, classes: Any, dtype: Any = np.uint8) -> Any:
        """Class indices (any shape, values in ``[0, n_classes)``) -> the scheme's label values, same shape.

        numpy in, ``dtype`` numpy out; torch in, ``uint8`` torch out. Indices out of range raise ``ValueError``.
        """
        is_torch = _is_tensor(classes)
        if not is_torch:
            classes = np.asarray(classes)
        size = classes.numel() if is_torch else classes.size
        low, high = (int(classes.min()), int(classes.max())) if size else (0, 0)
        if low < 0 or high >= self.n_classes:
            raise ValueError(f"class indices must lie in [0, {self.n_classes - 1}] for the {self.name} classes "
                             f"{self.class_names}, got values in [{low}, {high}]")
        if is_torch:
            import torch

            lut = torch.tensor(self.label_values, dtype=torch.uint8, device=classes.device)
            return lut[classes.long()]
        return np.asarray(self.label_values, dtype=dtype)[np.asarray(classes).astype(np.int64)]


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") or hasattr(x, "__torch_function__")


def _painting_order(task: str, regions: tuple[Region, ...]) -> tuple[tuple[int, int], ...]:
    """Check regions are nested-or-disjoint and each owns one label; return (channel, label) largest first."""
    for a in regions:
        for b in regions:
            if a is b:
                continue
            inter = a.labels & b.labels
            if inter and not (a.labels <= b.labels or b.labels <= a.labels):
                raise ValueError(f"task {task!r}: regions {a.name} and {b.name} overlap without nesting")
    order = sorted(range(len(regions)), key=lambda i: -len(regions[i].labels))
    painting = []
    for i in order:
        inner = set()
        for j, other in enumerate(regions):
            if j != i and other.labels < regions[i].labels:
                inner |= other.labels
        own = regions[i].labels - inner
        if len(own) != 1:
            raise ValueError(
                f"task {task!r}: region {regions[i].name} must own exactly one label not in a smaller region, "
                f"it owns {sorted(own)}"
            )
        painting.append((i, next(iter(own))))
    return tuple(painting)
