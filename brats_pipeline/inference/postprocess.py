"""Post-processing: region probabilities -> the task's label map, every step switchable.

Input: region probabilities ``(R, X, Y, Z)`` (sigmoid outputs, one channel per region in
``task.regions`` order, e.g. TC, WT, ET) on the grid the label is written on. Output: the
task's label map ``(X, Y, Z)`` uint8 (BraTS 2021: {0, 1, 2, 4}). The steps, in order:

1. :func:`threshold_regions` — one threshold per region (0.5 by default; the seed papers
   tune them per region);
2. :func:`binary_open` / :func:`binary_close` — morphological opening (erosion then
   dilation: removes specks and thin bridges) and closing (dilation then erosion: fills
   pin-holes) with a ball of ``radius`` voxels, per region;
3. :func:`remove_small_components` — drop connected components smaller than N voxels;
4. :func:`keep_largest_component` — keep only the largest connected component of the
   outermost region (WT) and clip the inner regions to it;
5. :func:`relabel_small_et` — when the predicted enhancing tumour is smaller than N voxels,
   turn it into necrosis (its voxels stay in TC; a common BraTS trick, since an empty ET in
   the truth scores Dice 0 for any false-positive ET);
6. ``task.regions_to_labels`` — paint regions largest first with the label each owns.

All functions take and return numpy arrays; masks are boolean.

**Softmax output** (class probabilities ``(C, X, Y, Z)``, one channel per class of the label
scheme): :func:`postprocess_classes` takes each voxel's most likely class as its label
(``task.classes_to_labels``) instead of step 1; steps 2-5 then run on that label map's regions
(``task.labels_to_regions``) and step 6 paints them back. Thresholds are for region
probabilities only: one other than 0.5 is an error in softmax mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from brats_pipeline.constants import Task, get_task

#: Connectivities accepted for connected components (face, face+edge, face+edge+corner neighbours).
CONNECTIVITIES = (6, 18, 26)


@dataclass
class PostprocessConfig:
    """Which post-processing steps run (all off except thresholding at 0.5 by default).

    Args:
        threshold: probability threshold, one for all regions or one per region (task order).
        opening_radius: binary opening radius in voxels (0: off).
        closing_radius: binary closing radius in voxels (0: off).
        min_component_voxels: remove connected components smaller than this, per region (0: off).
        keep_largest: keep only the largest component of the outermost region (WT).
        et_min_voxels: relabel a predicted ET smaller than this as necrosis (0: off).
        et_region: name of the enhancing-tumour region for ``et_min_voxels``.
        connectivity: 6, 18 or 26 neighbours for connected components.
    """

    threshold: float | Sequence[float] = 0.5
    opening_radius: int = 0
    closing_radius: int = 0
    min_component_voxels: int = 0
    keep_largest: bool = False
    et_min_voxels: int = 0
    et_region: str = "ET"
    connectivity: int = 26

    def __post_init__(self) -> None:
        for name in ("opening_radius", "closing_radius", "min_component_voxels", "et_min_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"postprocess {name} must be a non-negative int, got {value!r}")
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(f"postprocess connectivity must be one of {CONNECTIVITIES}, got {self.connectivity!r}")
        thresholds = [self.threshold] if np.isscalar(self.threshold) else list(self.threshold)
        for t in thresholds:
            if not 0.0 < float(t) < 1.0:
                raise ValueError(f"postprocess threshold must be in (0, 1), got {self.threshold!r}")

    @classmethod
    def from_any(cls, value: PostprocessConfig | Mapping[str, Any] | None) -> PostprocessConfig:
        """Accept a config, a dict of its fields (unknown keys are an error) or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = set(asdict(cls()))
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown postprocess options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(value))

    @property
    def cleans_regions(self) -> bool:
        """Whether a step after thresholding (2-5) is on."""
        return bool(self.opening_radius or self.closing_radius or self.min_component_voxels or self.keep_largest
                    or self.et_min_voxels)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-friendly dict."""
        d = asdict(self)
        if not np.isscalar(d["threshold"]):
            d["threshold"] = [float(t) for t in d["threshold"]]
        return d


def _structure(connectivity: int) -> np.ndarray:
    from scipy.ndimage import generate_binary_structure

    return generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    x, y, z = np.meshgrid(r, r, r, indexing="ij")
    return (x * x + y * y + z * z) <= radius * radius


def _check_mask(mask: Any, ndim: int, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != ndim:
        raise ValueError(f"{what}: expected a {ndim}D array, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def threshold_regions(probabilities: Any, threshold: float | Sequence[float] = 0.5) -> np.ndarray:
    """Region probabilities ``(R, X, Y, Z)`` -> boolean masks ``(R, X, Y, Z)`` (``p > threshold``).

    Args:
        probabilities: sigmoid outputs, one channel per region.
        threshold: one value for every region or one per region.
    """
    probs = np.asarray(probabilities)
    if probs.ndim != 4:
        raise ValueError(f"expected region probabilities (R, X, Y, Z), got shape {probs.shape}")
    t = np.asarray(threshold, dtype=np.float32).reshape(-1)
    if t.size == 1:
        t = np.repeat(t, probs.shape[0])
    if t.size != probs.shape[0]:
        raise ValueError(f"got {t.size} thresholds for {probs.shape[0]} regions")
    return probs > t.reshape(-1, 1, 1, 1)


def binary_open(mask: Any, radius: int) -> np.ndarray:
    """Morphological opening (erosion, then dilation) of a 3D mask with a ball of ``radius`` voxels."""
    from scipy.ndimage import binary_opening

    m = _check_mask(mask, 3, "binary_open")
    if radius <= 0 or not m.any():
        return m.copy()
    return binary_opening(m, structure=_ball(radius))


def binary_close(mask: Any, radius: int) -> np.ndarray:
    """Morphological closing (dilation, then erosion) of a 3D mask with a ball of ``radius`` voxels.

    The mask is padded by ``radius`` first so that closing does not eat into objects at the border.
    """
    from scipy.ndimage import binary_closing

    m = _check_mask(mask, 3, "binary_close")
    if radius <= 0 or not m.any():
        return m.copy()
    padded = np.pad(m, radius)
    closed = binary_closing(padded, structure=_ball(radius))
    return closed[radius:-radius, radius:-radius, radius:-radius]


def remove_small_components(mask: Any, min_voxels: int, connectivity: int = 26) -> np.ndarray:
    """Drop connected components of a 3D mask that have fewer than ``min_voxels`` voxels."""
    from scipy.ndimage import label

    m = _check_mask(mask, 3, "remove_small_components")
    if min_voxels <= 0 or not m.any():
        return m.copy()
    labels, n = label(m, structure=_structure(connectivity))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def keep_largest_component(mask: Any, connectivity: int = 26) -> np.ndarray:
    """Keep only the largest connected component of a 3D mask (an empty mask stays empty)."""
    from scipy.ndimage import label

    m = _check_mask(mask, 3, "keep_largest_component")
    if not m.any():
        return m.copy()
    labels, n = label(m, structure=_structure(connectivity))
    if n <= 1:
        return m.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _outermost_region(task: Task) -> int:
    return max(range(len(task.regions)), key=lambda i: len(task.regions[i].labels))


def relabel_small_et(regions: Any, task: str | Task, min_voxels: int, et_region: str = "ET") -> np.ndarray:
    """Switch off the ET channel when it has fewer than ``min_voxels`` voxels.

    Its voxels stay in the regions that contain ET (TC, WT), so after ``regions_to_labels``
    they carry the label TC owns (BraTS 2021: ET 4 -> NCR 1).

    Args:
        regions: boolean region map ``(R, X, Y, Z)`` in ``task.regions`` order.
        task: the task (decides which channel is ``et_region`` and which contain it).
        min_voxels: ET volume (voxels) below which it is relabelled; 0 turns the step off.
        et_region: the region name of the enhancing tumour.
    """
    task = get_task(task)
    r = _check_mask(regions, 4, "relabel_small_et").copy()
    names = task.region_names
    if et_region not in names:
        raise ValueError(f"task {task.name!r} has no region {et_region!r}; its regions are {names}")
    if r.shape[0] != len(names):
        raise ValueError(f"expected {len(names)} region channels {names}, got shape {r.shape}")
    et = names.index(et_region)
    if min_voxels <= 0:
        return r
    volume = int(np.count_nonzero(r[et]))
    if 0 < volume < min_voxels:
        et_labels = task.regions[et].labels
        for i, region in enumerate(task.regions):
            if i != et and et_labels <= region.labels:
                r[i] |= r[et]
        r[et] = False
    return r


def postprocess_regions(regions: Any, task: str | Task, config: PostprocessConfig | Mapping[str, Any] | None = None) -> np.ndarray:
    """Steps 2-5 on a boolean region map ``(R, X, Y, Z)``; returns the cleaned boolean map."""
    task = get_task(task)
    cfg = PostprocessConfig.from_any(config)
    r = _check_mask(regions, 4, "postprocess_regions").copy()
    if r.shape[0] != len(task.regions):
        raise ValueError(f"expected {len(task.regions)} region channels {task.region_names}, got shape {r.shape}")
    for i in range(r.shape[0]):
        if cfg.opening_radius:
            r[i] = binary_open(r[i], cfg.opening_radius)
        if cfg.closing_radius:
            r[i] = binary_close(r[i], cfg.closing_radius)
        if cfg.min_component_voxels:
            r[i] = remove_small_components(r[i], cfg.min_component_voxels, cfg.connectivity)
    if cfg.keep_largest:
        outer = _outermost_region(task)
        r[outer] = keep_largest_component(r[outer], cfg.connectivity)
        for i, region in enumerate(task.regions):
            if i != outer and region.labels <= task.regions[outer].labels:
                r[i] &= r[outer]
    if cfg.et_min_voxels:
        r = relabel_small_et(r, task, cfg.et_min_voxels, cfg.et_region)
    return r


def postprocess(probabilities: Any, task: str | Task, config: PostprocessConfig | Mapping[str, Any] | None = None) -> np.ndarray:
    """Region probabilities ``(R, X, Y, Z)`` -> the task's label map ``(X, Y, Z)`` uint8 (steps 1-6).

    Thresholding alone (no step 2-5 on) runs on a torch tensor's own device; any other step runs
    on the CPU (scipy). The one implementation behind the ``Predictor`` and the bundles'
    :class:`RegionsToLabelsd`.

    Args:
        probabilities: sigmoid outputs in ``task.regions`` order (numpy or torch).
        task: task name or :class:`Task`; decides the label values written.
        config: :class:`PostprocessConfig`, a dict of its fields, or ``None`` (threshold 0.5 only).
    """
    task = get_task(task)
    cfg = PostprocessConfig.from_any(config)
    if hasattr(probabilities, "detach"):
        if not cfg.cleans_regions:  # threshold where the probabilities are (e.g. the GPU), then label
            import torch

            t = np.broadcast_to(np.asarray(cfg.threshold, dtype=np.float32), (probabilities.shape[0],)).copy()
            regions = probabilities.detach().float() > torch.as_tensor(t, device=probabilities.device).view(-1, 1, 1, 1)
            return task.regions_to_labels(regions).cpu().numpy().astype(np.uint8)
        probabilities = probabilities.detach().float().cpu().numpy()
    regions = threshold_regions(probabilities, cfg.threshold)
    regions = postprocess_regions(regions, task, cfg)
    return task.regions_to_labels(regions).astype(np.uint8)


def check_softmax_config(config: PostprocessConfig | Mapping[str, Any] | None) -> PostprocessConfig:
    """The config for a softmax output; ``ValueError`` for a threshold other than 0.5 (thresholds are for regions)."""
    cfg = PostprocessConfig.from_any(config)
    if np.any(np.asarray(cfg.threshold, dtype=float) != 0.5):
        raise ValueError(f"postprocess threshold {cfg.threshold!r} is for region probabilities (sigmoid output); a "
                         "softmax output takes each voxel's most likely class: leave threshold at 0.5")
    return cfg


def postprocess_classes(probabilities: Any, task: str | Task, config: PostprocessConfig | Mapping[str, Any] | None = None) -> np.ndarray:
    """Class probabilities ``(C, X, Y, Z)`` (softmax output) -> the task's label map ``(X, Y, Z)`` uint8.

    Args:
        probabilities: ``task.n_classes`` channels in class order (class ``i`` = label value
            ``task.label_values[i]``), numpy or torch (the argmax runs on the tensor's device).
        task: task name or :class:`Task`.
        config: as for :func:`postprocess`; steps 2-5 run on the regions of the argmax label map.

    Raises:
        ValueError: a channel count other than ``task.n_classes``, or a threshold other than 0.5.
    """
    task = get_task(task)
    cfg = check_softmax_config(config)
    if probabilities.ndim != 4 or probabilities.shape[0] != task.n_classes:
        raise ValueError(f"expected {task.n_classes} class channels {task.class_names} of shape (C, X, Y, Z), "
                         f"got {tuple(probabilities.shape)}")
    classes = probabilities.argmax(0)
    labels = task.classes_to_labels(classes.cpu().numpy() if hasattr(classes, "cpu") else classes)
    if cfg.cleans_regions:
        labels = task.regions_to_labels(postprocess_regions(task.labels_to_regions(labels), task, cfg))
    return labels.astype(np.uint8)


class _LabelMapd:
    """Base of the bundle post-processing transforms that turn a network output into the task's label map.

    For each key: check the tensor's shape (:meth:`_check`), convert it (:meth:`_labels`), keep
    the meta data (affine) of a ``MetaTensor``.
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.task = get_task(task)

    def _check(self, key: Any, x: Any) -> None:
        raise NotImplementedError

    def _labels(self, x: Any) -> Any:
        raise NotImplementedError

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.keys:
            pred = d[key]
            x = torch.as_tensor(pred)
            self._check(key, x)
            labels = self._labels(x)
            d[key] = MetaTensor(labels, meta=dict(pred.meta)) if isinstance(pred, MetaTensor) else labels
        return d


class RegionsToLabelsd(_LabelMapd):
    """Region channels ``(R, X, Y, Z)`` (0/1, or probabilities cut at ``threshold``) -> label map ``(1, X, Y, Z)`` uint8.

    Uses ``task.regions_to_labels`` (largest region first, each painted with the label it owns),
    so the output holds the task's own label values (BraTS 2021: 0, 1, 2, 4). Meta data (affine)
    is kept. The bundle post-processing of a sigmoid (region) network.

    ``postprocess``: the further steps of :class:`PostprocessConfig` (e.g. ``{"keep_largest":
    true}``; a ``threshold`` there wins over ``threshold``), run by :func:`postprocess` — the
    function the ``Predictor`` runs with the same settings, so a bundle and ``brats-infer
    --bundle`` write the same labels.
    """

    def __init__(self, keys: str | Sequence[str], task: str | Task, threshold: float = 0.5,
                 postprocess: PostprocessConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__(keys, task)
        given = postprocess.to_dict() if isinstance(postprocess, PostprocessConfig) else dict(postprocess or {})
        self.config = PostprocessConfig.from_any({"threshold": float(threshold), **given})

    def _check(self, key: Any, x: Any) -> None:
        if x.ndim != 4 or x.shape[0] != len(self.task.regions):
            raise ValueError(f"{key}: expected {len(self.task.regions)} region channels {self.task.region_names} "
                             f"of shape (R, X, Y, Z), got {tuple(x.shape)}")

    def _labels(self, x: Any) -> Any:
        return postprocess(x, self.task, self.config)[None]


class ClassesToLabelsd(_LabelMapd):
    """MONAI dictionary transform: class indices ``(1, X, Y, Z)`` (a softmax output's argmax) -> the task's label values.

    The bundle post-processing of a softmax network (``Activationsd(softmax=True)``, ``Invertd``,
    ``AsDiscreted(argmax=True)``, then this): class ``i`` becomes ``task.label_values[i]``
    (BraTS 2021 classes 0..3 -> labels 0, 1, 2, 4), ``uint8``; meta data (affine) is kept.

    Args:
        keys: the keys to convert (``pred``).
        task: task name or :class:`Task`.
    """

    def _check(self, key: Any, x: Any) -> None:
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"{key}: expected class indices of shape (1, X, Y, Z) (AsDiscreted argmax first), "
                             f"got {tuple(x.shape)}")

    def _labels(self, x: Any) -> Any:
        return self.task.classes_to_labels(x.round().long())
